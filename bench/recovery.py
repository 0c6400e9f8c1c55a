"""Recovery after a SIGKILL: two sidecars on one Redis, one killed while instances run.

`python -m bench.recovery` starts a redis-server and two sidecars (`serve`, one engine process
each) on it, sends Runs of `bench.pause` (set, wait 0.5 s, set) through the survivor at a
steady pace, SIGKILLs the other sidecar (its engine process dies with it) partway through,
waits until every instance completes, and reports, for the instances that had started but not
completed when the kill happened, how long after the kill each completed (p50, p99, max),
beside the same figure for the instances that ran without a fault.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc
from redis.exceptions import ResponseError

from bench.load import percentile
from bench.processes import sidecar_process
from bench.workloads import Client, completion_times, run_request
from okra_sidecar.store.embedded import EmbeddedRedis
from okra_sidecar.store.keys import ENGINE_GROUP, EXECUTOR_GROUP, RedisKeys

PAUSE = "bench.pause.1.0.0"
# Each instance waits this long in the middle (bench/workflows/pause.yaml).
PAUSE_S = 0.5


async def measure(
    instances: int, rate_per_s: float, kill_after_s: float, env: dict[str, str]
) -> dict[str, float]:
    """Run the scenario once; the figures in milliseconds (and the counts)."""
    with tempfile.TemporaryDirectory(prefix="okra-recovery-") as scratch:
        root = Path(scratch)
        redis = EmbeddedRedis(data_dir=root / "redis")
        url = await redis.start()
        try:
            async with AsyncExitStack() as stack:
                dirs = [root / "a", root / "b"]
                for path in dirs:
                    path.mkdir()
                victim = await stack.enter_async_context(sidecar_process(dirs[0], redis_url=url))
                survivor = await stack.enter_async_context(sidecar_process(dirs[1], redis_url=url))
                channel = grpc.aio.insecure_channel(survivor.address)
                stack.push_async_callback(channel.close)
                client = Client(stub=pb_grpc.WorkflowHostAPIStub(channel))
                return await _scenario(client, url, victim.pid, instances, rate_per_s, kill_after_s)
        finally:
            await redis.stop()


async def _scenario(
    client: Client,
    redis_url: str,
    victim: int,
    instances: int,
    rate_per_s: float,
    kill_after_s: float,
) -> dict[str, float]:
    request = run_request(PAUSE)
    orphaned = 0
    started: list[tuple[str, float]] = []
    kill_ms = 0.0
    begin = time.monotonic()

    async def run_one() -> None:
        sent = time.time() * 1000
        reply = await client.stub.Run(request)
        started.append((reply.instance_id, sent))

    calls: list[asyncio.Task[None]] = []
    for index in range(instances):
        due = begin + index / rate_per_s
        if not kill_ms and time.monotonic() - begin >= kill_after_s:
            os.kill(victim, signal.SIGKILL)
            kill_ms = time.time() * 1000
            orphaned = await _pending_of(redis_url, victim)
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        calls.append(asyncio.create_task(run_one()))
    await asyncio.gather(*calls)
    if not kill_ms:
        raise SystemExit("the kill came after the last Run: lower --kill-after")
    done = await _wait_for_all(client, [i for i, _ in started])
    affected = sorted(
        done[i] - kill_ms for i, sent in started if sent < kill_ms and done[i] > kill_ms
    )
    # Instances that ran wholly before the kill: what a turn costs here without a fault.
    others = sorted(done[i] - sent - PAUSE_S * 1000 for i, sent in started if done[i] < kill_ms)
    return {
        "orphaned": float(orphaned),
        "instances": float(len(started)),
        "affected": float(len(affected)),
        "affected_p50_ms": percentile(affected, 50),
        "affected_p99_ms": percentile(affected, 99),
        "affected_max_ms": max(affected, default=0.0),
        "unaffected_extra_p99_ms": percentile(others, 99),
    }


async def _pending_of(redis_url: str, victim: int) -> int:
    """Work items and effects the killed sidecar (and its engine process) had read but not
    acknowledged: what only a takeover can finish. Its consumer names carry its pid."""
    keys = RedisKeys()
    client = aioredis.Redis.from_url(redis_url)
    total = 0
    try:
        for streams, group in (
            (keys.all_work(), ENGINE_GROUP),
            (keys.all_effects(), EXECUTOR_GROUP),
        ):
            for stream in streams:
                try:
                    consumers: Any = await client.xinfo_consumers(stream, group)
                except ResponseError:
                    continue  # no group there yet
                total += sum(
                    int(c["pending"]) for c in consumers if f"-{victim}-" in c["name"].decode()
                )
    finally:
        await client.aclose()
    return total


async def _wait_for_all(
    client: Client, ids: list[str], timeout_s: float = 120.0
) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await completion_times(client, ids)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__)
    parser.add_argument("--instances", type=int, default=600, help="Runs to send (600)")
    parser.add_argument("--rate", type=float, default=100.0, help="Runs per second (100)")
    parser.add_argument("--kill-after", type=float, default=2.0, help="seconds into the Runs (2.0)")
    parser.add_argument(
        "--heartbeat-ms",
        type=int,
        help="the sidecars' heartbeatMs (a large value leaves recovery to claimIdleMs)",
    )
    args = parser.parse_args(argv)
    env = {} if args.heartbeat_ms is None else {"OKRA_HEARTBEAT_MS": str(args.heartbeat_ms)}
    figures = asyncio.run(measure(args.instances, args.rate, args.kill_after, env))
    print(
        f"{int(figures['instances'])} instances, {int(figures['affected'])} in flight at the "
        f"kill, {int(figures['orphaned'])} work items or effects left pending by the killed sidecar"
    )
    print(
        "completed after the kill: p50 {affected_p50_ms:.0f} ms, p99 {affected_p99_ms:.0f} ms, "
        "max {affected_max_ms:.0f} ms".format(**figures)
    )
    others = figures["unaffected_extra_p99_ms"]
    print(f"instances done before the kill, beyond their 0.5 s pause: p99 {others:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
