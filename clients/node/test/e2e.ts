/**
 * End to end against a running sidecar serving tests/workflows: run, signal, query, cancel,
 * list and the error paths. Usage: node dist/test/e2e.js HOST:PORT. Prints one JSON line with
 * the ids it made, for the pytest side to check; exits non-zero on the first failed assertion.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import * as grpc from "@grpc/grpc-js";

import { OkraClient, OkraError, WorkflowInstance, WorkflowStatus } from "../src/client";

async function waitFor(
  client: OkraClient,
  instanceId: string,
  statuses: WorkflowStatus[],
): Promise<WorkflowInstance> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const instance = await client.getStatus(instanceId);
    if (statuses.includes(instance.status)) return instance;
    assert.ok(Date.now() < deadline, `${instanceId} stayed ${instance.status}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function rejects(call: Promise<unknown>, code: grpc.status): Promise<OkraError> {
  try {
    await call;
  } catch (error) {
    assert.ok(error instanceof OkraError, String(error));
    assert.equal(error.code, code, error.message);
    return error;
  }
  assert.fail(`expected ${grpc.status[code]}, the call succeeded`);
}

async function main(address: string): Promise<void> {
  const client = new OkraClient(address, { timeoutMs: 5_000 });
  try {
    const workflows = await client.listWorkflows();
    const approval = workflows.find((w) => w.workflowId === "tests.approval.1.0.0");
    assert.ok(approval, "tests.approval.1.0.0 is registered");
    assert.equal(approval.version, "1.0.0");
    assert.ok(approval.triggers.includes("manual"));

    const approved = await client.run({
      workflowId: "tests.approval.1.0.0",
      input: { amount: 120 },
      correlationId: "node-order-1",
      tags: { client: "node" },
    });
    const waiting = await waitFor(client, approved, ["waiting"]);
    assert.equal(waiting.currentStep, "/do/0/askForApproval");
    assert.deepEqual(waiting.input, { amount: 120 });
    assert.equal(waiting.correlationId, "node-order-1");
    assert.match(waiting.startTime, /^\d{4}-\d\d-\d\dT/);

    await client.signal({ instanceId: approved, signal: "approve", payload: { by: "node" } });
    const done = await waitFor(client, approved, ["completed", "failed"]);
    assert.equal(done.status, "completed");
    assert.deepEqual(done.output, { amount: 120, approvedBy: "node" });
    assert.ok(done.endTime && done.endTime >= done.startTime);

    const cancelled = await client.run({
      workflowId: "tests.forever.1.0.0",
      input: { from: "node" },
      tags: { client: "node" },
    });
    await client.cancel(cancelled, "changed my mind");
    const gone = await client.getStatus(cancelled);
    assert.equal(gone.status, "cancelled");
    assert.equal(gone.cancelReason, "changed my mind");
    await rejects(client.cancel(cancelled), grpc.status.FAILED_PRECONDITION);

    const page = await client.query({ tags: { client: "node" }, limit: 1 });
    assert.equal(page.instances.length, 1);
    assert.equal(page.instances[0].instanceId, cancelled, "newest first");
    assert.ok(page.cursor);
    const all: string[] = [];
    for await (const instance of client.queryAll({ tags: { client: "node" }, limit: 1 })) {
      all.push(instance.instanceId);
    }
    assert.deepEqual(all, [cancelled, approved]);
    const completed = await client.query({ status: ["completed"], tags: { client: "node" } });
    assert.deepEqual(
      completed.instances.map((i) => i.instanceId),
      [approved],
    );

    const bad = await rejects(
      client.run({ workflowId: "tests.approval.1.0.0", input: { amount: -1 } }),
      grpc.status.INVALID_ARGUMENT,
    );
    assert.deepEqual(bad.fieldViolations, ["input.amount"]);
    const missing = randomUUID();
    const notFound = await rejects(client.getStatus(missing), grpc.status.NOT_FOUND);
    assert.ok(notFound.details.includes(missing));

    console.log(JSON.stringify({ ok: true, completed: approved, cancelled }));
  } finally {
    client.close();
  }
}

main(process.argv[2] ?? "127.0.0.1:50051").catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
