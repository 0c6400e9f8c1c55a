"""`python -m bench.instructions`: CPU instructions per call, counted by callgrind.

Rates on a shared 2-core machine move by a third from one minute to the next, and even the
ratio to the echo server by ten points. Instruction counts do not: the same code counts the
same within a few percent whatever else the machine does. This runs each server under
`valgrind --tool=callgrind` with counting off, drives it with the bench's client, and counts
only around the measured calls (`callgrind_control`):

- the echo server, per call;
- the sidecar's serving process, per Run (W1's workflow), per GetStatus and per Signal (W3's
  workflow, to instances parked in its `listen`);
- its engine child, per Run, until every instance has had its first turn;
- the serving process at rest, per second: its background loops (timers, orphan claims, the
  reconciler, heartbeats) wake on the clock, and under callgrind a call takes about fifty times
  longer, so they count far more per call than in a real run. Each per-call count is also
  given without them: the at-rest rate times the counted window's length, subtracted.

With `--redis-cluster` the sidecar runs on a local Redis Cluster of three masters instead of
its embedded Redis. The client and redis-server are not counted. Counts are per call; valgrind
makes the servers about fifty times slower, so the counts use small batches. Needs valgrind
(Debian package `valgrind`); without it the command says so and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from google.protobuf import struct_pb2
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from bench.cpu import child_pids, process_name
from bench.echo import echo_caller
from bench.load import drive
from bench.processes import echo_process, sidecar_process
from bench.progress import wait_until_none
from bench.workloads import APPROVE, HOLD, NOT_FINISHED, NOT_STARTED, SIGNAL, run_request
from okra_sidecar.store.local_cluster import LocalCluster

if TYPE_CHECKING:
    from okra_client.gen.workflow.v1.workflow_pb2_grpc import WorkflowHostAPIAsyncStub

WARM_UP_CALLS = 200
# Under valgrind every server is slow to start: the sidecar loads its definitions and Redis.
START_TIMEOUT_S = 300.0
# How long the serving process is counted at rest, for its background loops' rate.
AT_REST_S = 10.0


@dataclass(frozen=True)
class Count:
    name: str
    instructions_per_call: float
    # The part of it the process's background loops would have taken at rest in the same
    # window (None where not estimated: the echo server and the engine child).
    at_rest_per_call: float | None = None

    @property
    def net_per_call(self) -> float | None:
        """Instructions per call without the background loops' estimated share."""
        if self.at_rest_per_call is None:
            return None
        return self.instructions_per_call - self.at_rest_per_call


@dataclass(frozen=True)
class Window:
    """What one process executed over one counted window, and how long the window lasted."""

    instructions: int
    seconds: float

    def per_call(self, name: str, calls: int, at_rest_per_s: float | None = None) -> Count:
        at_rest = None if at_rest_per_s is None else at_rest_per_s * self.seconds / calls
        return Count(name, self.instructions / calls, at_rest)


def callgrind_launcher(out_dir: Path) -> list[str]:
    """valgrind for the server and its engine children; redis-server runs natively."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--trace-children=yes",
        "--trace-children-skip=*redis-server*",
        f"--callgrind-out-file={out_dir}/callgrind.%p",
    ]


def control(pid: int, *commands: str) -> None:
    """Send callgrind_control commands (-i on, -z, -d, ...) to one counted process."""
    for command in commands:
        subprocess.run(
            ["callgrind_control", *command.split(), str(pid)], check=True, capture_output=True
        )


def last_dump(out_dir: Path, pid: int) -> int:
    """Instructions in the newest dump (`callgrind_control -d`) of a process."""
    parts = sorted(out_dir.glob(f"callgrind.{pid}.*"), key=lambda p: int(p.suffix[1:]))
    for line in parts[-1].read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {parts[-1]}")


async def counted(
    out_dir: Path, pids: Sequence[int], work: Callable[[], Awaitable[object]]
) -> list[int]:
    """Instructions each process executed while `work` ran."""
    for pid in pids:
        control(pid, "-i on", "-z")
    await work()
    for pid in pids:
        control(pid, "-d", "-i off")
    return [last_dump(out_dir, pid) for pid in pids]


async def timed(out_dir: Path, pid: int, work: Callable[[], Awaitable[object]]) -> Window:
    """Instructions one process executed while `work` ran, and the window's length."""
    started = time.monotonic()
    [instructions] = await counted(out_dir, [pid], work)
    return Window(instructions, time.monotonic() - started)


async def count_echo(work_dir: Path, calls: int, concurrency: int) -> list[Count]:
    out_dir = work_dir / "echo-callgrind"
    out_dir.mkdir()
    launcher = callgrind_launcher(out_dir)
    async with (
        echo_process(work_dir, launcher=launcher, start_timeout_s=START_TIMEOUT_S) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        call = echo_caller(channel, run_request(HOLD).SerializeToString())
        await drive(call, count=WARM_UP_CALLS, concurrency=concurrency)
        [server_ir] = await counted(
            out_dir, [server.pid], lambda: drive(call, count=calls, concurrency=concurrency)
        )
    return [Count("echo server, per call", server_ir / calls)]


async def count_sidecar(
    work_dir: Path, calls: int, concurrency: int, *, redis_url: str | None = None
) -> list[Count]:
    out_dir = work_dir / "sidecar-callgrind"
    out_dir.mkdir()
    # One engine child and no spare: the child counted is the one taking the turns.
    # One engine child, the one counted: no spare, no slow lane.
    env = {
        "OKRA_ENGINE_PROCESSES": "1",
        "OKRA_ENGINE_SPARE": "false",
        "OKRA_SLOW_EXPRESSION_MS": "0",
    }
    async with (
        sidecar_process(
            work_dir,
            redis_url=redis_url,
            env=env,
            launcher=callgrind_launcher(out_dir),
            start_timeout_s=START_TIMEOUT_S,
        ) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.WorkflowHostAPIStub(channel)
        [engine] = [pid for pid in child_pids(server.pid) if "redis" not in process_name(pid)]
        request = run_request(HOLD)
        warm = await drive(
            lambda _: stub.Run(request), count=WARM_UP_CALLS, concurrency=concurrency
        )
        await wait_until_none(stub, HOLD, NOT_STARTED)

        # The serving process counts the Runs alone; the engine child counts until every
        # instance has had its first turn (the progress polling would count in the former).
        for pid in (server.pid, engine):
            control(pid, "-i on", "-z")
        started = time.monotonic()
        await drive(lambda _: stub.Run(request), count=calls, concurrency=concurrency)
        control(server.pid, "-d", "-i off")
        run = Window(last_dump(out_dir, server.pid), time.monotonic() - started)
        await wait_until_none(stub, HOLD, NOT_STARTED, count=calls)
        control(engine, "-d", "-i off")
        engine_ir = last_dump(out_dir, engine)
        ids = [reply.instance_id for reply in warm.replies]
        gets = [pb.GetStatusRequest(instance_id=i) for i in ids]
        status = await timed(
            out_dir,
            server.pid,
            lambda: drive(
                lambda i: stub.GetStatus(gets[i % len(gets)]), count=calls, concurrency=concurrency
            ),
        )
        signals = await signal_requests(stub, calls, concurrency)
        signal = await timed(
            out_dir,
            server.pid,
            lambda: drive(lambda i: stub.Signal(signals[i]), count=calls, concurrency=concurrency),
        )
        # At rest: once the signalled instances have finished, nothing but the loops runs.
        await wait_until_none(stub, APPROVE, NOT_FINISHED, count=calls)
        rest = await timed(out_dir, server.pid, lambda: asyncio.sleep(AT_REST_S))
    at_rest_per_s = rest.instructions / rest.seconds
    return [
        run.per_call("sidecar serving process, per Run", calls, at_rest_per_s),
        Count("sidecar engine child, per Run (its first turn)", engine_ir / calls),
        status.per_call("sidecar serving process, per GetStatus", calls, at_rest_per_s),
        signal.per_call("sidecar serving process, per Signal", calls, at_rest_per_s),
        Count("sidecar serving process at rest, per second", at_rest_per_s),
    ]


async def signal_requests(
    stub: WorkflowHostAPIAsyncStub, calls: int, concurrency: int
) -> list[pb.SignalRequest]:
    """W3's Signals, one each to `calls` instances parked in the approve workflow's `listen`
    (started and parked here, uncounted)."""
    request = run_request(APPROVE)
    started = await drive(lambda _: stub.Run(request), count=calls, concurrency=concurrency)
    await wait_until_none(stub, APPROVE, NOT_STARTED, count=calls)
    payload = struct_pb2.Value()
    payload.struct_value.fields["by"].string_value = "bench"
    return [
        pb.SignalRequest(instance_id=reply.instance_id, signal=SIGNAL, payload=payload)
        for reply in started.replies
    ]


def format_counts(counts: Sequence[Count]) -> str:
    """A table of the counts (millions), with each serving-process count also given without
    its at-rest loops' share, and the echo server's ratios to the serving process."""
    width = max(len(c.name) for c in counts)
    lines = [f"{'instructions per call':<{width}}  millions  without at-rest loops"]
    lines.append("-" * (width + 33))
    for c in counts:
        net = "" if c.net_per_call is None else f"  {c.net_per_call / 1e6:8.3f}"
        lines.append(f"{c.name:<{width}}  {c.instructions_per_call / 1e6:8.3f}{net}")
    by_name = {c.name: c.instructions_per_call for c in counts}
    echo = by_name["echo server, per call"]
    lines.append("")
    lines.append(
        "echo / serving process: Run {:.0%}, GetStatus {:.0%}".format(
            echo / by_name["sidecar serving process, per Run"],
            echo / by_name["sidecar serving process, per GetStatus"],
        )
    )
    return "\n".join(lines)


async def measure(calls: int, concurrency: int, *, cluster: bool = False) -> list[Count]:
    with tempfile.TemporaryDirectory(prefix="okra-instructions-") as scratch:
        work_dir = Path(scratch)
        print(f"echo server under callgrind: {calls} calls", file=sys.stderr, flush=True)
        counts = await count_echo(work_dir, calls, concurrency)
        print(
            f"sidecar under callgrind: {calls} Runs, {calls} GetStatus, {calls} Signals,"
            f" {AT_REST_S:.0f} s at rest",
            file=sys.stderr,
            flush=True,
        )
        if not cluster:
            return counts + await count_sidecar(work_dir, calls, concurrency)
        async with LocalCluster(data_dir=work_dir / "cluster", masters=3) as local:
            print(f"on a Redis Cluster of 3 masters: {local.url}", file=sys.stderr, flush=True)
            return counts + await count_sidecar(work_dir, calls, concurrency, redis_url=local.url)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="counted calls of each kind")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (64)")
    parser.add_argument(
        "--redis-cluster", action="store_true", help="on a local Redis Cluster of 3 masters"
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("error: valgrind is not installed (Debian: apt install valgrind)", file=sys.stderr)
        return 2
    print(
        format_counts(
            asyncio.run(measure(args.calls, args.concurrency, cluster=args.redis_cluster))
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
