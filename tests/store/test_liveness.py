"""Consumer heartbeats: a dead consumer's pending work is taken over, a live one's never."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.store import liveness as liveness_module
from okra_sidecar.store.keys import ENGINE_GROUP, RedisKeys
from okra_sidecar.store.liveness import ConsumerHeartbeat, ConsumerLiveness
from tests.helpers import FAST_ENGINE, make_settings, running_sidecar, value, wait_for_status

KEYS = RedisKeys(prefix="okra:", partitions=2)
TTL_MS = 200
GROUP = "g"


async def _pending_for(redis: Redis, stream: str, consumer: str) -> int:
    rows = await redis.xpending_range(stream, GROUP, "-", "+", 100, consumername=consumer)
    return len(rows)


async def _read_as(redis: Redis, stream: str, consumer: str, entries: int) -> list[str]:
    for number in range(entries):
        await redis.xadd(stream, {"n": str(number)})
    reply: Any = await redis.xreadgroup(GROUP, consumer, {stream: ">"}, count=entries)
    return [eid.decode() for eid, _ in reply[0][1]]


async def test_a_dead_consumers_entries_go_to_the_caller_once_idle(redis: Redis) -> None:
    liveness = ConsumerLiveness(redis=redis, keys=KEYS, ttl_ms=TTL_MS)
    streams = KEYS.all_work()
    await redis.xgroup_create(streams[1], GROUP, id="0", mkstream=True)
    ids = await _read_as(redis, streams[1], "dead", 3)
    await liveness.beat("me")
    # Not yet idle for a heartbeat's lifetime: left alone.
    assert await liveness.claim_orphans(GROUP, streams, "me", held=(), count=10) == []
    await asyncio.sleep(TTL_MS * 2 / 1000)
    claimed = await liveness.claim_orphans(GROUP, streams, "me", held=(), count=10)
    assert [(partition, eid.decode()) for partition, eid, _ in claimed] == [(1, i) for i in ids]
    assert await _pending_for(redis, streams[1], "dead") == 0
    assert await _pending_for(redis, streams[1], "me") == 3


async def test_a_live_consumers_entries_are_never_taken(redis: Redis) -> None:
    liveness = ConsumerLiveness(redis=redis, keys=KEYS, ttl_ms=TTL_MS)
    streams = KEYS.all_work()
    await redis.xgroup_create(streams[0], GROUP, id="0", mkstream=True)
    await liveness.beat("busy")
    await _read_as(redis, streams[0], "busy", 2)
    await asyncio.sleep(TTL_MS * 2 / 1000)
    await liveness.beat("busy")  # still beating, however long its entries sat
    assert await liveness.claim_orphans(GROUP, streams, "me", held=(), count=10) == []
    assert await _pending_for(redis, streams[0], "busy") == 2


async def test_own_entries_come_back_unless_held(redis: Redis) -> None:
    liveness = ConsumerLiveness(redis=redis, keys=KEYS, ttl_ms=TTL_MS)
    streams = KEYS.all_work()
    await redis.xgroup_create(streams[0], GROUP, id="0", mkstream=True)
    await liveness.beat("me")
    working, lost = await _read_as(redis, streams[0], "me", 2)
    await asyncio.sleep(TTL_MS * 2 / 1000)
    claimed = await liveness.claim_orphans(GROUP, streams, "me", held={working}, count=10)
    # The entry whose read reply was lost comes back; the one being worked on does not.
    assert [eid.decode() for _, eid, _ in claimed] == [lost]


async def test_a_heartbeat_lives_while_started_and_is_removed_on_stop(redis: Redis) -> None:
    liveness = ConsumerLiveness(redis=redis, keys=KEYS, ttl_ms=TTL_MS)
    heartbeat = ConsumerHeartbeat(liveness, "me")
    await heartbeat.start()
    try:
        for _ in range(3):
            await asyncio.sleep(TTL_MS / 1000)
            assert await redis.exists(KEYS.consumer("me"))
    finally:
        await heartbeat.stop()
    assert not await redis.exists(KEYS.consumer("me"))


async def test_work_a_dead_consumer_read_is_finished_by_a_live_sidecar(
    redis: Redis, redis_url: str
) -> None:
    # claimIdleMs of ten minutes: only the missing heartbeat can hand the work over.
    engine = replace(FAST_ENGINE, claim_idle_ms=600_000, heartbeat_ms=100)
    settings = make_settings(redis_url, engine=engine)
    async with running_sidecar(settings) as (sidecar, stub):
        await sidecar.runner.stop()  # the Run's work item stays in its stream
        run = await stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1})))
        keys = sidecar.store.keys
        partition = keys.partition(run.instance_id)
        # A consumer that reads the item and dies without a heartbeat or an acknowledgement.
        await redis.xreadgroup(ENGINE_GROUP, "gone", {keys.work(partition): ">"}, count=10)
        assert await redis.xpending(keys.work(partition), ENGINE_GROUP)
        await sidecar.runner.start()
        done = await wait_for_status(
            stub, run.instance_id, {pb.WORKFLOW_STATUS_COMPLETED}, timeout_s=20
        )
        assert done.status == pb.WORKFLOW_STATUS_COMPLETED


async def test_a_consumer_known_dead_is_taken_over_at_once(redis: Redis) -> None:
    liveness = ConsumerLiveness(redis=redis, keys=KEYS, ttl_ms=60_000)
    streams = KEYS.all_work()
    await redis.xgroup_create(streams[0], GROUP, id="0", mkstream=True)
    await liveness.beat("child")
    ids = await _read_as(redis, streams[0], "child", 2)
    assert await liveness.claim_orphans(GROUP, streams, "me", held=(), count=10) == []
    # Its parent saw it die: no minute of idle time to wait out.
    await liveness.mark_dead("child")
    claimed = await liveness.claim_orphans(GROUP, streams, "me", held=(), count=10)
    assert [eid.decode() for _, eid, _ in claimed] == ids


async def test_a_consumer_long_idle_with_nothing_pending_is_forgotten(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(liveness_module, "FORGET_IDLE_MS", 100)
    liveness = ConsumerLiveness(redis=redis, keys=KEYS, ttl_ms=TTL_MS)
    streams = KEYS.all_work()
    await redis.xgroup_create(streams[0], GROUP, id="0", mkstream=True)
    ids = await _read_as(redis, streams[0], "gone", 1)
    # Done with its entry (acknowledged and deleted, as every reader does): the stream is empty.
    await redis.xack(streams[0], GROUP, *ids)
    await redis.xdel(streams[0], *ids)
    await liveness.beat("me")
    assert await liveness.claim_orphans(GROUP, streams, "me", held=(), count=10) == []
    assert [c["name"] for c in await redis.xinfo_consumers(streams[0], GROUP)] == [b"gone"]
    await asyncio.sleep(0.2)
    # On a single Redis empty streams are skipped between full looks; this one is due.
    monkeypatch.setattr(liveness_module, "FULL_LOOK_S", 0)
    assert await liveness.claim_orphans(GROUP, streams, "me", held=(), count=10) == []
    assert await redis.xinfo_consumers(streams[0], GROUP) == []
