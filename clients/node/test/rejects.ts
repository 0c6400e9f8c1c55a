/** What the end-to-end scripts share: a call that must fail with an OkraError. */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";

import { OkraError } from "../src/client";

/** The OkraError `call` fails with, after checking its code (and its reason, when given). */
export async function rejects(call: Promise<unknown>, code: grpc.status, reason?: string): Promise<OkraError> {
  try {
    await call;
  } catch (error) {
    assert.ok(error instanceof OkraError, String(error));
    assert.equal(error.code, code, error.message);
    if (reason !== undefined) {
      assert.equal(error.reason, reason, error.message);
    }
    return error;
  }
  assert.fail(`expected ${grpc.status[code]}, the call succeeded`);
}
