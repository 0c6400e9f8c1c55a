"""The slow lane in Redis: marks, forwarding without loss or doubles, the workflow's score."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from okra_sidecar.config import EngineSettings
from okra_sidecar.engine.runtime.probation import PROVEN_AFTER_TURNS
from okra_sidecar.engine.runtime.registry import WorkflowRegistry, read_directory
from okra_sidecar.engine.runtime.runner import EngineLane, EngineRunner
from okra_sidecar.engine.runtime.starter import build_instance
from okra_sidecar.instances import InstanceStatus, NewInstance
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.redis_store import RedisStore
from okra_sidecar.store.work_store import SLOW_DEFINITION_MS
from tests.helpers import WORKFLOWS_DIR

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
    await store.mark_proven("t.w.1.0.0")  # slow for now, whatever probation said
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


STEPS = "tests.steps.1.0.0"


async def steps_runner(store: RedisStore, lane: EngineLane) -> EngineRunner:
    """A runner of `lane` that knows tests.steps, started and stopped before its loops ran:
    what it knows of the lanes' workflows, it learnt in start()."""
    registry = WorkflowRegistry(store=store)
    await registry.register(read_directory(WORKFLOWS_DIR))
    runner = EngineRunner(
        store=store,
        registry=registry,
        settings=EngineSettings(),
        consumer=lane.value,
        clock=lambda: NOW,
        lane=lane,
    )
    await runner.start()
    await runner.stop()
    return runner


async def start_steps(store: RedisStore, instance_ids: list[str]) -> None:
    registry = WorkflowRegistry(store=store)
    await registry.register(read_directory(WORKFLOWS_DIR))
    definition = (await registry.get(STEPS)).definition
    for instance_id in instance_ids:
        instance = build_instance(
            definition, instance_id=instance_id, workflow_input={"n": 1}, created_us=NOW * 1000
        )
        assert await store.create_instance(instance, max_active=0)


async def test_a_workflow_not_yet_proven_is_forwarded_to_the_slow_lane(store: RedisStore) -> None:
    await store.ensure_groups()
    await start_steps(store, IDS[:1])
    [work] = await store.read_work("regular", count=10, block_ms=10)
    runner = await steps_runner(store, EngineLane.REGULAR)
    assert await runner.run_turn(IDS[0], work=[work])
    [forwarded] = await store.read_work("slow", count=10, block_ms=10, slow=True)
    assert forwarded.instance_id == IDS[0]
    snapshot = await store.load_turn(IDS[0])
    assert snapshot is not None and not snapshot.status.finished  # no turn taken here


async def test_a_proven_workflow_runs_in_the_regular_lane(store: RedisStore) -> None:
    await store.ensure_groups()
    await start_steps(store, IDS[:1])
    await store.mark_proven(STEPS)
    assert await store.proven_definitions() == frozenset({STEPS})
    [work] = await store.read_work("regular", count=10, block_ms=10)
    runner = await steps_runner(store, EngineLane.REGULAR)
    assert await runner.run_turn(IDS[0], work=[work])
    snapshot = await store.load_turn(IDS[0])
    assert snapshot is not None and snapshot.status is InstanceStatus.COMPLETED
    assert await store.read_work("slow", count=10, block_ms=10, slow=True) == []


async def test_fast_turns_in_the_slow_lane_prove_their_workflow(store: RedisStore) -> None:
    await store.ensure_groups()
    await start_steps(store, IDS[: PROVEN_AFTER_TURNS + 1])
    runner = await steps_runner(store, EngineLane.SLOW)
    for turns, instance_id in enumerate(IDS[:PROVEN_AFTER_TURNS], start=1):
        assert await store.proven_definitions() == frozenset(), turns
        await runner.run_turn(instance_id)
        snapshot = await store.load_turn(instance_id)
        assert snapshot is not None and snapshot.status is InstanceStatus.COMPLETED
    assert await store.proven_definitions() == frozenset({STEPS})
    # A regular runner started now takes the next instance's turn itself.
    [work] = [
        w for w in await store.read_work("r", count=10, block_ms=10) if w.instance_id == IDS[-1]
    ]
    regular = await steps_runner(store, EngineLane.REGULAR)
    assert await regular.run_turn(IDS[-1], work=[work])
    snapshot = await store.load_turn(IDS[-1])
    assert snapshot is not None and snapshot.status is InstanceStatus.COMPLETED


async def test_a_slow_workflow_is_not_proven_by_its_fast_turns(store: RedisStore) -> None:
    await store.ensure_groups()
    await start_steps(store, IDS[:PROVEN_AFTER_TURNS])
    await store.mark_slow(IDS[0], NOW)  # its workflow is slow for SLOW_DEFINITION_MS
    runner = await steps_runner(store, EngineLane.SLOW)
    for instance_id in IDS[:PROVEN_AFTER_TURNS]:
        await runner.run_turn(instance_id)
    assert await store.proven_definitions() == frozenset()


async def test_a_slow_lane_commit_leaves_the_regular_entry_of_the_same_id(
    store: RedisStore, redis: Redis
) -> None:
    # Entry ids are per stream: a slow lane entry's id can be a regular entry's too, which
    # the commit (it acknowledges in the regular stream) must not take with it.
    await store.ensure_groups()
    await start_steps(store, IDS[:1])
    await store.read_work("regular", count=10, block_ms=10)
    await store.mark_proven(STEPS)
    keys = store.keys
    partition = keys.partition(IDS[0])
    same = "9999999999999-0"
    await redis.xadd(keys.slow_work(partition), {"i": IDS[0]}, id=same)
    await redis.xadd(keys.work(partition), {"i": IDS[1]}, id=same)
    [slow] = await store.read_work("slow", count=10, block_ms=10, slow=True)
    [regular] = await store.read_work("regular", count=10, block_ms=10)
    assert slow.entry_id == regular.entry_id == same
    runner = await steps_runner(store, EngineLane.SLOW)
    assert not await runner.run_turn(IDS[0], work=[slow])  # left to the caller to acknowledge
    snapshot = await store.load_turn(IDS[0])
    assert snapshot is not None and snapshot.status is InstanceStatus.COMPLETED
    assert await redis.xrange(keys.work(partition), same, same) != []
    pending = await redis.xpending_range(keys.work(partition), "engine", same, same, 1)
    assert [p["message_id"] for p in pending] == [same.encode()]
