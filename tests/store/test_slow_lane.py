"""The slow lane in Redis: marks, forwarding without loss or doubles, the workflow's score."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from okra_sidecar.config import EngineSettings
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.engine.runtime.runner import EngineLane, EngineRunner
from okra_sidecar.instances import NewInstance
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.redis_store import RedisStore
from okra_sidecar.store.work_store import SLOW_DEFINITION_MS

IDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(4)]
NOW = 1_800_000_000_000


@pytest.fixture
def store(redis: Redis) -> RedisStore:
    return RedisStore(redis=redis, keys=RedisKeys(partitions=2))


def new(instance_id: str) -> NewInstance:
    return NewInstance(
        instance_id=instance_id,
        workflow_id="t.w.1.0.0",
        input={},
        correlation_id="",
        tags={},
        state={},
        created_us=1_000_000,
    )


async def test_forwarded_work_leaves_the_regular_lane_for_the_slow_one(
    store: RedisStore, redis: Redis
) -> None:
    await store.ensure_groups()
    for instance_id in IDS[:2]:
        assert await store.create_instance(new(instance_id), max_active=0)
    work = await store.read_work("regular", count=10, block_ms=10)
    assert {w.instance_id for w in work} == set(IDS[:2])
    assert await store.read_work("slow", count=10, block_ms=10, slow=True) == []

    await store.forward_to_slow_lane(work[:1])
    moved = await store.read_work("slow", count=10, block_ms=10, slow=True)
    assert [(w.instance_id, w.slow) for w in moved] == [(work[0].instance_id, True)]
    keys = store.keys
    # Gone from the regular lane (acknowledged and deleted), pending only in the slow one.
    regular = keys.work(work[0].partition)
    assert await redis.xrange(regular, work[0].entry_id, work[0].entry_id) == []
    pending = await redis.xpending_range(regular, "engine", "-", "+", 10)
    assert work[0].entry_id.encode() not in {p["message_id"] for p in pending}
    await store.ack_work(moved)
    assert await redis.xlen(keys.slow_work(work[0].partition)) == 0
    assert await store.read_work("slow", count=10, block_ms=10, slow=True) == []


async def test_a_mark_sets_the_instance_and_scores_its_workflow_for_a_while(
    store: RedisStore, redis: Redis
) -> None:
    await store.ensure_groups()
    assert await store.create_instance(new(IDS[0]), max_active=0)
    snapshot = await store.load_turn(IDS[0])
    assert snapshot is not None and not snapshot.slow
    await store.mark_slow(IDS[0], NOW)
    snapshot = await store.load_turn(IDS[0])
    assert snapshot is not None and snapshot.slow
    assert await store.slow_definitions(NOW + 1000) == frozenset({"t.w.1.0.0"})
    assert await store.slow_definitions(NOW + SLOW_DEFINITION_MS + 1) == frozenset()
    # An instance that no longer exists is not brought back as a hash holding only the mark.
    await store.mark_slow(IDS[3], NOW)
    assert not await redis.exists(store.keys.instance(IDS[3]))


async def test_a_regular_runner_knows_the_slow_workflows_before_its_first_turn(
    store: RedisStore, redis: Redis
) -> None:
    # A spare that takes over the work of a child killed for a slow expression must forward
    # the other instances of that workflow from its first turn, not run them (and be killed).
    await store.ensure_groups()
    for instance_id in IDS[:2]:
        assert await store.create_instance(new(instance_id), max_active=0)
    await store.mark_slow(IDS[0], NOW)
    work = await store.read_work("killed", count=10, block_ms=10)
    runner = EngineRunner(
        store=store,
        registry=WorkflowRegistry(store=store),
        settings=EngineSettings(),
        consumer="spare",
        clock=lambda: NOW + 1000,
        lane=EngineLane.REGULAR,
    )
    # Started and stopped before its loops ever ran: what it knows, it learnt in start().
    await runner.start()
    await runner.stop()
    other = [w for w in work if w.instance_id == IDS[1]]
    assert await runner.run_turn(IDS[1], work=other)
    forwarded = await store.read_work("slow", count=10, block_ms=10, slow=True)
    assert [w.instance_id for w in forwarded] == [IDS[1]]
