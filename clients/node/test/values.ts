/**
 * JSON in: what `toValue` sends for `input`, `payload` and `variables`, as JSON.stringify
 * would write it: usage node dist/test/values.js. Prints a JSON report; exits non-zero on a
 * wrong conversion.
 */
import assert from "node:assert/strict";

import { toValue } from "../src/client";

const text = (value: string) => ({ stringValue: value });
const struct = (fields: object) => ({ structValue: { fields } });

// An optional property left undefined is absent, as in JSON.stringify: sent as null, it broke
// a schema's `type: string` and a typed shim's `purpose?: string` caller was refused.
assert.deepEqual(toValue({ requester: "ada", purpose: undefined }), struct({ requester: text("ada") }));
assert.deepEqual(toValue([1, undefined]), {
  listValue: { values: [{ numberValue: 1 }, { nullValue: "NULL_VALUE" }] },
});
// JSON has no NaN or Infinity: refused here, not stored as null.
for (const number of [NaN, Infinity, -Infinity]) {
  assert.throws(() => toValue({ amount: number }), /not a JSON value: .*\(JSON has no NaN or Infinity\)/);
}
// A value with toJSON (a Date) is sent as JSON.stringify sends it.
assert.deepEqual(toValue({ at: new Date(0) }), struct({ at: text("1970-01-01T00:00:00.000Z") }));
console.log(JSON.stringify({ ok: true }));
