"""RedisStore against a real redis-server: the atomic steps the engine's safety rests on."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from bench.query import RoundTrips
from okra_sidecar.engine.runtime.cancelling import cancel_instance
from okra_sidecar.errors import (
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    ResourceExhaustedError,
)
from okra_sidecar.instances import InstanceStatus, NewInstance, QueryFilter
from okra_sidecar.store.base import TurnCommit
from okra_sidecar.store.cluster_client import is_cluster_client
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.redis_store import RedisStore
from tests.helpers import apply_outbox, command_calls

IDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(10)]


@pytest.fixture
def store(redis: Redis) -> RedisStore:
    return RedisStore(redis=redis, keys=RedisKeys(partitions=2))


def new(instance_id: str, created_us: int = 1_000_000, **tags: str) -> NewInstance:
    return NewInstance(
        instance_id=instance_id,
        workflow_id="t.w.1.0.0",
        input={"a": 1},
        correlation_id="",
        tags=tags,
        state={"pos": 0},
        created_us=created_us,
    )


def commit(status: InstanceStatus, **changes: object) -> TurnCommit:
    base: dict[str, object] = {
        "status": status,
        "state": {"pos": 1},
        "current_step": "/do/0/x",
        "context": {},
        "output": None,
        "error": None,
        "consumed": [],
        "wake_at_ms": None,
        "requeue": False,
        "history": [],
        "now_ms": 5,
    }
    base.update(changes)
    return TurnCommit(**base)  # type: ignore[arg-type]


async def test_create_is_once_per_id(store: RedisStore, redis: Redis) -> None:
    await store.ensure_groups()
    assert await store.create_instance(new(IDS[0]), max_active=0) is True
    assert await store.create_instance(new(IDS[0]), max_active=0) is False
    if not store.one_node:
        # A Run without limits hands its reservation to the outbox (once), for the relay.
        assert await store.limits.held() == 0
        assert await apply_outbox(store) == 1
    # On a single Redis a scope no limit has applied to counts nothing (limit_store.track).
    assert await store.limits.held() == (0 if store.one_node else 1)
    work = await store.read_work("c1", count=10, block_ms=10)
    assert [w.instance_id for w in work] == [IDS[0]]


async def test_instance_workflow_reads_the_workflow_id_alone(store: RedisStore) -> None:
    await store.ensure_groups()
    assert await store.instance_workflow(IDS[0]) is None
    await store.create_instance(new(IDS[0]), max_active=0)
    assert await store.instance_workflow(IDS[0]) == "t.w.1.0.0"


async def test_commit_is_guarded_by_revision(store: RedisStore, redis: Redis) -> None:
    await store.create_instance(new(IDS[0]), max_active=0)
    first = await store.load_turn(IDS[0])
    assert first is not None
    assert await store.commit_turn(first, commit(InstanceStatus.WAITING)) is True
    before = await redis.hgetall(store.keys.instance(IDS[0]))
    # The same turn applied again (a crash before its ack) must change nothing.
    assert await store.commit_turn(first, commit(InstanceStatus.COMPLETED)) is False
    assert await redis.hgetall(store.keys.instance(IDS[0])) == before
    partition = store.keys.partition(IDS[0])
    assert await redis.zrange(store.keys.index_status(partition, InstanceStatus.WAITING), 0, -1)
    assert not await redis.zrange(store.keys.index_status(partition, InstanceStatus.PENDING), 0, -1)


async def test_finishing_frees_the_active_slot(store: RedisStore, redis: Redis) -> None:
    await store.create_instance(new(IDS[0]), max_active=1)
    with pytest.raises(Exception, match="limit of 1"):
        await store.create_instance(new(IDS[1]), max_active=1)
    snapshot = await store.load_turn(IDS[0])
    assert snapshot is not None
    await store.commit_turn(snapshot, commit(InstanceStatus.COMPLETED, output={"ok": 1}))
    if store.one_node:
        # On a single Redis the finishing commit gives the place back in the same step.
        assert await apply_outbox(store) == 0
    else:
        # The release crosses to the limit's slot through the outbox: held until the relay runs.
        with pytest.raises(Exception, match="limit of 1"):
            await store.create_instance(new(IDS[1]), max_active=1)
        assert await apply_outbox(store) == 1
    assert await store.create_instance(new(IDS[1]), max_active=1) is True


@pytest.mark.parametrize("one_node", [True, False], ids=["one-script", "two-scripts"])
async def test_admission_takes_and_gives_back_the_same_places_in_one_script_or_two(
    redis: Redis, one_node: bool
) -> None:
    if one_node and is_cluster_client(redis):
        pytest.skip("reserve_create spans two slots: a sidecar runs it only on a single Redis")
    store = RedisStore(redis=redis, keys=RedisKeys(partitions=2))
    store.one_node = one_node

    async def create(instance_id: str) -> bool:
        return await store.create_instance(new(instance_id), max_active=5, max_per_workflow=2)

    assert await create(IDS[0]) is True
    assert await create(IDS[0]) is False  # a retried Run
    assert await create(IDS[1]) is True
    with pytest.raises(ResourceExhaustedError, match="limit of 2 concurrent instances of t.w"):
        await create(IDS[2])
    assert not await redis.exists(store.keys.instance(IDS[2]))
    assert await store.limits.held() == 2
    for instance_id in IDS[:2]:
        snapshot = await store.load_turn(instance_id)
        assert snapshot is not None
        await store.commit_turn(snapshot, commit(InstanceStatus.COMPLETED))
    # On one node each finishing commit released its place; else both releases come in one
    # relay batch, one script call for the scope.
    assert await apply_outbox(store) == (0 if one_node else 2)
    assert await store.limits.held() == 0
    # A Run retried after its instance finished and left: no instance, and no place kept.
    assert await create(IDS[0]) is False
    assert await store.limits.held() == 0
    assert await create(IDS[2]) is True


async def test_consumed_signals_leave_the_inbox_atomically(store: RedisStore) -> None:
    await store.create_instance(new(IDS[0]), max_active=0)
    for n in range(3):
        await store.signal(IDS[0], signal_id=f"s{n}", event={"type": "t", "n": n}, now_ms=1)
    snapshot = await store.load_turn(IDS[0])
    assert snapshot is not None and len(snapshot.inbox) == 3
    consumed = [snapshot.inbox[1].entry_id]
    await store.commit_turn(snapshot, commit(InstanceStatus.WAITING, consumed=consumed))
    after = await store.load_turn(IDS[0])
    assert after is not None
    assert [e.event["n"] for e in after.inbox] == [0, 2]


async def test_signal_and_cancel_refuse_missing_and_finished(store: RedisStore) -> None:
    with pytest.raises(NotFoundError):
        await store.signal(IDS[5], signal_id="s", event={}, now_ms=1)
    with pytest.raises(NotFoundError):
        await cancel_instance(store, IDS[5], reason="", now_ms=1)
    await store.create_instance(new(IDS[0]), max_active=0)
    await cancel_instance(store, IDS[0], reason="stop", now_ms=1)
    with pytest.raises(FailedPreconditionError, match="already cancelled"):
        await cancel_instance(store, IDS[0], reason="again", now_ms=2)
    with pytest.raises(FailedPreconditionError, match="already cancelled"):
        await store.signal(IDS[0], signal_id="s", event={}, now_ms=1)


async def test_due_timers_fire_once(store: RedisStore) -> None:
    await store.ensure_groups()
    await store.create_instance(new(IDS[0]), max_active=0)
    await store.create_instance(new(IDS[1]), max_active=0)
    await store.read_work("c1", count=10, block_ms=10)  # the creation turns
    for instance_id, wake in ((IDS[0], 100), (IDS[1], 300)):
        snapshot = await store.load_turn(instance_id)
        assert snapshot is not None
        await store.commit_turn(snapshot, commit(InstanceStatus.WAITING, wake_at_ms=wake))
    results = await asyncio.gather(*(store.fire_timers(200, limit=10) for _ in range(5)))
    assert sum(results) == 1
    work = await store.read_work("c1", count=10, block_ms=10)
    assert [w.instance_id for w in work] == [IDS[0]]
    assert await store.fire_timers(300, limit=10) == 1


async def test_work_of_a_dead_consumer_is_reclaimed(store: RedisStore) -> None:
    await store.ensure_groups()
    await store.create_instance(new(IDS[0]), max_active=0)
    taken = await store.read_work("dead", count=10, block_ms=10)
    assert len(taken) == 1
    assert await store.claim_stale_work("alive", min_idle_ms=60_000, count=10) == []
    await asyncio.sleep(0.12)
    reclaimed = await store.claim_stale_work("alive", min_idle_ms=100, count=10)
    assert [w.instance_id for w in reclaimed] == [IDS[0]]
    await store.ack_work(reclaimed)
    assert await store.claim_stale_work("other", min_idle_ms=0, count=10) == []


async def test_query_pages_by_cursor(store: RedisStore) -> None:
    for i, instance_id in enumerate(IDS):
        await store.create_instance(new(instance_id, 1_000_000 + i, team="a"), max_active=0)
    page = await store.query(QueryFilter(limit=4, tags={"team": "a"}))
    assert [r.instance_id for r in page.instances] == IDS[::-1][:4]
    rest = await store.query(QueryFilter(limit=100, cursor=page.cursor))
    assert [r.instance_id for r in rest.instances] == IDS[::-1][4:]
    assert rest.cursor == ""
    with pytest.raises(InvalidInputError, match="cursor"):
        await store.query(QueryFilter(cursor="bm90LWEtbWVtYmVy"))


async def test_query_merges_the_partitions_newest_first_while_instances_are_added(
    redis: Redis,
) -> None:
    store = RedisStore(redis=redis, keys=RedisKeys(partitions=16))
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(40)]
    assert len({store.keys.partition(i) for i in ids}) > 8  # spread over the partitions
    for n, instance_id in enumerate(ids):
        await store.create_instance(new(instance_id, 1_000_000 + n), max_active=0)
    seen: list[str] = []
    cursor = ""
    for page_number in range(10):
        page = await store.query(QueryFilter(limit=7, cursor=cursor))
        seen += [r.instance_id for r in page.instances]
        # Newer instances sort above every page already read: later pages never show them.
        late = f"00000000-0000-4000-9000-{page_number:012d}"
        await store.create_instance(new(late, 2_000_000 + page_number), max_active=0)
        cursor = page.cursor
        if not cursor:
            break
    assert seen == ids[::-1]


async def test_a_page_of_100_from_16_partitions_takes_two_round_trips(redis: Redis) -> None:
    store = RedisStore(redis=redis, keys=RedisKeys(partitions=16))
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(250)]
    for n, instance_id in enumerate(ids):
        await store.create_instance(new(instance_id, 1_000_000 + n), max_active=0)
    with RoundTrips() as trips:
        page = await store.query(QueryFilter(limit=100))
        # One pipeline reads the next members of all 16 indexes, one reads the 100 records.
        assert [r.instance_id for r in page.instances] == ids[::-1][:100]
        assert trips.count == 2
        rest = await store.query(QueryFilter(limit=100, cursor=page.cursor))
        assert [r.instance_id for r in rest.instances] == ids[::-1][100:200]
        assert trips.count == 4


async def test_query_reads_the_index_with_fewest_members_in_range(redis: Redis) -> None:
    # "The WAITING instances of a workflow" among 300 of it: the five, from the status index,
    # not the workflow's 300 records re-checked one by one.
    store = RedisStore(redis=redis, keys=RedisKeys(partitions=16))
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(300)]
    for n, instance_id in enumerate(ids):
        await store.create_instance(new(instance_id, 1_000_000 + n, team="a"), max_active=0)
    waiting = ids[10:300:60]
    for instance_id in waiting:
        snapshot = await store.load_turn(instance_id)
        assert snapshot is not None
        await store.commit_turn(snapshot, commit(InstanceStatus.WAITING))
    wanted = QueryFilter(
        limit=100, workflow_id="t.w.1.0.0", statuses=frozenset({InstanceStatus.WAITING})
    )
    records_read = await command_calls(redis, "hmget")
    with RoundTrips() as trips:
        page = await store.query(wanted)
        # The sizes of both indexes in range, the status index's members, their records.
        assert trips.count == 3
    assert await command_calls(redis, "hmget") - records_read == len(waiting)
    assert [r.instance_id for r in page.instances] == waiting[::-1]
    assert page.cursor == ""
    # Two statuses: both indexes merged newest first, whatever the other filters.
    either = frozenset({InstanceStatus.WAITING, InstanceStatus.PENDING})
    page = await store.query(QueryFilter(limit=500, statuses=either, tags={"team": "a"}))
    assert [r.instance_id for r in page.instances] == ids[::-1]


async def test_the_gauges_sum_16_partitions_in_one_round_trip(redis: Redis) -> None:
    store = RedisStore(redis=redis, keys=RedisKeys(partitions=16))
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(40)]
    for instance_id in ids:
        await store.create_instance(new(instance_id), max_active=0)
    for instance_id in ids[:10]:
        snapshot = await store.load_turn(instance_id)
        assert snapshot is not None
        await store.commit_turn(snapshot, commit(InstanceStatus.WAITING))
    with RoundTrips() as trips:
        stats = await store.stats()
    assert (stats.waiting, sum(stats.backlog.values())) == (10, 40)
    assert len({store.keys.partition(i) for i in ids}) == len(stats.oldest_ms) > 8
    assert trips.count == 1
