/**
 * The client over mutual TLS. Usage: node dist/test/tls.js HOST:PORT CA CERT KEY. Lists the
 * workflows with the client certificate, then checks that a client without one is refused.
 * Prints one JSON line; exits non-zero on the first failed assertion.
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";

import { OkraClient, OkraError } from "../src/client";

async function main(address: string, caFile: string, certFile: string, keyFile: string) {
  const client = new OkraClient(address, { timeoutMs: 5_000, tls: { caFile, certFile, keyFile } });
  const anonymous = new OkraClient(address, { timeoutMs: 5_000, tls: { caFile } });
  try {
    const workflows = await client.listWorkflows();
    assert.ok(workflows.length > 0, "the sidecar lists its workflows");
    let refused: OkraError | undefined;
    try {
      await anonymous.listWorkflows();
    } catch (error) {
      assert.ok(error instanceof OkraError, String(error));
      refused = error;
    }
    assert.ok(refused !== undefined, "a client without a certificate must be refused");
    assert.equal(refused.code, grpc.status.UNAVAILABLE, refused.message);
    assert.throws(() => new OkraClient(address, { tls: { caFile, certFile } }), /needs its key/);
    console.log(JSON.stringify({ ok: true, workflows: workflows.map((w) => w.workflowId) }));
  } finally {
    client.close();
    anonymous.close();
  }
}

const [address, caFile, certFile, keyFile] = process.argv.slice(2);
main(address, caFile, certFile, keyFile).catch((error) => {
  console.error(error);
  process.exit(1);
});
