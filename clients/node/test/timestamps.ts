/**
 * Timestamps as the proto loader hands them over (zero fields absent): usage node
 * dist/test/timestamps.js. Prints a JSON report; exits non-zero on a wrong conversion.
 */
import assert from "node:assert/strict";

import { fromTimestamp } from "../src/client";

assert.equal(fromTimestamp({ seconds: "1765000000" }), "2025-12-06T05:46:40.000Z");
assert.equal(fromTimestamp({ seconds: "1765000000", nanos: 250_000_000 }), "2025-12-06T05:46:40.250Z");
assert.equal(fromTimestamp({ nanos: 5_000_000 }), "1970-01-01T00:00:00.005Z");
assert.equal(fromTimestamp({}), "1970-01-01T00:00:00.000Z");
assert.equal(fromTimestamp(null), undefined);
console.log(JSON.stringify({ ok: true }));
