"""GetStatus's one HMGET through redis-py's pooled client and through MultiplexedRedis.

Run as `python -m bench.multiplexed [--count N] [--concurrency N]`. It starts its own embedded
redis-server, fills hashes shaped like instance records, and drives the same HMGETs through
both clients in one process, reporting rate, latency, and this process's CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench.cpu import process_cpu_s
from bench.load import Result, drive
from okra_sidecar.config import Settings
from okra_sidecar.server import redis_client
from okra_sidecar.store.embedded import EmbeddedRedis
from okra_sidecar.store.multiplexed import MultiplexedRedis
from okra_sidecar.store.records import RECORD_FIELDS

# The snapshot GetStatus reads.
FIELDS = RECORD_FIELDS
HASHES = 1000
WARM_UP_CALLS = 2000
Call = Callable[[int], Awaitable[Any]]


def record(index: int) -> dict[str, str]:
    """One instance hash with values of the sizes a small workflow leaves behind."""
    values = {name: "" for name in FIELDS}
    values.update(
        wf="bench.hold.1.0.0",
        status="running",
        input=f'{{"order":{{"id":"{index:08d}","items":[1,2,3],"note":"{"x" * 120}"}}}}',
        corr=f"corr-{index}",
        tags='{"team":"bench"}',
        step="wait",
        ctx='{"n":1}',
        created="1700000000000",
        updated="1700000000001",
    )
    return values


async def measure(name: str, call: Call, *, count: int, concurrency: int) -> Result:
    """Warm up, then time `count` calls; the CPU column is this process's, per call."""
    await drive(call, count=WARM_UP_CALLS, concurrency=concurrency)
    cpu_before = process_cpu_s(os.getpid()) or 0.0
    timing = await drive(call, count=count, concurrency=concurrency)
    cpu_s = (process_cpu_s(os.getpid()) or 0.0) - cpu_before
    # `corr` differs per hash, so a reply handed to the wrong caller would show here.
    corr = FIELDS.index("corr")
    for index, reply in enumerate(timing.replies):
        if reply[corr] != f"corr-{index % HASHES}".encode():
            raise RuntimeError(f"{name}: call {index} got another record's reply")
    result = Result(
        name=name, count=count, elapsed_s=timing.elapsed_s, latencies_ms=timing.latencies_ms
    )
    print(
        f"{name:<34} {result.rate:>9,.0f} ops/s   p50 {result.p50_ms:6.2f} ms   "
        f"p99 {result.p99_ms:6.2f} ms   cpu {cpu_s / count * 1e6:5.1f} µs/op",
        flush=True,
    )
    return result


async def run(count: int, concurrency: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="okra-bench-") as data_dir:
        async with EmbeddedRedis(data_dir=Path(data_dir), appendfsync="no") as server:
            # The pool exactly as the sidecar builds it (default settings: 320 connections).
            pooled = redis_client(server.url, Settings())
            multiplexed = MultiplexedRedis(server.url, socket_timeout=10, socket_connect_timeout=2)
            try:
                await asyncio.gather(
                    *(
                        multiplexed.execute(
                            "HSET", f"okra:{{{i}}}", *itertools.chain(*record(i).items())
                        )
                        for i in range(HASHES)
                    )
                )

                def pooled_call(index: int) -> Awaitable[Any]:
                    return pooled.hmget(f"okra:{{{index % HASHES}}}", FIELDS)

                def multiplexed_call(index: int) -> Awaitable[Any]:
                    return multiplexed.execute("HMGET", f"okra:{{{index % HASHES}}}", *FIELDS)

                print(f"{count:,} HMGETs of {len(FIELDS)} fields at concurrency {concurrency}")
                for _ in range(rounds):
                    a = await measure(
                        "redis-py BlockingConnectionPool",
                        pooled_call,
                        count=count,
                        concurrency=concurrency,
                    )
                    b = await measure(
                        "MultiplexedRedis (one connection)",
                        multiplexed_call,
                        count=count,
                        concurrency=concurrency,
                    )
                    print(
                        f"ratio multiplexed/pooled: {b.rate / a.rate:.2f}x ops/s, "
                        f"p50 {b.p50_ms / a.p50_ms:.2f}x, p99 {b.p99_ms / a.p99_ms:.2f}x"
                    )
            finally:
                await multiplexed.aclose()
                await pooled.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.multiplexed", description=__doc__)
    parser.add_argument("--count", type=int, default=50_000, help="timed HMGETs per client")
    parser.add_argument("--concurrency", type=int, default=64, help="callers in flight")
    parser.add_argument("--rounds", type=int, default=1, help="repeat both clients this often")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    asyncio.run(run(args.count, args.concurrency, args.rounds))
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
