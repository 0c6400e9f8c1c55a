"""`python -m bench.awaiting`: waiting on instances with AwaitInstance and WatchInstance.

Two measurements against one sidecar process (embedded Redis, one engine process):

- W3 observed: `count` `bench.approve` instances parked in their `listen` are signalled all at
  once (every signal in flight together), and each caller times from just before its Signal
  until it *sees* the instance completed: once by AwaitInstance (woken by the commit), once by
  GetStatus every 100 ms (what the Python client's `wait()` did). The two runs alternate
  `rounds` times on fresh instances; the report gives p50 and p99 of each and the rpcs made.
  `--in-flight N` lets only N callers signal and wait at a time, as W3 of `python -m bench`.
- Streams: `streams` `bench.hold` instances each get a WatchInstance stream, held open; the
  sidecar's resident memory before and after (once every stream has its first message) gives
  the memory per stream. W1 (Runs of `bench.hold`) is measured before the streams and again
  beside them.

docs/benchmarks.md records the figures; the tests run it with tiny counts and assert no speed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from bench.load import drive, percentile
from bench.processes import sidecar_process
from bench.workloads import APPROVE, HOLD, SIGNAL, run_request

if TYPE_CHECKING:
    from okra_client.gen.workflow.v1.workflow_pb2_grpc import WorkflowHostAPIAsyncStub as Stub

FINAL = (pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED, pb.WORKFLOW_STATUS_CANCELLED)
POLL_S = 0.1  # the Python client's wait() before AwaitInstance
CALL_TIMEOUT_S = 60.0
# Streams are spread over this many channels (connections), as many clients would hold them.
STREAMS_PER_CHANNEL = 500
# Streams are opened this many at a time, each batch once the one before has its first
# messages: grpc core cancels calls left unaccepted for a second while over 1000 wait, which
# a burst of 10,000 at once on a busy 2-core machine meets (the same holds for unary calls).
OPEN_BATCH = 500
START_CONCURRENCY = 64
TARGET_P99_MS = 50.0
TARGET_STREAM_BYTES = 20 * 1024


def log(message: str) -> None:
    print(f"[bench.awaiting] {message}", file=sys.stderr, flush=True)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class Observed:
    """Signal-to-observed-completion latencies (seconds) and the rpcs it took, by style."""

    latencies_s: dict[str, list[float]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, style: str, latencies: list[float], calls: int) -> None:
        self.latencies_s.setdefault(style, []).extend(latencies)
        self.calls[style] = self.calls.get(style, 0) + calls

    def row(self, style: str) -> str:
        values = sorted(self.latencies_s[style])
        p50, p99 = percentile(values, 50) * 1000, percentile(values, 99) * 1000
        per = self.calls[style] / max(len(values), 1)
        return f"{style:<24} {len(values):>6} {p50:>8.1f} {p99:>8.1f} {per:>10.1f}"


@dataclass
class Streams:
    """What holding `count` WatchInstance streams cost the sidecar, and W1 beside them."""

    count: int
    rss_before: int
    rss_after: int
    w1_alone: tuple[float, float, float]  # rate/s, p50 ms, p99 ms
    w1_beside: tuple[float, float, float]

    @property
    def bytes_per_stream(self) -> float:
        return (self.rss_after - self.rss_before) / max(self.count, 1)


async def start_parked(stub: Stub, workflow_id: str, count: int) -> list[str]:
    """`count` instances of `workflow_id`, each returned once it waits in its listen."""
    request = run_request(workflow_id)
    timing = await drive(
        lambda _: stub.Run(request, timeout=CALL_TIMEOUT_S), count=count, concurrency=64
    )
    ids = [reply.instance_id for reply in timing.replies]

    async def parked(instance_id: str) -> None:
        await stub.AwaitInstance(
            pb.AwaitInstanceRequest(instance_id=instance_id, statuses=[pb.WORKFLOW_STATUS_WAITING]),
            timeout=CALL_TIMEOUT_S,
        )

    await bounded(parked, ids, START_CONCURRENCY)
    return ids


async def bounded(work: Callable[[str], Awaitable[Any]], items: Sequence[str], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(item: str) -> None:
        async with gate:
            await work(item)

    await asyncio.gather(*(one(item) for item in items))


async def observe_all(
    stub: Stub, ids: Sequence[str], style: str, in_flight: int
) -> tuple[list[float], int]:
    """Signal the instances, `in_flight` callers at a time; each caller times until it sees
    its instance final."""
    calls = 0
    gate = asyncio.Semaphore(in_flight)

    async def one(instance_id: str) -> float:
        async with gate:
            return await observe(instance_id)

    async def observe(instance_id: str) -> float:
        nonlocal calls
        signal = pb.SignalRequest(instance_id=instance_id, signal=SIGNAL)
        signal.payload.struct_value.fields["by"].string_value = "bench"
        started = time.perf_counter()
        await stub.Signal(signal, timeout=CALL_TIMEOUT_S)
        calls += 1
        if style == "AwaitInstance":
            request = pb.AwaitInstanceRequest(instance_id=instance_id)
            while True:
                calls += 1
                reply = await stub.AwaitInstance(request, timeout=CALL_TIMEOUT_S)
                if reply.instance.status in FINAL:
                    return time.perf_counter() - started
        get = pb.GetStatusRequest(instance_id=instance_id)
        while True:
            calls += 1
            instance = await stub.GetStatus(get, timeout=CALL_TIMEOUT_S)
            if instance.status in FINAL:
                return time.perf_counter() - started
            await asyncio.sleep(POLL_S)

    latencies = await asyncio.gather(*(one(i) for i in ids))
    return list(latencies), calls


async def measure_observed(stub: Stub, *, count: int, rounds: int, in_flight: int) -> Observed:
    observed = Observed()
    for round_number in range(rounds):
        # Alternate which style goes first, so neither always meets a warmer sidecar.
        styles = ["AwaitInstance", "GetStatus every 100 ms"]
        if round_number % 2:
            styles.reverse()
        for style in styles:
            ids = await start_parked(stub, APPROVE, count)
            latencies, calls = await observe_all(stub, ids, style, in_flight)
            observed.add(style, latencies, calls)
            log(f"round {round_number + 1}: {style}: {count} observed")
    return observed


async def measure_w1(stub: Stub, count: int) -> tuple[float, float, float]:
    request = run_request(HOLD)
    timing = await drive(
        lambda _: stub.Run(request, timeout=CALL_TIMEOUT_S), count=count, concurrency=64
    )
    values = sorted(timing.latencies_ms)
    rate = count / timing.elapsed_s
    return rate, percentile(values, 50), percentile(values, 99)


async def measure_streams(address: str, stub: Stub, pid: int, *, count: int, w1: int) -> Streams:
    ids = await start_parked(stub, HOLD, count)
    w1_alone = await measure_w1(stub, w1)
    gc.collect()
    await asyncio.sleep(1.0)  # let the sidecar settle after the Runs
    before = rss_bytes(pid)
    channels = [grpc.aio.insecure_channel(address) for _ in range(0, count, STREAMS_PER_CHANNEL)]
    calls: list[Any] = []

    async def first(call: Any) -> None:
        message = await call.read()
        assert message.instance.status == pb.WORKFLOW_STATUS_WAITING

    try:
        for start in range(0, count, OPEN_BATCH):
            batch = []
            for index in range(start, min(start + OPEN_BATCH, count)):
                watch = pb_grpc.WorkflowHostAPIStub(channels[index // STREAMS_PER_CHANNEL])
                batch.append(watch.WatchInstance(pb.WatchInstanceRequest(instance_id=ids[index])))
            calls.extend(batch)
            await asyncio.gather(*(first(c) for c in batch))
        log(f"{count} WatchInstance streams open")
        await asyncio.sleep(1.0)
        after = rss_bytes(pid)
        w1_beside = await measure_w1(stub, w1)
        after = max(after, rss_bytes(pid))
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
    return Streams(count, before, after, w1_alone, w1_beside)


async def measure(
    *, count: int, rounds: int, streams: int, w1: int, work_dir: Path, in_flight: int = 0
) -> tuple[Observed, Streams | None]:
    async with (
        sidecar_process(work_dir) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub: Stub = pb_grpc.WorkflowHostAPIStub(channel)
        observed = await measure_observed(
            stub, count=count, rounds=rounds, in_flight=in_flight or count
        )
        for style in observed.latencies_s:
            log(observed.row(style))
        held = None
        if streams:
            held = await measure_streams(server.address, stub, server.pid, count=streams, w1=w1)
    return observed, held


def report(observed: Observed, held: Streams | None) -> str:
    lines = [
        "W3 signal -> observed completion",
        f"{'observed by':<24} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'rpcs each':>10}",
        *(observed.row(style) for style in observed.latencies_s),
    ]
    if held is not None:
        lines += [
            "",
            f"{held.count} WatchInstance streams: sidecar RSS {held.rss_before / 2**20:.1f} MiB"
            f" -> {held.rss_after / 2**20:.1f} MiB, {held.bytes_per_stream / 1024:.1f} KiB per "
            f"stream (target < {TARGET_STREAM_BYTES / 1024:.0f} KiB)",
            "W1 Run alone:          {:.0f}/s, p50 {:.1f} ms, p99 {:.1f} ms".format(*held.w1_alone),
            "W1 Run beside streams: {:.0f}/s, p50 {:.1f} ms, p99 {:.1f} ms".format(*held.w1_beside),
        ]
    awaited = sorted(observed.latencies_s.get("AwaitInstance", []))
    if awaited:
        p99 = percentile(awaited, 99) * 1000
        verdict = "meets" if p99 <= TARGET_P99_MS else "misses"
        lines.append(
            f"AwaitInstance p99 {p99:.1f} ms {verdict} the {TARGET_P99_MS:.0f} ms target "
            f"(median {statistics.median(awaited) * 1000:.1f} ms)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.awaiting", description=__doc__)
    parser.add_argument("--count", type=int, default=500, help="instances signalled at once")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each style")
    parser.add_argument(
        "--in-flight", type=int, default=0, help="callers at a time (0: all --count at once)"
    )
    parser.add_argument("--streams", type=int, default=10_000, help="WatchInstance streams")
    parser.add_argument("--w1", type=int, default=2000, help="Runs of each W1 measurement")
    parser.add_argument("--quick", action="store_true", help="100 / 1 / 1000 / 300")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.rounds, args.streams, args.w1 = 100, 1, 1000, 300
    with tempfile.TemporaryDirectory(prefix="okra-bench-awaiting-") as work:
        observed, held = asyncio.run(
            measure(
                count=args.count,
                rounds=args.rounds,
                streams=args.streams,
                w1=args.w1,
                work_dir=Path(work),
                in_flight=args.in_flight,
            )
        )
    print(report(observed, held))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
