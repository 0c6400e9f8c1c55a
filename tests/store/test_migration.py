"""`okra-sidecar migrate`: a store written in layout 1 runs on in the current layout."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.config import Settings
from okra_sidecar.engine.interpreter.effects import EffectKind
from okra_sidecar.server import migrate
from okra_sidecar.store.base import TurnExtras
from okra_sidecar.store.keys import LAYOUT_VERSION, RedisKeys
from okra_sidecar.store.layout import LayoutVersionError
from okra_sidecar.store.migration import MigrationReport
from okra_sidecar.store.replies import text
from tests.executors.test_runtime import (
    commit_extras,
    effect,
    read_task,
    start_waiting,
    wait_for_result,
)
from tests.helpers import (
    eventually,
    eventually_held,
    held,
    make_settings,
    redis_fingerprint,
    running_sidecar,
    subscribed,
    value,
    wait_for_status,
)

# Layout 1 was written for one primary (keys of many slots in one script): no Cluster holds one.
pytestmark = pytest.mark.single_store

REPO = Path(__file__).resolve().parent.parent.parent
SCHEDULE = "00000000-0000-4000-8000-000000000777"


async def write_layout_1(redis: Redis, keys: RedisKeys) -> None:
    """Rename a current store's keys to the names layout 1 gave them (what it wrote)."""
    # Layout 1 counted the instance limits in counters, each instance naming the one it held.
    held: Any = await redis.hgetall(keys.limit_held(keys.scope))
    await redis.set(f"{keys.prefix}active", len(held))
    for instance_id, workflow_key in held.items():
        counter = f"{keys.prefix}active:wf:{text(workflow_key)}"
        await redis.incr(counter)
        record = keys.instance(text(instance_id))
        await redis.hset(record, "wfc", counter)
        await redis.hdel(record, "lim", "lwf")
    await redis.delete(
        keys.limit_active(keys.scope),
        keys.limit_held(keys.scope),
        *{keys.limit_workflow(keys.scope, text(w)) for w in held.values()},
    )
    for partition in range(keys.partitions):
        tag = keys.tag(partition)
        async for raw in redis.scan_iter(match=f"{tag}:*"):
            key = text(raw)
            rest = key[len(tag) + 1 :]
            if rest.startswith("idx:parent:"):
                # Layout 1 kept a parent's child runs in a set of its own.
                children: Any = await redis.zrange(key, 0, -1)
                parent = rest[len("idx:parent:") :]
                await redis.sadd(
                    f"{keys.prefix}{{{parent}}}:children",
                    *(text(m).split(":", 1)[1] for m in children),
                )
                await redis.delete(key)
            elif rest.startswith("subs:"):
                listeners: Any = await redis.smembers(key)
                await redis.sadd(f"{keys.prefix}{rest}", *listeners)
                await redis.delete(key)
            elif rest.startswith("idx:"):
                # Layout 1 had one index for all partitions: merge them.
                members: Any = await redis.zrange(key, 0, -1, withscores=True)
                await redis.zadd(f"{keys.prefix}{rest}", dict(members))
                await redis.delete(key)
            elif rest in ("work", "timers", "effects"):
                await redis.rename(key, f"{keys.prefix}{rest}:{partition}")
            else:
                instance_id, _, suffix = rest.partition(":")
                await redis.rename(
                    key, f"{keys.prefix}{{{instance_id}}}" + (":" + suffix if suffix else "")
                )
    await redis.delete(keys.layout)


async def test_migrate_converts_a_layout_1_store_that_then_runs_on(
    redis: Redis, redis_url: str
) -> None:
    settings = make_settings(redis_url)
    async with running_sidecar(settings) as (_, stub):
        ids = []
        for amount in (1, 2, 3):
            request = pb.RunRequest(
                workflow_id="tests.approval.1.0.0", input=value({"amount": amount})
            )
            ids.append((await stub.Run(request)).instance_id)
        for instance_id in ids:
            await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
    await write_layout_1(redis, RedisKeys())
    assert await redis.exists("okra:idx:all") == 1

    report = await migrate(settings)
    assert (report.from_version, report.instances) == (1, 3)
    assert await redis.exists("okra:idx:all", "okra:work:0") == 0
    assert (await migrate(settings)).from_version == LAYOUT_VERSION  # nothing left to do
    # The counters became the limit scope's sets, each unfinished instance admitted.
    assert await redis.exists("okra:active", "okra:active:wf:tests.approval") == 0
    assert await held(redis) == 3
    assert await held(redis, "tests.approval") == 3
    # The listens' subscriptions are in their partitions' sets again.
    assert await subscribed(redis, "approve") == {i.encode() for i in ids}

    async with running_sidecar(settings) as (_, stub):
        page = await stub.Query(pb.QueryRequest())
        assert sorted(i.instance_id for i in page.instances) == sorted(ids)
        for instance_id in ids:
            await stub.Signal(
                pb.SignalRequest(
                    instance_id=instance_id, signal="approve", payload=value({"by": "x"})
                )
            )
        for instance_id in ids:
            done = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
            assert done.status == pb.WORKFLOW_STATUS_COMPLETED
        await eventually_held(redis, 0)  # finishing gave the migrated places back


@pytest.mark.slow
async def test_the_migrate_command_says_what_it_did(redis: Redis, redis_url: str) -> None:
    await redis.xadd("okra:work:0", {"i": "x"})
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "okra_sidecar", "migrate", "--redis-url", redis_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"migrated the store from layout version 1 to {LAYOUT_VERSION}: "
        "0 instances, 0 indexes, 1 streams, 0 schedules and bulk operations\n"
    )
    assert await redis.xlen(RedisKeys().work(0)) == 1


async def write_layout_2(redis: Redis, keys: RedisKeys) -> None:
    """Rename a current store's task streams, schedules and bulk operations to the names
    layout 2 gave them, and record layout 2."""
    prefix = keys.prefix
    for raw in [k async for k in redis.scan_iter(match=f"{prefix}{{p*}}:tasks:*")]:
        stream = text(raw)
        service = stream.split(":tasks:", 1)[1]
        entries: Any = await redis.xrange(stream)
        for _, fields in entries:
            await redis.xadd(f"{prefix}tasks:{service}", fields)
        await redis.delete(stream)
    schedule_ids: Any = await redis.zrange(keys.schedules_all, 0, -1)
    for raw in schedule_ids:
        schedule_id = text(raw)
        await redis.rename(keys.schedule(schedule_id), f"{prefix}schedule:{{{schedule_id}}}")
    await redis.rename(keys.schedules_all, f"{prefix}schedules")
    await redis.rename(keys.schedules_due, f"{prefix}schedules:due")
    operation_ids: Any = await redis.zrange(keys.bulks, 0, -1)
    for raw in operation_ids:
        op = text(raw)
        for suffix in ("", ":ids", ":items"):
            await redis.rename(f"{keys.bulk(op)}{suffix}", f"{prefix}bulk:{{{op}}}{suffix}")
    await redis.rename(keys.bulks, f"{prefix}bulks")
    await redis.rename(keys.bulks_running, f"{prefix}bulks:running")
    await redis.hset(keys.layout, "version", 2)


async def write_schedule_and_bulk(redis: Redis, keys: RedisKeys, instance_id: str) -> None:
    """A schedule and a bulk operation, as their stores write them (their contents do not
    matter to the migration)."""
    await redis.hset(keys.schedule(SCHEDULE), mapping={"r": "{}", "rev": 3})
    await redis.zadd(keys.schedules_all, {SCHEDULE: 0})
    await redis.zadd(keys.schedules_due, {SCHEDULE: 4_102_444_800_000})  # in 2100
    await redis.hset(keys.bulk("op1"), mapping={"state": "running"})
    await redis.rpush(keys.bulk_ids("op1"), instance_id)
    await redis.hset(keys.bulk_items("op1"), instance_id, "done")
    await redis.zadd(keys.bulks, {"op1": 5})
    await redis.sadd(keys.bulks_running, "op1")


async def start_with_worker_task(
    redis: Redis, settings: Settings, keys: RedisKeys, work: dict[str, Any]
) -> str:
    """A waiting instance whose turn queued the worker task `charge#1` (`work`); its id."""
    async with running_sidecar(settings) as (running, stub):
        instance_id = await start_waiting(stub)
        extras = TurnExtras(effects=[effect("charge#1", EffectKind.WORKER, work)])
        await commit_extras(running, instance_id, extras)

        async def enqueued() -> bool:
            return bool(await redis.xlen(keys.tasks("payments", keys.partition(instance_id))))

        await eventually(enqueued, what="the worker task")
    return instance_id


async def test_migrate_converts_a_layout_2_store_that_then_runs_on(
    redis: Redis, redis_url: str
) -> None:
    settings = make_settings(redis_url)
    keys = RedisKeys()
    work = {"function": "charge", "arguments": {"amount": 3}, "service": "payments"}
    instance_id = await start_with_worker_task(redis, settings, keys, work)
    await write_schedule_and_bulk(redis, keys, instance_id)
    before = await redis_fingerprint(redis)
    await write_layout_2(redis, keys)
    assert await redis.exists("okra:tasks:payments", "okra:schedules", "okra:bulks") == 3
    with pytest.raises(LayoutVersionError, match="layout version 2.*okra-sidecar migrate"):
        async with running_sidecar(settings):
            pass

    report = await migrate(settings)
    assert (report.from_version, report.streams, report.records) == (2, 1, 2)
    assert await redis.exists("okra:tasks:payments", "okra:schedules", "okra:bulks") == 0
    assert await migrate(settings) == MigrationReport(from_version=LAYOUT_VERSION)
    after = await redis_fingerprint(redis)
    # Everything is where it was, but the task: a new entry (not handed out yet).
    moved = {k for k in before if b":tasks:" in (k if isinstance(k, bytes) else k.encode())}
    assert {k: v for k, v in after.items() if k not in moved} == {
        k: v for k, v in before.items() if k not in moved
    }

    async with running_sidecar(settings) as (running, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            worker = wpb_grpc.TaskWorkerStub(channel)
            poll = worker.PollTasks(wpb.PollTasksRequest(service="payments", worker_id="w1"))
            task = await read_task(poll)
            poll.cancel()
            assert (task.instance_id, task.effect_id, task.attempt) == (instance_id, "charge#1", 1)
            done = await worker.CompleteTask(
                wpb.CompleteTaskRequest(task_id=task.task_id, lease=task.lease)
            )
            assert done.accepted
        await wait_for_result(redis, instance_id, "charge#1")


async def test_a_task_handed_out_before_a_layout_2_migration_counts_its_attempts_on(
    redis: Redis, redis_url: str
) -> None:
    settings = make_settings(redis_url)
    keys = RedisKeys()
    work = {"function": "charge", "arguments": {}, "service": "payments"}
    instance_id = await start_with_worker_task(redis, settings, keys, work)
    await write_schedule_and_bulk(redis, keys, instance_id)
    await write_layout_2(redis, keys)
    # A layout 2 worker polled the task and its lease ran out once: handed out twice.
    await redis.xgroup_create("okra:tasks:payments", "workers", id="0")
    read: Any = await redis.xreadgroup("workers", "w0", {"okra:tasks:payments": ">"})
    old_entry = text(read[0][1][0][0])
    await redis.xclaim("okra:tasks:payments", "workers", "w0", 0, [old_entry])

    await migrate(settings)
    async with running_sidecar(settings) as (running, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            worker = wpb_grpc.TaskWorkerStub(channel)
            poll = worker.PollTasks(wpb.PollTasksRequest(service="payments", worker_id="w1"))
            task = await read_task(poll)
            poll.cancel()
            assert (task.effect_id, task.attempt) == ("charge#1", 3)
            # The old worker's id names the move, and leaves the moved task alone.
            with pytest.raises(grpc.aio.AioRpcError) as moved:
                await worker.CompleteTask(
                    wpb.CompleteTaskRequest(task_id=f"payments/{old_entry}", lease="w0.x")
                )
            assert moved.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "okra-sidecar migrate" in (moved.value.details() or "")
            done = await worker.CompleteTask(
                wpb.CompleteTaskRequest(task_id=task.task_id, lease=task.lease)
            )
            assert done.accepted
        await wait_for_result(redis, instance_id, "charge#1")


async def test_migrate_from_layout_3_keeps_the_store_and_its_held_places(
    redis: Redis, redis_url: str
) -> None:
    settings = make_settings(redis_url)
    async with running_sidecar(settings) as (_, stub):
        request = pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": 1}))
        instance_id = (await stub.Run(request)).instance_id
        await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
    # Layout 3 wrote nothing layout 4 does not read: a place it held stays held.
    keys = RedisKeys()
    await redis.zadd(keys.limit_active(keys.scope), {instance_id: 1})
    await redis.hset(keys.layout, "version", 3)
    before = await redis_fingerprint(redis)
    with pytest.raises(LayoutVersionError, match="layout version 3.*okra-sidecar migrate"):
        async with running_sidecar(settings):
            pass
    assert await migrate(settings) == MigrationReport(from_version=3)
    after = await redis_fingerprint(redis)
    layout = {keys.layout, keys.layout.encode()}
    assert {k: v for k, v in after.items() if k not in layout} == {
        k: v for k, v in before.items() if k not in layout
    }
    assert await redis.hget(keys.layout, "version") == str(LAYOUT_VERSION).encode()
    async with running_sidecar(settings) as (_, stub):
        await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
    assert await held(redis) == 1
