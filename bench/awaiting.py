"""`python -m bench.awaiting`: waiting on instances with AwaitInstance and WatchInstance.

Two measurements against one sidecar process (embedded Redis, one engine process):

- W3 observed: `count` `bench.approve` instances parked in their `listen` are signalled all at
  once (every signal in flight together), and each caller times from just before its Signal
  until it *sees* the instance completed, in three styles: AwaitInstance after its Signal
  returned (woken by the commit), GetStatus every 100 ms (what the Python client's `wait()`
  did), and AwaitInstance already waiting when the Signal goes. Each caller also times its
  Signal rpc and the completion's commit (the instance's `end_time`) to when it saw it: in
  the last style that is the wake-up AwaitInstance adds, alone. The styles alternate
  `rounds` times on fresh instances; the report gives p50 and p99 of each, the rpcs made and
  the rate the engine completed instances at, with what that rate alone allows.
  `--in-flight N` lets only N callers signal and wait at a time, as W3 of `python -m bench`.
- Streams: `streams` `bench.hold` instances each get a WatchInstance stream, held open; the
  sidecar's resident memory before and after (once every stream has its first message) gives
  the memory per stream. That is measured twice, both sets held at once: on fresh
  connections, whose first calls are the streams, and on used ones, which carried a call
  that ended first (grpc core sizes a call's memory from the calls that ended on its
  connection). W1 (Runs of `bench.hold`) is measured before the streams and again beside
  them. The same streams held on the bare grpc.aio server of `bench.echo` give what the
  transport alone costs per stream, so the sidecar's own part shows.
- The transport's floor (`bench.echo_burst`): the same bursts of callers on the bare echo
  server, two calls each (as a Signal and an AwaitInstance), so the W3 figures stand next to
  what this client and grpc.aio take for the burst with no work on the server at all.

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
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from bench.echo import HOLD_METHOD
from bench.echo_burst import CALLS_EACH, measure_echo_floor
from bench.load import drive, percentile
from bench.processes import echo_process, sidecar_process
from bench.workloads import APPROVE, HOLD, SIGNAL, run_request

if TYPE_CHECKING:
    from okra_client.gen.workflow.v1.workflow_pb2_grpc import WorkflowHostAPIAsyncStub as Stub

FINAL = (pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED, pb.WORKFLOW_STATUS_CANCELLED)
POLL_S = 0.1  # the Python client's wait() before AwaitInstance
# The styles of observing: AwaitInstance after the Signal returned (as handle.result() after
# handle.signal()), GetStatus every POLL_S, and AwaitInstance already waiting (sent SETTLE_S
# before the Signal), whose commit -> seen is the wake-up that AwaitInstance adds, alone.
AWAITING = "AwaitInstance"
POLLING = "GetStatus every 100 ms"
AWAITING_FIRST = "AwaitInstance, then Signal"
SETTLE_S = 1.0
CALL_TIMEOUT_S = 60.0
# Streams are spread over this many channels (connections), as many clients would hold them.
STREAMS_PER_CHANNEL = 500
# Streams are opened this many at a time, each batch once the one before has its first
# messages: grpc core cancels calls left unaccepted for a second while over 1000 wait, which
# a burst of 10,000 at once on a busy 2-core machine meets (the same holds for unary calls).
OPEN_BATCH = 500
START_CONCURRENCY = 64
TARGET_P99_MS = 50.0
TARGET_STREAM_BYTES = 20_000


def log(message: str) -> None:
    print(f"[bench.awaiting] {message}", file=sys.stderr, flush=True)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class Caller:
    """One caller's times (seconds): Signal sent -> instance seen completed, the Signal rpc
    alone, and the completion's commit time (the instance's end_time) -> seen."""

    observed_s: float
    signal_s: float
    wake_s: float
    sent_at: float  # the Signal sent, wall clock (seconds)
    completed_at: float  # the completion's commit, wall clock (seconds)


@dataclass
class Observed:
    """Signal-to-observed-completion latencies and their parts, the rpcs it took, by style."""

    callers: dict[str, list[Caller]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    # Per round: completions over the time from the first Signal to the last completion.
    rates: list[float] = field(default_factory=list)
    signals: int = 0  # per round
    in_flight: int = 0
    signal_bytes: bytes = b""  # a Signal request as W3 sends it: the floor's echo payload
    # The same bursts on the bare echo server: each caller's seconds (bench.echo_burst).
    floor_s: list[float] = field(default_factory=list)

    @property
    def latencies_s(self) -> dict[str, list[float]]:
        return {style: [c.observed_s for c in cs] for style, cs in self.callers.items()}

    def add(self, style: str, callers: list[Caller], calls: int, rate: float) -> None:
        self.callers.setdefault(style, []).extend(callers)
        self.calls[style] = self.calls.get(style, 0) + calls
        if style != AWAITING_FIRST:  # its callers' settling paces the round, not the engine
            self.rates.append(rate)

    def row(self, style: str) -> str:
        callers = self.callers[style]
        per = self.calls[style] / max(len(callers), 1)
        figures = [
            f"{p50:>8.1f} {p99:>8.1f}"
            for p50, p99 in (
                _p50_p99([c.observed_s for c in callers]),
                _p50_p99([c.signal_s for c in callers]),
                _p50_p99([c.wake_s for c in callers]),
            )
        ]
        return f"{style:<26} {len(callers):>6} {figures[0]} {per:>10.1f} {figures[1]} {figures[2]}"


def _p50_p99(seconds: list[float]) -> tuple[float, float]:
    values = sorted(seconds)
    return percentile(values, 50) * 1000, percentile(values, 99) * 1000


@dataclass
class Held:
    """A server's resident memory before and with `count` streams held on one kind of
    connection."""

    count: int
    before: int
    after: int

    @property
    def per_stream(self) -> float:
        return (self.after - self.before) / max(self.count, 1)


# The kinds of connection streams are held on: a fresh one carries nothing before them, a
# used one a call that ended first (grpc core then knows what a call costs on it).
FRESH = "fresh"
USED = "used"
CONNECTIONS = (FRESH, USED)


@dataclass
class Streams:
    """What holding WatchInstance streams cost the sidecar, by kind of connection, W1 beside
    them, and the same on the bare grpc.aio server."""

    held: dict[str, Held]
    w1_alone: tuple[float, float, float]  # rate/s, p50 ms, p99 ms
    w1_beside: tuple[float, float, float]
    bare: dict[str, Held] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(held.count for held in self.held.values())

    @property
    def bytes_per_stream(self) -> float:
        """The dearer kind of connection's figure: the one the target is held to."""
        return max(held.per_stream for held in self.held.values())


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


def signal_request(instance_id: str) -> pb.SignalRequest:
    signal = pb.SignalRequest(instance_id=instance_id, signal=SIGNAL)
    signal.payload.struct_value.fields["by"].string_value = "bench"
    return signal


async def observe_all(
    stub: Stub, ids: Sequence[str], style: str, in_flight: int
) -> tuple[list[Caller], int, float]:
    """Signal the instances, `in_flight` callers at a time; each caller times until it sees
    its instance final. Also the rate the engine completed them at."""
    calls = 0
    gate = asyncio.Semaphore(in_flight)

    async def one(instance_id: str) -> Caller:
        async with gate:
            return await observe(instance_id)

    async def observe(instance_id: str) -> Caller:
        nonlocal calls
        signal = signal_request(instance_id)
        waiting = None
        if style == AWAITING_FIRST:
            # Already waiting when the Signal goes: commit -> seen is the wake-up alone.
            waiting = asyncio.ensure_future(seen_final(instance_id))
            await asyncio.sleep(SETTLE_S)
        started, sent_at = time.perf_counter(), time.time()
        await stub.Signal(signal, timeout=CALL_TIMEOUT_S)
        signalled = time.perf_counter()
        calls += 1
        instance = await (waiting or seen_final(instance_id))
        seen, seen_wall = time.perf_counter(), time.time()
        completed_wall = instance.end_time.ToMilliseconds() / 1000
        return Caller(
            seen - started, signalled - started, seen_wall - completed_wall, sent_at, completed_wall
        )

    async def seen_final(instance_id: str) -> pb.WorkflowInstance:
        nonlocal calls
        if style != POLLING:
            request = pb.AwaitInstanceRequest(instance_id=instance_id)
            while True:
                calls += 1
                reply = await stub.AwaitInstance(request, timeout=CALL_TIMEOUT_S)
                if reply.instance.status in FINAL:
                    return reply.instance
        get = pb.GetStatusRequest(instance_id=instance_id)
        while True:
            calls += 1
            instance = await stub.GetStatus(get, timeout=CALL_TIMEOUT_S)
            if instance.status in FINAL:
                return instance
            await asyncio.sleep(POLL_S)

    callers = await asyncio.gather(*(one(i) for i in ids))
    first_sent = min((c.sent_at for c in callers), default=0.0)
    last_completed = max((c.completed_at for c in callers), default=0.0)
    rate = len(callers) / max(last_completed - first_sent, 1e-3)
    return list(callers), calls, rate


async def measure_observed(stub: Stub, *, count: int, rounds: int, in_flight: int) -> Observed:
    observed = Observed(signals=count, in_flight=min(in_flight, count))
    for round_number in range(rounds):
        # Alternate which style goes first, so neither always meets a warmer sidecar.
        styles = [AWAITING, POLLING, AWAITING_FIRST]
        if round_number % 2:
            styles.reverse()
        for style in styles:
            ids = await start_parked(stub, APPROVE, count)
            observed.signal_bytes = signal_request(ids[0]).SerializeToString()
            callers, calls, rate = await observe_all(stub, ids, style, in_flight)
            observed.add(style, callers, calls, rate)
            log(f"round {round_number + 1}: {style}: {count} observed, {rate:.0f} completions/s")
    return observed


async def measure_w1(stub: Stub, count: int) -> tuple[float, float, float]:
    request = run_request(HOLD)
    timing = await drive(
        lambda _: stub.Run(request, timeout=CALL_TIMEOUT_S), count=count, concurrency=64
    )
    values = sorted(timing.latencies_ms)
    rate = count / timing.elapsed_s
    return rate, percentile(values, 50), percentile(values, 99)


# One call on a channel, run to its end before the streams on a used connection.
Warm = Callable[[grpc.aio.Channel], Awaitable[None]]


async def hold_streams(
    address: str,
    pid: int,
    open_stream: Callable[[grpc.aio.Channel, int], Any],
    count: int,
    stack: AsyncExitStack,
    warm: Warm | None = None,
) -> Held:
    """Open `count` streams (each `open_stream(channel, index)`, read once) on connections of
    their own, each first carrying `warm` when given, and hold them until `stack` closes;
    the server's resident memory before and with them."""
    # A channel of its own per STREAMS_PER_CHANNEL streams, not shared with any other channel
    # to the same address (grpc's global subchannel pool would share one connection).
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(address, options=options)
        for _ in range(0, count, STREAMS_PER_CHANNEL)
    ]
    for channel in channels:
        stack.push_async_callback(channel.close)
    for channel in channels:
        await (warm(channel) if warm is not None else channel.channel_ready())
    calls: list[Any] = []

    def cancel_all() -> None:
        for call in calls:
            call.cancel()

    stack.callback(cancel_all)
    gc.collect()
    await asyncio.sleep(1.0)  # let the server settle after what came before
    before = rss_bytes(pid)
    for start in range(0, count, OPEN_BATCH):
        batch = [
            open_stream(channels[index // STREAMS_PER_CHANNEL], index)
            for index in range(start, min(start + OPEN_BATCH, count))
        ]
        calls.extend(batch)
        await asyncio.gather(*(call.read() for call in batch))
    await asyncio.sleep(1.0)
    return Held(count, before, rss_bytes(pid))


async def hold_both(
    address: str,
    pid: int,
    open_stream: Callable[[grpc.aio.Channel, int], Any],
    count: int,
    stack: AsyncExitStack,
    warm: Warm,
) -> dict[str, Held]:
    """`count` streams on fresh connections, then (those still held, so the second set
    reuses none of the first's memory) `count` more on used ones: streams 0..count-1, then
    count..2*count-1."""
    fresh = await hold_streams(address, pid, open_stream, count, stack)
    log(f"{count} streams held on fresh connections")

    def open_next(channel: grpc.aio.Channel, index: int) -> Any:
        return open_stream(channel, count + index)

    used = await hold_streams(address, pid, open_next, count, stack, warm)
    log(f"{count} more held on used connections")
    return {FRESH: fresh, USED: used}


async def _run_to_end(call: Any) -> None:
    """Read a stream's first message, then cancel it: a call that ended on its connection."""
    await call.read()
    call.cancel()


async def measure_bare_streams(work_dir: Path, count: int) -> dict[str, Held]:
    """The bare grpc.aio server's resident memory before and with `count` held streams on
    each kind of connection: what a held stream costs the transport alone (with no request
    size limit in grpc core, as on the sidecar's API port)."""
    async with echo_process(work_dir, unlimited=True) as server, AsyncExitStack() as stack:

        def open_stream(channel: grpc.aio.Channel, index: int) -> Any:
            hold: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                HOLD_METHOD
            )
            return hold(b"held")

        async def warm(channel: grpc.aio.Channel) -> None:
            await _run_to_end(open_stream(channel, -1))

        return await hold_both(server.address, server.pid, open_stream, count, stack, warm)


async def measure_streams(address: str, stub: Stub, pid: int, *, count: int, w1: int) -> Streams:
    ids = await start_parked(stub, HOLD, 2 * count + 1)
    w1_alone = await measure_w1(stub, w1)

    def open_stream(channel: grpc.aio.Channel, index: int) -> Any:
        watch = pb_grpc.WorkflowHostAPIStub(channel)
        return watch.WatchInstance(pb.WatchInstanceRequest(instance_id=ids[index]))

    async def warm(channel: grpc.aio.Channel) -> None:
        # A WatchInstance that ended: the call whose size the streams after it are given.
        await _run_to_end(open_stream(channel, -1))

    async with AsyncExitStack() as stack:
        held = await hold_both(address, pid, open_stream, count, stack, warm)
        w1_beside = await measure_w1(stub, w1)
    return Streams(held, w1_alone, w1_beside)


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
    if rounds:
        observed.floor_s = await measure_echo_floor(
            work_dir,
            observed.signal_bytes,
            callers=count,
            rounds=rounds,
            in_flight=observed.in_flight,
        )
        log(floor_line(observed))
    if held is not None:
        held.bare = await measure_bare_streams(work_dir, streams)
    return observed, held


def little_line(observed: Observed) -> str:
    """What the engine's rate alone allows (Little's law), whatever observes completions."""
    rate = statistics.median(observed.rates)
    head = f"engine: {rate:.0f} completions/s (median of {len(observed.rates)} rounds); "
    if observed.in_flight >= observed.signals:
        return head + (
            f"{observed.signals} signals sent at once: the last completes "
            f"{observed.signals / rate * 1000:.0f} ms after the first Signal at the least"
        )
    return head + (
        f"{observed.in_flight} in flight: {observed.in_flight / rate * 1000:.0f} ms each on "
        "average (Little's law)"
    )


def floor_line(observed: Observed) -> str:
    """The same bursts on the bare echo server: the transport's own time for them."""
    p50, p99 = _p50_p99(observed.floor_s)
    if observed.in_flight >= observed.signals:
        callers = f"{observed.signals} callers at once"
    else:
        callers = f"{observed.signals} callers, {observed.in_flight} at a time"
    return (
        f"bare grpc.aio echo server, {callers}, {CALLS_EACH} calls each (as Signal, then"
        f" AwaitInstance): p50 {p50:.1f} ms, p99 {p99:.1f} ms, with no work on the server"
    )


def streams_lines(streams: Streams) -> list[str]:
    """Per kind of connection: the sidecar's figure, the bare server's and the difference."""
    lines = []
    for kind in CONNECTIONS:
        held = streams.held[kind]
        line = (
            f"{held.count} WatchInstance streams on {kind} connections: sidecar RSS "
            f"{held.before / 2**20:.1f} MiB -> {held.after / 2**20:.1f} MiB, "
            f"{held.per_stream:.0f} bytes per stream"
        )
        bare = streams.bare.get(kind)
        if bare is not None:
            line += (
                f"; bare grpc.aio server {bare.per_stream:.0f} bytes, the sidecar's own part "
                f"{held.per_stream - bare.per_stream:.0f}"
            )
        lines.append(line)
    verdict = "meets" if streams.bytes_per_stream < TARGET_STREAM_BYTES else "misses"
    lines.append(
        f"the dearer, {streams.bytes_per_stream:.0f} bytes per stream, {verdict} the target "
        f"(under {TARGET_STREAM_BYTES} bytes)"
    )
    return lines


def report(observed: Observed, held: Streams | None) -> str:
    lines = [
        "W3 signal -> observed completion (its parts: the Signal rpc; the completion's commit,"
        " the instance's end_time, -> seen)",
        f"{'':<26} {'':>6} {'observed':>17} {'':>10} {'Signal rpc':>17} {'commit -> seen':>17}",
        f"{'observed by':<26} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'rpcs each':>10}"
        f" {'p50 ms':>8} {'p99 ms':>8} {'p50 ms':>8} {'p99 ms':>8}",
        *(observed.row(style) for style in observed.callers),
    ]
    if observed.rates:
        lines.append(little_line(observed))
    if observed.floor_s:
        lines.append(floor_line(observed))
    if held is not None:
        lines += [
            "",
            *streams_lines(held),
            "W1 Run alone:          {:.0f}/s, p50 {:.1f} ms, p99 {:.1f} ms".format(*held.w1_alone),
            "W1 Run beside streams: {:.0f}/s, p50 {:.1f} ms, p99 {:.1f} ms".format(*held.w1_beside),
        ]
    awaited = sorted(observed.latencies_s.get(AWAITING, []))
    if awaited:
        p99 = percentile(awaited, 99) * 1000
        verdict = "meets" if p99 <= TARGET_P99_MS else "misses"
        line = (
            f"AwaitInstance p99 {p99:.1f} ms {verdict} the {TARGET_P99_MS:.0f} ms target "
            f"(p50 {percentile(awaited, 50) * 1000:.1f} ms)"
        )
        if observed.floor_s:
            floor_p99 = _p50_p99(observed.floor_s)[1]
            line += f"; the bare echo server's p99 for the same bursts: {floor_p99:.1f} ms"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.awaiting", description=__doc__)
    parser.add_argument("--count", type=int, default=500, help="instances signalled at once")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each style")
    parser.add_argument(
        "--in-flight", type=int, default=0, help="callers at a time (0: all --count at once)"
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=10_000,
        help="WatchInstance streams on each kind of connection",
    )
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
