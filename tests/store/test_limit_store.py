"""The limit store on its own client, on a single Redis and on a Redis Cluster alike."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.limit_store import RedisLimitStore
from tests.store.test_redis_store import IDS

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
