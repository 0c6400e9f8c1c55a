"""The load driver: a fixed number of calls at a fixed concurrency, timed one by one."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from bench.cpu import CpuShare

T = TypeVar("T")
# The codes the sidecar asks callers to retry on; any other failure stops the benchmark.
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
MAX_ATTEMPTS = 20
RETRY_DELAY_S = 0.01


@dataclass(frozen=True)
class Timing(Generic[T]):
    """What `drive` saw: every call's reply, wall-clock start and latency, by call index."""

    replies: list[T]
    started_at_s: list[float]
    latencies_ms: list[float]
    elapsed_s: float
    # Attempts that failed with a retried code, by code name (each call is retried).
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """One row of the report: a rate over a window and a latency distribution."""

    name: str
    count: int
    elapsed_s: float
    latencies_ms: Sequence[float]
    cpu: CpuShare | None = None
    errors: int = 0
    # The echo rate measured right before and right after this row (their mean): what its
    # "vs echo" ratio divides by, so that the machine's speed drifting between a baseline
    # taken minutes earlier and this row does not move the ratio. None: the round's echo row.
    baseline_rate: float | None = None
    sorted_ms: list[float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sorted_ms", sorted(self.latencies_ms))

    @property
    def rate(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.sorted_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.sorted_ms, 99)


def combine(rows: Sequence[Result]) -> Result:
    """Several measurements of one workload as one row: all calls over all their time.

    CPU shares are averaged weighted by each measurement's time (a share missing from any
    of them is missing from the whole).
    """
    elapsed = sum(r.elapsed_s for r in rows)
    shares = [r.cpu for r in rows]
    cpu = None
    if elapsed > 0 and all(s is not None for s in shares):

        def weighted(values: Sequence[float | None]) -> float | None:
            if any(v is None for v in values):
                return None
            return sum(v * r.elapsed_s for v, r in zip(values, rows, strict=True) if v) / elapsed

        known = [s for s in shares if s is not None]
        cpu = CpuShare(
            client=weighted([s.client for s in known]) or 0.0,
            server=weighted([s.server for s in known]),
            redis=weighted([s.redis for s in known]),
            engine=weighted([s.engine for s in known]),
        )
    return Result(
        rows[0].name,
        sum(r.count for r in rows),
        elapsed,
        [ms for r in rows for ms in r.latencies_ms],
        cpu,
        sum(r.errors for r in rows),
    )


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def drive(call: Callable[[int], Awaitable[T]], *, count: int, concurrency: int) -> Timing[T]:
    """Make `count` calls `call(0) .. call(count - 1)`, at most `concurrency` in flight.

    The calls are spread over `concurrency` workers that each take the next index as soon as
    their previous call returns (a closed loop), so the rate is what the server sustains.
    A call failing with UNAVAILABLE or RESOURCE_EXHAUSTED is retried, as a client would; its
    latency runs from the first attempt, and the failed attempts are counted in `errors`.
    """
    # Filled by index as calls return; every slot is set once gather() returns.
    replies: list[Any] = [None] * count
    started = [0.0] * count
    latencies = [0.0] * count
    # One iterator shared by all workers: the event loop runs one worker at a time between
    # awaits, so `next()` hands out each index exactly once.
    indexes = iter(range(count))
    errors: dict[str, int] = {}
    perf, wall = time.perf_counter, time.time

    async def attempt(index: int) -> Any:
        for _ in range(MAX_ATTEMPTS - 1):
            try:
                return await call(index)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRIED_CODES:
                    raise
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
            await asyncio.sleep(RETRY_DELAY_S)
        return await call(index)

    async def worker() -> None:
        for index in indexes:
            started[index] = wall()
            before = perf()
            replies[index] = await attempt(index)
            latencies[index] = (perf() - before) * 1000

    begin = perf()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))
    elapsed = perf() - begin
    return Timing(
        replies=replies,
        started_at_s=started,
        latencies_ms=latencies,
        elapsed_s=elapsed,
        errors=errors,
    )
