"""The limit store on its own client, on a single Redis and on a Redis Cluster alike."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from okra_sidecar.errors import ResourceExhaustedError, StoreUnavailableError
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.limit_store import RedisLimitStore
from okra_sidecar.store.redis_store import RedisStore
from tests.helpers import apply_outbox
from tests.store.test_redis_store import IDS, commit, new

KEYS = RedisKeys(scope="shop")


async def test_concurrent_reservations_admit_exactly_the_limit(redis: Redis) -> None:
    limits = RedisLimitStore(redis=redis, keys=KEYS)
    admissions = await asyncio.gather(
        *(limits.reserve(i, "t.w", max_active=3, max_per_workflow=0) for i in IDS)
    )
    admitted = [i for i, a in zip(IDS, admissions, strict=True) if not a.refused]
    assert len(admitted) == 3
    assert {a.refused for a in admissions if a.refused} == {"active"}
    assert await limits.held() == 3 and await limits.held_by_workflow("t.w") == 3
    refused = next(i for i in IDS if i not in admitted)
    assert (await limits.reserve(refused, "t.w", max_active=3, max_per_workflow=0)).refused
    assert await limits.release(admitted[0], "shop", "t.w")
    assert not (await limits.reserve(refused, "t.w", max_active=3, max_per_workflow=0)).refused
    assert await limits.held() == 3


async def test_repair_releases_a_reservation_whose_instance_never_came(redis: Redis) -> None:
    limits = RedisLimitStore(redis=redis, keys=KEYS)
    held = await limits.reserve(IDS[0], "t.w", max_active=0, max_per_workflow=0)
    assert not held.refused
    # Reserved long ago (score 1 µs), and no instance: the reconciler's case.
    await redis.zadd(KEYS.limit_active("shop"), {IDS[0]: 1})
    repaired = await limits.repair()
    assert (repaired.checked, repaired.released_missing) == (1, 1)
    assert await limits.held() == 0 and await limits.held_by_workflow("t.w") == 0
    assert await redis.get(KEYS.voided(IDS[0])) == b"1"


async def test_a_run_without_limits_is_counted_even_after_an_earlier_reservation_lapsed(
    redis: Redis,
) -> None:
    store = RedisStore(redis=redis, keys=KEYS)
    limits = store.limits
    await limits.reserve(IDS[0], "t.w", max_active=0, max_per_workflow=0)
    await redis.zadd(KEYS.limit_active("shop"), {IDS[0]: 1})
    assert (await limits.repair()).released_missing == 1  # voided, its marker left behind
    # On a Cluster a Run without limits hands its reservation to the outbox; the marker of
    # the earlier reservation refuses neither the create nor the reservation the relay makes.
    # On a single Redis the scope counts nothing yet: the first Run a limit applies to counts
    # both.
    assert await store.create_instance(new(IDS[0]), max_active=0) is True
    assert await store.create_instance(new(IDS[1]), max_active=0) is True
    assert await apply_outbox(store) == (0 if store.one_node else 2)
    with pytest.raises(ResourceExhaustedError, match="limit of 2"):
        await store.create_instance(new(IDS[2]), max_active=2)
    assert await limits.held() == 2 and await limits.held_by_workflow("t.w") == 2
    assert await store.get_instance(IDS[0]) is not None


async def test_a_scope_counts_nothing_until_a_limit_applies_then_counts_what_runs(
    redis: Redis,
) -> None:
    store = RedisStore(redis=redis, keys=KEYS)
    if not store.one_node:
        pytest.skip("on a Cluster every Run's reservation is made, through the outbox")
    limits = store.limits
    for instance_id in IDS[:4]:
        assert await store.create_instance(new(instance_id), max_active=0) is True
    assert await limits.held() == 0
    snapshot = await store.load_turn(IDS[0])
    assert snapshot is not None
    assert await store.commit_turn(snapshot, commit(InstanceStatus.COMPLETED))
    assert await apply_outbox(store) == 0  # nothing was held: nothing to release
    # The first Runs a limit applies to count the three that run (not the finished one),
    # however many race for it: exactly the limit is admitted.
    admitted = await asyncio.gather(
        *(store.create_instance(new(i), max_active=5) for i in IDS[4:9]), return_exceptions=True
    )
    assert sum(a is True for a in admitted) == 2
    assert {type(a) for a in admitted if a is not True} == {ResourceExhaustedError}
    assert await limits.held() == 5 and await limits.held_by_workflow("t.w") == 5
    assert await limits.track() == 0  # counted once
    # Counted from now on, a Run without limits too; every counted instance releases its
    # place when it finishes.
    assert await store.create_instance(new(IDS[9]), max_active=0) is True
    assert await limits.held() == 6
    for instance_id in [
        *IDS[1:4],
        *(i for i, a in zip(IDS[4:9], admitted, strict=True) if a is True),
    ]:
        snapshot = await store.load_turn(instance_id)
        assert snapshot is not None
        assert await store.commit_turn(snapshot, commit(InstanceStatus.COMPLETED))
    assert await limits.held() == 1 and await limits.held_by_workflow("t.w") == 1


async def test_signal_with_start_counts_what_runs_before_its_limit(redis: Redis) -> None:
    store = RedisStore(redis=redis, keys=KEYS)
    assert await store.create_instance(new(IDS[0]), max_active=0) is True
    await apply_outbox(store)  # on a Cluster the relay makes the reservation
    with pytest.raises(ResourceExhaustedError, match="limit of 1"):
        await store.signal_with_start(
            new(IDS[1]), signal_id="s1", event={"type": "go"}, now_ms=1, max_active=1
        )
    assert await store.get_instance(IDS[1]) is None
    assert await store.limits.held() == 1


async def test_a_voided_reservation_refuses_its_create_or_is_made_again(redis: Redis) -> None:
    store = RedisStore(redis=redis, keys=KEYS)
    if store.one_node:
        await store.limits.track()  # a scope that counts: the Run keeps its reservation
    held = await store.limits.reserve(IDS[0], "t.w", max_active=0, max_per_workflow=0)
    # The reconciler has voided this very reservation (and not yet released it).
    await redis.set(KEYS.voided(IDS[0]), held.score)
    if store.one_node:
        # The create runs with that reservation: refused, so that it never runs uncounted.
        with pytest.raises(StoreUnavailableError, match="lapsed"):
            await store.create_instance(new(IDS[0]), max_active=0)
        assert await store.get_instance(IDS[0]) is None
        return
    # On a Cluster a Run without limits makes its own reservation through the outbox, under
    # a new score: the reconciler's release of the voided one (by its score) keeps it.
    assert await store.create_instance(new(IDS[0]), max_active=0) is True
    assert await apply_outbox(store) == 1
    assert not await store.limits.release(IDS[0], "shop", "t.w", score=held.score)
    assert await store.limits.held() == 1 and await store.limits.held_by_workflow("t.w") == 1


async def test_the_relay_makes_an_outbox_reservation_once_and_before_its_release(
    redis: Redis,
) -> None:
    store = RedisStore(redis=redis, keys=KEYS)
    if store.one_node:
        pytest.skip("on a single Redis the Run's one script makes the reservation itself")
    assert await store.create_instance(new(IDS[0]), max_active=0) is True
    assert await store.create_instance(new(IDS[1]), max_active=0) is True
    assert await store.limits.held() == 0  # nothing in the scope's slot until the relay runs
    snapshot = await store.load_turn(IDS[0])
    assert snapshot is not None
    assert await store.commit_turn(snapshot, commit(InstanceStatus.COMPLETED))
    # One batch: both reservations, then the finished instance's release.
    assert await apply_outbox(store) == 3
    assert await store.limits.held() == 1 and await store.limits.held_by_workflow("t.w") == 1
    # An entry applied again (its relay died before acknowledging it) holds no second place.
    assert await store.limits.admit_many("shop", [(IDS[1], "t.w")]) == 0
    assert await store.limits.held() == 1
    # A limit set now counts the instance that runs.
    with pytest.raises(ResourceExhaustedError, match="limit of 1"):
        await store.create_instance(new(IDS[2]), max_active=1)
