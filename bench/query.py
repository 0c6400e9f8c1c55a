"""Query across partitions: Redis round trips and time per page of 100.

Run as `python -m bench.query [--instances N] [--partitions P] [--pages K]`. It starts its own
embedded redis-server, creates N instances through the store (spread over P partitions by
their ids), then pages through them newest first with `limit: 100`, unfiltered and filtered
by one status (every other instance is completed), counting the pipelines each page sends
(one pipeline is one round trip) and timing it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline

from okra_sidecar.instances import InstanceStatus, NewInstance, QueryFilter
from okra_sidecar.store.base import TurnCommit
from okra_sidecar.store.cluster_commands import ClusterCommands
from okra_sidecar.store.embedded import EmbeddedRedis
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.multiplexed import MultiplexedRedis
from okra_sidecar.store.redis_store import RedisStore

PAGE = 100


class RoundTrips:
    """Counts the pipelines sent in the process: redis-py's, and those of the store's hot
    commands (MultiplexedRedis, ClusterCommands), each counted once where one is sent
    through another (ClusterCommands over redis-py's pool).

    On a Redis Cluster a pipeline goes to every master it names at once: one round trip.
    """

    _PATCHED = (
        (Pipeline, "execute"),
        (ClusterPipeline, "execute"),
        (MultiplexedRedis, "pipeline"),
        (ClusterCommands, "pipeline"),
    )

    def __init__(self) -> None:
        self.count = 0
        self._inside: ContextVar[bool] = ContextVar("inside_a_pipeline", default=False)
        self._originals = [getattr(owner, name) for owner, name in self._PATCHED]

    def __enter__(self) -> RoundTrips:
        for (owner, name), original in zip(self._PATCHED, self._originals, strict=True):
            setattr(owner, name, self._counting(original))
        return self

    def _counting(self, original: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            if self._inside.get():
                return await original(*args, **kwargs)
            self.count += 1
            token = self._inside.set(True)
            try:
                return await original(*args, **kwargs)
            finally:
                self._inside.reset(token)

        return counted

    def __exit__(self, *exc: object) -> None:
        for (owner, name), original in zip(self._PATCHED, self._originals, strict=True):
            setattr(owner, name, original)


async def fill(store: RedisStore, count: int) -> None:
    """`count` instances, one created per microsecond of a fake clock; every other completed."""
    for n in range(count):
        new = NewInstance(
            instance_id=str(uuid.uuid4()),
            workflow_id="bench.hold.1.0.0",
            input={"n": n},
            correlation_id="",
            tags={},
            state={"pos": 0},
            created_us=1_700_000_000_000_000 + n,
        )
        await store.create_instance(new, max_active=0)
        if n % 2:
            snapshot = await store.load_turn(new.instance_id)
            assert snapshot is not None
            done = TurnCommit(
                status=InstanceStatus.COMPLETED,
                state={},
                current_step="",
                context={},
                output={},
                error=None,
                consumed=[],
                wake_at_ms=None,
                requeue=False,
                history=[],
                now_ms=1,
            )
            await store.commit_turn(snapshot, done)


async def page_through(
    store: RedisStore, query: QueryFilter, pages: int
) -> list[tuple[int, float]]:
    """(round trips, seconds) of each of up to `pages` pages."""
    found: list[tuple[int, float]] = []
    cursor = ""
    for _ in range(pages):
        with RoundTrips() as trips:
            started = time.perf_counter()
            page = await store.query(replace(query, cursor=cursor))
            elapsed = time.perf_counter() - started
        assert len(page.instances) == PAGE or not page.cursor
        found.append((trips.count, elapsed))
        cursor = page.cursor
        if not cursor:
            break
    return found


def report(name: str, pages: Sequence[tuple[int, float]]) -> str:
    trips = [t for t, _ in pages]
    times = sorted(s for _, s in pages)
    return (
        f"{name:<34} {len(pages):>5} {min(trips):>4}-{max(trips):<4} "
        f"{statistics.median(times) * 1000:>9.2f} {times[-1] * 1000:>9.2f}"
    )


async def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__)
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--pages", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as data_dir:
        server = EmbeddedRedis(data_dir=Path(data_dir), appendfsync="no")
        url = await server.start()
        redis = Redis.from_url(url)
        try:
            store = RedisStore(redis=redis, keys=RedisKeys(partitions=args.partitions))
            await fill(store, args.instances)
            print(f"{args.instances} instances over {args.partitions} partitions, pages of {PAGE}")
            print(f"{'query':<34} {'pages':>5} {'round trips':<9} {'p50 ms':>9} {'max ms':>9}")
            for name, query in [
                ("newest first, no filter", QueryFilter(limit=PAGE)),
                (
                    "status completed (half match)",
                    QueryFilter(limit=PAGE, statuses=frozenset({InstanceStatus.COMPLETED})),
                ),
                (
                    "workflow id (index per partition)",
                    QueryFilter(limit=PAGE, workflow_id="bench.hold.1.0.0"),
                ),
            ]:
                print(report(name, await page_through(store, query, args.pages)))
        finally:
            await redis.aclose()
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
