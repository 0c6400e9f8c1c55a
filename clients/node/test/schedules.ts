/**
 * The schedule verbs end to end against a running sidecar serving tests/workflows: trigger
 * (once more with the same request id), get, list, pause, resume and delete, with their
 * refusals. Usage: node dist/test/schedules.js HOST:PORT. Prints one JSON line with the
 * schedule's id for the pytest side to check; exits non-zero on the first failed assertion.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import * as grpc from "@grpc/grpc-js";

import { OkraClient } from "../src/client";
import { rejects } from "./rejects";

async function main(address: string): Promise<void> {
  const client = new OkraClient(address, { timeoutMs: 5_000 });
  const schedules = client.schedules;
  try {
    const requestId = randomUUID();
    const trigger = {
      workflowId: "tests.forever.1.0.0",
      input: { from: "node" },
      cronExpression: "0 0 1 * *",
      timeZone: "Europe/Paris",
      overlap: "skip" as const,
      catchUp: "fire_once" as const,
      tags: { client: "node" },
      requestId,
    };
    const scheduleId = await schedules.trigger(trigger);
    assert.equal(await schedules.trigger(trigger), scheduleId, "the request id de-duplicates");

    const schedule = await schedules.get(scheduleId, { nextFireCount: 3 });
    assert.equal(schedule.workflowId, "tests.forever.1.0.0");
    assert.deepEqual(schedule.input, { from: "node" });
    assert.equal(schedule.cronExpression, "0 0 1 * *");
    assert.equal(schedule.timeZone, "Europe/Paris");
    assert.equal(schedule.overlap, "skip");
    assert.equal(schedule.catchUp, "fire_once");
    assert.equal(schedule.source, "api");
    assert.equal(schedule.tags.client, "node");
    assert.equal(schedule.paused, false);
    assert.equal(schedule.nextFireTimes.length, 3);
    assert.ok(schedule.nextFireTimes[0] < schedule.nextFireTimes[1]);
    assert.ok(schedule.createTime && !Number.isNaN(Date.parse(schedule.createTime)));

    const listed = [];
    for await (const each of schedules.list({ workflowId: "tests.forever.1.0.0", pageSize: 1 })) {
      listed.push(each.scheduleId);
    }
    assert.ok(listed.includes(scheduleId), "list pages through to the schedule");

    const paused = await schedules.pause(scheduleId);
    assert.equal(paused.paused, true);
    assert.deepEqual(paused.nextFireTimes, []);
    assert.equal((await schedules.resume(scheduleId)).paused, false);

    const bad = await rejects(
      schedules.trigger({ ...trigger, requestId: undefined, cronExpression: "61 * * * *" }),
      grpc.status.INVALID_ARGUMENT,
      "INVALID_FIELD",
    );
    assert.equal(bad.fieldViolations[0]?.field, "cron_expression");

    await schedules.delete(scheduleId);
    const gone = await rejects(schedules.get(scheduleId), grpc.status.NOT_FOUND, "SCHEDULE_NOT_FOUND");
    assert.equal(gone.metadata.schedule, scheduleId);
    console.log(JSON.stringify({ ok: true, scheduleId }));
  } finally {
    client.close();
  }
}

main(process.argv[2]).catch((error) => {
  console.error(error);
  process.exit(1);
});
