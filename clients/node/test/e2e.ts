/**
 * End to end against a running sidecar serving tests/workflows: run, signal, query, cancel,
 * list and the error paths. Usage: node dist/test/e2e.js HOST:PORT [retries]. Prints one JSON
 * line with the ids it made, for the pytest side to check; exits non-zero on the first failed
 * assertion. With `retries` the sidecar must limit Run, Signal and Query to 1/second: it checks
 * that only idempotent calls are retried, after the sidecar's retry delay.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import * as grpc from "@grpc/grpc-js";

import {
  OkraClient,
  StatusUnreachableError,
  WorkflowFailedError,
  WorkflowInstance,
} from "../src/client";
import { rejects } from "./rejects";

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
    const waiting = await client.wait(approved, { until: ["waiting"], timeoutMs: 10_000 });
    assert.equal(waiting.currentStep, "/do/0/askForApproval");
    assert.deepEqual(waiting.input, { amount: 120 });
    assert.equal(waiting.correlationId, "node-order-1");
    assert.match(waiting.startTime, /^\d{4}-\d\d-\d\dT/);

    await client.signal({ instanceId: approved, signal: "approve", payload: { by: "node" } });
    const done = await client.wait(approved, { timeoutMs: 10_000 });
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
    const finished = await rejects(client.cancel(cancelled), grpc.status.FAILED_PRECONDITION);
    assert.equal(finished.reason, "INSTANCE_ALREADY_FINISHED");
    assert.equal(finished.domain, "okra.dev");
    assert.deepEqual(finished.metadata, { instance: cancelled, status: "cancelled" });
    assert.deepEqual(finished.preconditionViolations, [
      {
        type: "INSTANCE_STATUS",
        subject: `instance/${cancelled}`,
        description: "the instance must be pending, running, waiting or suspended",
      },
    ]);
    assert.equal(finished.retryable, false);

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
    assert.deepEqual(
      bad.fieldViolations.map((v) => v.field),
      ["input.amount"],
    );
    assert.ok(bad.fieldViolations[0].description.includes("minimum"));
    assert.equal(bad.reason, "INPUT_SCHEMA_MISMATCH");
    const missing = randomUUID();
    const notFound = await rejects(client.getStatus(missing), grpc.status.NOT_FOUND);
    assert.ok(notFound.details.includes(missing));
    assert.equal(notFound.reason, "INSTANCE_NOT_FOUND");
    assert.deepEqual(notFound.metadata, { instance: missing });

    // Handles: start, watch each change, signal, result; nothing polls.
    const handle = await client.start({ workflowId: "tests.approval.1.0.0", input: { amount: 5 } });
    await handle.wait({ until: ["waiting"], timeoutMs: 10_000 });
    const seen: WorkflowInstance[] = [];
    for await (const instance of handle.watch({ timeoutMs: 10_000 })) {
      seen.push(instance);
      if (seen.length === 1) await handle.signal("approve", { by: "watcher" });
    }
    assert.equal(seen[0].status, "waiting");
    assert.equal(seen[seen.length - 1].status, "completed");
    const revisions = seen.map((i) => Number(i.revision));
    assert.deepEqual(revisions, [...new Set(revisions)].sort((x, y) => x - y));
    assert.deepEqual(await handle.result(), { amount: 5, approvedBy: "watcher" });
    const unchanged = await client.awaitInstance(approved, {
      revision: done.revision,
      statuses: ["waiting"],
      timeoutMs: 1_000,
    });
    assert.equal(unchanged.revision, done.revision, "answered before its deadline, unchanged");

    const requestId = randomUUID();
    const first = await client.signalWithStart({
      workflowId: "tests.approval.1.0.0",
      input: { amount: 6 },
      requestId,
      signal: "note",
      signalId: "n-1",
    });
    assert.ok(first.started);
    const second = await client.signalWithStart({
      workflowId: "tests.approval.1.0.0",
      input: { amount: 6 },
      requestId,
      signal: "approve",
      payload: { by: "sws" },
    });
    assert.equal(second.instanceId, first.instanceId);
    assert.equal(second.started, false);
    assert.deepEqual(await client.getHandle(first.instanceId).result(), {
      amount: 6,
      approvedBy: "sws",
    });
    const cancelledHandle = await client.start({
      workflowId: "tests.forever.1.0.0",
      input: {},
      tags: { client: "node-handle" },
    });
    await cancelledHandle.cancel("stop");
    await assert.rejects(cancelledHandle.result(), WorkflowFailedError);
    // Waiting for a status that a finished instance cannot reach rejects at once, not at the
    // deadline: only an operator's Reset or Retry could change it.
    const waitStarted = Date.now();
    await assert.rejects(
      cancelledHandle.wait({ until: ["waiting", "suspended"], timeoutMs: 20_000 }),
      (error: unknown) =>
        error instanceof StatusUnreachableError &&
        error.instance.status === "cancelled" &&
        error.message ===
          `instance ${cancelledHandle.id} is cancelled and will not be waiting or suspended ` +
            "unless an operator resets or retries it",
    );
    assert.ok(Date.now() - waitStarted < 5_000, "rejected before the deadline");
    assert.equal(await client.count({ tags: { client: "node-handle" } }), 1);
    assert.equal(await client.count({ tags: { client: "node" }, status: ["completed"] }), 1);
    const watchMissing = (async () => {
      for await (const instance of client.watch(missing)) void instance;
    })();
    const missingWatch = await rejects(watchMissing, grpc.status.NOT_FOUND);
    assert.equal(missingWatch.reason, "INSTANCE_NOT_FOUND");

    console.log(JSON.stringify({ ok: true, completed: approved, cancelled }));
  } finally {
    client.close();
  }
}

async function retries(address: string): Promise<void> {
  const once = new OkraClient(address, { timeoutMs: 5_000, retry: { maxAttempts: 1 } });
  const client = new OkraClient(address, { timeoutMs: 5_000 });
  try {
    // Without retries the second Query within the second is refused, with the delay to wait.
    await once.query({ limit: 1 });
    const limited = await rejects(once.query({ limit: 1 }), grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(limited.reason, "RATE_LIMITED");
    assert.equal(limited.metadata.policy, "policy.workflow.query.rateLimit");
    assert.ok(limited.retryable);
    assert.ok((limited.retryDelayMs ?? 0) > 0, "RetryInfo carries the delay");
    // With them, it waits that long and succeeds.
    await client.query({ limit: 1 });

    // Every Run carries a requestId, so a rate-limited Run is retried after the delay; the
    // sidecar de-duplicates by it, so the retry starts one instance, not two.
    const tags = { test: randomUUID() };
    const first = await client.run({ workflowId: "tests.forever.1.0.0", input: {}, tags });
    const second = await client.run({ workflowId: "tests.forever.1.0.0", input: {}, tags });
    assert.notEqual(second, first);

    // A Signal without a signalId is never retried, even for a retryable reason...
    await client.signal({ instanceId: first, signal: "nudge", payload: {} });
    const refused = await rejects(
      client.signal({ instanceId: first, signal: "nudge", payload: {} }),
      grpc.status.RESOURCE_EXHAUSTED,
    );
    assert.equal(refused.reason, "RATE_LIMITED");
    // ...with one it is.
    await client.signal({ instanceId: first, signal: "nudge", payload: {}, signalId: "node-1" });
    console.log(JSON.stringify({ ok: true, first, second, tags }));
  } finally {
    once.close();
    client.close();
  }
}

const [address, mode] = [process.argv[2] ?? "127.0.0.1:50051", process.argv[3]];
(mode === "retries" ? retries(address) : main(address)).catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
