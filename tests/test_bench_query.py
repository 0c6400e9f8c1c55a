"""Smoke test for bench.query: a small store, every page counted; no speed asserted."""

from __future__ import annotations

from redis.asyncio import Redis

from bench.query import fill, page_through, report
from okra_sidecar.instances import InstanceStatus, QueryFilter
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.redis_store import RedisStore


async def test_the_query_bench_counts_round_trips_per_page(redis: Redis) -> None:
    store = RedisStore(redis=redis, keys=RedisKeys(partitions=16))
    await fill(store, 250)
    pages = await page_through(store, QueryFilter(limit=100), pages=5)
    assert [trips for trips, _ in pages] == [2, 2, 2]
    completed = QueryFilter(limit=100, statuses=frozenset({InstanceStatus.COMPLETED}))
    assert len(await page_through(store, completed, pages=5)) == 2
    assert report("all", pages).startswith("all")
