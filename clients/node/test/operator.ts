/**
 * The operator verbs end to end against a running sidecar serving tests/workflows: suspend,
 * resume, reset, retry, delete and a bulk operation, with their refusals. Usage: node
 * dist/test/operator.js HOST:PORT. Prints one JSON line with the ids it made, for the pytest
 * side to check; exits non-zero on the first failed assertion.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import * as grpc from "@grpc/grpc-js";

import { BulkOperation, OkraClient } from "../src/client";
import { rejects } from "./rejects";

async function main(address: string): Promise<void> {
  const client = new OkraClient(address, { timeoutMs: 5_000 });
  const operator = client.operator;
  try {
    // Suspend and resume a waiting instance, through the handle.
    const handle = await client.start({ workflowId: "tests.approval.1.0.0", input: { amount: 9 } });
    await handle.wait({ until: ["waiting"], timeoutMs: 10_000 });
    await handle.suspend("audit");
    assert.equal((await handle.describe()).status, "suspended");
    await rejects(operator.suspend(handle.id), grpc.status.FAILED_PRECONDITION, "INSTANCE_ALREADY_SUSPENDED");
    await handle.resume();
    await handle.wait({ until: ["waiting"], timeoutMs: 10_000 });

    // Reset: the waiting instance back to its listen, then an unknown task.
    assert.equal(await handle.reset("/do/0/askForApproval", "asked the wrong person"), "waiting");
    const unknown = await rejects(
      operator.reset(handle.id, "/do/9/nope"),
      grpc.status.INVALID_ARGUMENT,
      "UNKNOWN_TASK",
    );
    assert.equal(unknown.metadata.tasks, "/do/0/askForApproval, /do/1/decide");
    assert.deepEqual(unknown.fieldViolations.map((v) => v.field), ["task"]);
    await handle.signal("approve", { by: "node-operator" });
    assert.deepEqual(await handle.result({ timeoutMs: 10_000 }), {
      amount: 9,
      approvedBy: "node-operator",
    });
    // A completed instance goes back to its last task and completes again.
    assert.equal(await operator.reset(handle.id, "/do/1/decide", "recompute"), "completed");
    const again = await client.wait(handle.id, { timeoutMs: 10_000 });
    assert.deepEqual(again.output, { amount: 9, approvedBy: "node-operator" });

    // Retry refuses an instance that has not failed, and reruns one that has.
    await rejects(operator.retry(handle.id), grpc.status.FAILED_PRECONDITION, "INSTANCE_NOT_FAILED");
    const failed = await client.run({ workflowId: "tests.order.1.0.0", input: {} });
    await client.wait(failed, { timeoutMs: 10_000 });
    assert.match(await operator.retry(failed, { reason: "again", variables: { note: "x" } }), /^\/do\//);

    assert.equal((await client.wait(failed, { timeoutMs: 10_000 })).status, "failed");

    // Delete: only a finished instance, and once.
    await operator.delete(failed);
    await rejects(operator.delete(failed), grpc.status.NOT_FOUND, "INSTANCE_NOT_FOUND");

    // A bulk cancel of two instances, from a dry run to done.
    const tags = { batch: randomUUID() };
    const held = [
      await client.run({ workflowId: "tests.forever.1.0.0", input: {}, tags }),
      await client.run({ workflowId: "tests.forever.1.0.0", input: {}, tags }),
    ];
    await rejects(operator.delete(held[0]), grpc.status.FAILED_PRECONDITION, "INSTANCE_NOT_FINISHED");
    const dry = await operator.startBulk({ action: "cancel", tags, dryRun: true });
    assert.deepEqual(dry, {
      operationId: "",
      matched: 2,
      sampleInstanceIds: [held[1], held[0]],
      maxInstances: 10_000, // the sidecar's default: no policy sets bulk.maxInstances here
    });
    const started = await operator.startBulk({ action: "cancel", tags, reason: "batch done" });
    assert.equal(started.matched, 2);
    let operation: BulkOperation = await operator.getBulk(started.operationId);
    for (let i = 0; i < 300 && operation.state === "running"; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      operation = await operator.getBulk(started.operationId);
    }
    assert.equal(operation.state, "completed");
    assert.equal(operation.action, "cancel");
    assert.equal(operation.done, 2);
    assert.equal(operation.reason, "batch done");
    assert.ok(operation.createdAt);
    const listed = await operator.listBulk();
    assert.ok(listed.some((o) => o.operationId === started.operationId));
    await rejects(
      operator.cancelBulk(started.operationId),
      grpc.status.FAILED_PRECONDITION,
      "BULK_OPERATION_FINISHED",
    );
    for (const id of held) assert.equal((await client.getStatus(id)).status, "cancelled");

    console.log(JSON.stringify({ ok: true, reset: handle.id, cancelled: held }));
  } finally {
    client.close();
  }
}

main(process.argv[2] ?? "127.0.0.1:50051").catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
