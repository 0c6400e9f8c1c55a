"""`okra-sidecar migrate`: a store written in layout 1 runs on in the current layout."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.server import migrate
from okra_sidecar.store.keys import LAYOUT_VERSION, RedisKeys
from okra_sidecar.store.replies import text
from tests.helpers import (
    eventually_held,
    held,
    make_settings,
    running_sidecar,
    subscribed,
    value,
    wait_for_status,
)

REPO = Path(__file__).resolve().parent.parent.parent


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
        "0 instances, 0 indexes, 1 streams\n"
    )
    assert await redis.xlen(RedisKeys().work(0)) == 1
