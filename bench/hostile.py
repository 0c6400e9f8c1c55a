"""`python -m bench.hostile`: the normal workload's pace beside the hostile-definitions set.

One sidecar as users run it (one engine process, its spare and the slow lane), then rounds of
W2 (Runs of `bench.steps` until all complete) right after the hostile set starts, between two
runs of W2 alone. The hostile set: instances of the jq expressions of the reliability findings
(endless recursion, `repeat`, a reduce over 10^12, a 10^9-element array), HTTP calls to a
service that never answers (a year's timeout, enough of them to take every effect slot), and
YAML and JSON bombs sent to SetPolicies while W2 runs. Each round's figure is the rate beside
over the mean of the rates alone just before and just after, all on the same sidecar within a
minute or so; the run fails when the median is under `--target` (normal instances slowed by
more than 20%), or when a hostile instance does not end failed or a bomb is not refused.

    python -m bench.hostile                 # 3 rounds of 2000 instances
    python -m bench.hostile --rounds 5 --count 5000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from aiohttp import web
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.admin.v1 import admin_pb2_grpc as admin_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from bench.cpu import CpuMeter
from bench.load import percentile
from bench.processes import ServerStartError, sidecar_process
from bench.progress import ProgressTimeoutError, wait_until_none
from bench.tree_cpu import TreeCpuMeter
from bench.workloads import (
    NOT_FINISHED,
    BenchError,
    Client,
    measure_completion,
    start_instances,
    warm_up,
)
from fuzz.generate import POLICY_TEXTS
from fuzz.run import AUDIENCE, ISSUER, SECRET, admin_token

if TYPE_CHECKING:
    from okra_client.gen.admin.v1.admin_pb2_grpc import (
        PolicyAdminServiceAsyncStub as AdminStub,
    )
else:
    AdminStub = admin_grpc.PolicyAdminServiceStub

__all__ = ["main"]

JQ_NAMES = ("recursion", "repeat", "reduce", "range")
HANG = "bench.hostile-hang.1.0.0"
HANG_HOST = "bench.hang"
# More than the sidecar's effect slots (64): every one of them is taken by a call that hangs.
HANG_CALLS = 80
# The policy texts the fuzzer sends that must be refused: deep brackets, deep YAML and JSON,
# an alias bomb (the first two are well-formed sets).
BOMBS = POLICY_TEXTS[2:6]
TARGET = 0.8


@dataclass(frozen=True)
class Round:
    alone_per_s: float
    beside_per_s: float
    alone_p99_ms: float
    beside_p99_ms: float

    @property
    def ratio(self) -> float:
        return self.beside_per_s / self.alone_per_s if self.alone_per_s else 0.0


class HangingService:
    """An HTTP service that accepts every request and never answers it."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._released = asyncio.Event()
        self.address = ""

    async def _hang(self, request: web.Request) -> web.Response:
        await self._released.wait()  # set at stop, so that the server can shut down
        return web.Response(status=503)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/never", self._hang)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.address = f"127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def send_bombs(admin: AdminStub) -> None:
    """Every bomb must be refused as INVALID_ARGUMENT, and quickly enough not to matter."""
    metadata = (("authorization", f"Bearer {admin_token()}"),)
    for text in BOMBS:
        try:
            await admin.SetPolicies(
                admin_pb.SetPoliciesRequest(text=text), metadata=metadata, timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                continue
            answer = f"{exc.code().name}: {exc.details()}"
            raise BenchError(f"a policy bomb was answered {answer}") from exc
        raise BenchError("a policy bomb was accepted")


def jq_workflows(names: Sequence[str]) -> list[str]:
    return [f"bench.hostile-{name}.1.0.0" for name in names]


async def start_hostile(
    client: Client, jq: Sequence[str], each: int
) -> tuple[list[str], list[str]]:
    """The hostile instances: those that must end failed, and the hanging calls."""
    failing: list[str] = []
    for workflow_id in jq:
        ids, _ = await start_instances(client, workflow_id, each)
        failing += ids
    hanging, _ = await start_instances(client, HANG, HANG_CALLS)
    return failing, hanging


async def end_hostile(
    client: Client, jq: Sequence[str], failing: list[str], hanging: list[str]
) -> None:
    """Wait until every hostile expression has failed its instance, and cancel the calls."""
    stub = client.stub
    for workflow_id in jq:
        await wait_until_none(stub, workflow_id, NOT_FINISHED, count=len(failing))
    for instance_id in failing:
        status = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
        if status.status != pb.WORKFLOW_STATUS_FAILED:
            name = pb.WorkflowStatus.Name(status.status)
            raise BenchError(f"hostile instance {instance_id} ({status.workflow_id}) is {name}")
    for instance_id in hanging:
        await stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="bench.hostile"))


async def measure(args: argparse.Namespace, work_dir: Path) -> list[Round]:
    service = HangingService()
    await service.start()
    env = {
        "OKRA_HTTP_HOSTS": f"{HANG_HOST}={service.address}",
        "OKRA_AUTH_MODE": "optional",
        "OKRA_AUTH_ISSUER": ISSUER,
        "OKRA_AUTH_AUDIENCE": AUDIENCE,
        "OKRA_AUTH_HS256_SECRET": SECRET,
    }
    rounds: list[Round] = []
    try:
        async with (
            sidecar_process(work_dir, env=env) as server,
            grpc.aio.insecure_channel(server.address) as channel,
        ):
            client = Client(
                stub=pb_grpc.WorkflowHostAPIStub(channel),
                concurrency=args.concurrency,
                meter=CpuMeter.for_process(server.pid),
            )
            admin = AdminStub(channel)
            jq = jq_workflows(args.jq)
            tree = TreeCpuMeter(server.pid)
            await warm_up(client)
            alone, _ = await measure_completion(client, args.count)
            for number in range(1, args.rounds + 1):
                failing, hanging = await start_hostile(client, jq, args.each)
                bombs = asyncio.create_task(send_bombs(admin))
                before = tree.sample()
                beside, _ = await measure_completion(client, args.count)
                cpu_beside = TreeCpuMeter.describe(before, tree.sample())
                await bombs
                await end_hostile(client, jq, failing, hanging)
                # Alone again once the hostile set is gone: the round compares the rate beside
                # it with the mean of the rates just before and just after, so that a host
                # getting busier or quieter meanwhile weighs on both sides alike.
                before = tree.sample()
                after, _ = await measure_completion(client, args.count)
                cpu_alone = TreeCpuMeter.describe(before, tree.sample())
                done = Round(
                    (alone.rate + after.rate) / 2,
                    beside.rate,
                    max(percentile(alone.sorted_ms, 99), percentile(after.sorted_ms, 99)),
                    percentile(beside.sorted_ms, 99),
                )
                alone = after
                rounds.append(done)
                log(
                    f"round {number}: alone {done.alone_per_s:.0f}/s (p99 "
                    f"{done.alone_p99_ms:.0f} ms), beside the hostile set "
                    f"{done.beside_per_s:.0f}/s (p99 {done.beside_p99_ms:.0f} ms): "
                    f"{done.ratio:.0%}"
                )
                if args.cpu:
                    log(f"  CPU beside: {cpu_beside}\n  CPU alone after: {cpu_alone}")
    finally:
        await service.stop()
    return rounds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hostile", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=3, help="alone/beside pairs (3)")
    parser.add_argument("--count", type=int, default=2000, help="W2 instances each time (2000)")
    parser.add_argument("--each", type=int, default=2, help="instances per hostile jq (2)")
    parser.add_argument(
        "--jq",
        type=lambda text: [n for n in text.split(",") if n],
        default=list(JQ_NAMES),
        help=f"which hostile expressions, comma-separated ({','.join(JQ_NAMES)})",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (64)")
    parser.add_argument(
        "--cpu", action="store_true", help="print the sidecar's CPU by process role per run"
    )
    parser.add_argument("--work-dir", type=Path, help="keep the sidecar's log and data here")
    parser.add_argument(
        "--target", type=float, default=TARGET, help="least median ratio beside/alone (0.8)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.ExitStack() as stack:
        work_dir = args.work_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="okra-hostile-"))
        )
        work_dir.mkdir(parents=True, exist_ok=True)
        try:
            rounds = asyncio.run(measure(args, work_dir))
        except (ServerStartError, BenchError, ProgressTimeoutError) as exc:
            print(f"FAILED: {exc}")
            return 1
    ratio = statistics.median(r.ratio for r in rounds)
    figures = ", ".join(f"{r.ratio:.0%}" for r in rounds)
    print(
        f"W2 beside the hostile set / alone: median {ratio:.0%} over {len(rounds)} rounds "
        f"({figures}); target {args.target:.0%}"
    )
    if ratio < args.target:
        print(f"FAILED: normal instances slowed by {1 - ratio:.0%} beside the hostile set")
        return 1
    print("passed: the hostile set did not slow the normal instances by more than the target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
