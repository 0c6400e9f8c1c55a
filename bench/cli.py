"""`python -m bench`: start the servers, run the selected workloads, print the results."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from bench.cleanup import delete_prefixed_keys
from bench.cpu import CpuMeter
from bench.load import Result, combine
from bench.processes import ServerProcess, ServerStartError, echo_process, sidecar_process
from bench.progress import ProgressTimeoutError
from bench.report import (
    RPC_ROWS,
    cluster_ratio,
    format_cluster_ratio,
    format_medians,
    format_ratios,
    format_table,
    rounds_json,
    to_json,
)
from bench.workloads import (
    HOLD,
    SPIN,
    BenchError,
    Client,
    measure_completion,
    measure_echo,
    measure_get_status,
    measure_run,
    measure_signal,
    run_request,
    start_instances,
    warm_up,
)
from okra_sidecar.store.embedded import EmbeddedRedisError
from okra_sidecar.store.local_cluster import LocalCluster

WORKLOADS = ("echo", "W1", "W2", "W3", "W4")
# --redis-cluster's local Cluster: the smallest with a master per third of the slots.
CLUSTER_MASTERS = 3
FULL_COUNTS = {"echo": 5000, "W1": 2000, "W2": 1000, "W3": 500, "W4": 5000}
QUICK_COUNTS = {"echo": 1000, "W1": 300, "W2": 200, "W3": 100, "W4": 1000}
# The rows whose ratio to echo is reported; selecting one runs the echo baseline too.
NEEDS_ECHO = ("W1", "W4")


@dataclass(frozen=True)
class Plan:
    """What to run: workload name -> number of calls (or instances), and how."""

    counts: dict[str, int]
    concurrency: int = 64
    redis_url: str | None = None
    # Engine child processes of the sidecar (its engineProcesses setting).
    engine_processes: int = 1
    # Instances of bench.spin (an expression that never ends) started right before W2.
    hostile: int = 0
    # Also run every round against a local Redis Cluster of this many masters (0: not).
    cluster_masters: int = 0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(WORKLOADS)
    chosen = {w.strip().upper() for w in text.split(",") if w.strip()}
    unknown = chosen - {w.upper() for w in WORKLOADS}
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown workload {sorted(unknown)[0]!r}; choose from {', '.join(WORKLOADS)}"
        )
    if chosen & set(NEEDS_ECHO):
        chosen.add("ECHO")
    return [w for w in WORKLOADS if w.upper() in chosen]


class EchoBaseline:
    """The echo server measured again around each rpc workload, against one running server.

    On a shared machine the speed moves between minutes; an echo rate taken once, before the
    sidecar started, made the ratios swing by ten points or more. Each ratio row divides by
    the mean of the echo rates measured right before and right after it instead.
    """

    def __init__(self, channel: grpc.aio.Channel, *, count: int, plan: Plan, pid: int) -> None:
        self._channel = channel
        self._count = count
        self._concurrency = plan.concurrency
        self._meter = CpuMeter.for_process(pid)
        self._rows: list[Result] = []

    async def measure(self) -> float:
        row = await measure_echo(
            self._channel,
            count=self._count,
            concurrency=self._concurrency,
            meter=self._meter,
            payload=run_request(HOLD).SerializeToString(),
        )
        self._rows.append(row)
        return row.rate

    def row(self) -> Result:
        """Every echo measurement of the round as the table's one echo row."""
        return combine(self._rows)


async def around(
    baseline: EchoBaseline | None, workload: Callable[[], Awaitable[list[Result]]]
) -> list[Result]:
    """Run a workload between two echo measurements; its rpc rows keep their mean."""
    if baseline is None:
        return await workload()
    before = await baseline.measure()
    rows = await workload()
    after = await baseline.measure()
    mean = (before + after) / 2
    return [replace(r, baseline_rate=mean) if r.name in RPC_ROWS else r for r in rows]


async def run_workloads(client: Client, plan: Plan, baseline: EchoBaseline | None) -> list[Result]:
    """The selected W1-W4, in order, against one ready sidecar."""
    counts = plan.counts
    results: list[Result] = []
    completed_ids: list[str] = []
    if "W1" in counts:
        log(f"W1: {counts['W1']} Runs of a workflow that waits")
        results += await around(baseline, lambda: _one(measure_run(client, counts["W1"])))
    if "W2" in counts:
        if plan.hostile:
            log(f"W2 beside {plan.hostile} instances of {SPIN}, each stopped over its budget")
            await start_instances(client, SPIN, plan.hostile)
        log(f"W2: {counts['W2']} Runs of three set tasks, until all complete")
        row, completed_ids = await measure_completion(client, counts["W2"])
        results.append(row)
    if "W3" in counts:
        log(f"W3: {counts['W3']} instances parked in a listen, then signalled")
        results += await around(baseline, lambda: measure_signal(client, counts["W3"]))
    if "W4" in counts:
        log(f"W4: {counts['W4']} GetStatus calls")
        status = measure_get_status(client, counts["W4"], completed_ids)
        results += await around(baseline, lambda: _one(status))
    return results


async def _one(row: Awaitable[Result]) -> list[Result]:
    return [await row]


async def run_sidecar(
    plan: Plan,
    work_dir: Path,
    echo: ServerProcess | None,
    *,
    own_redis_url: str | None = None,
    redis_pids: tuple[int, ...] = (),
) -> list[Result]:
    """The workloads against one sidecar: on `own_redis_url` (a Redis the bench started and
    stops, its processes `redis_pids`) when given, else on plan.redis_url, else on the
    sidecar's embedded Redis."""
    # A shared Redis gets keys under a prefix of their own, removed once the sidecar stopped.
    prefix = f"okra-bench-{uuid.uuid4().hex[:8]}:" if plan.redis_url and not own_redis_url else None
    started = False
    try:
        env = {"OKRA_ENGINE_PROCESSES": str(plan.engine_processes)}
        if plan.engine_processes == 0:
            # In-process turns cannot be held to budgets; the sidecar wants them lifted.
            env |= {"OKRA_EXPRESSION_TIMEOUT_MS": "0", "OKRA_TURN_TIMEOUT_MS": "0"}
        async with (
            sidecar_process(
                work_dir, redis_url=own_redis_url or plan.redis_url, key_prefix=prefix, env=env
            ) as server,
            grpc.aio.insecure_channel(server.address) as channel,
            contextlib.AsyncExitStack() as stack,
        ):
            started = True
            baseline = None
            if echo is not None:
                echo_channel = await stack.enter_async_context(
                    grpc.aio.insecure_channel(echo.address)
                )
                # Half the echo count each time: every ratio row brings two measurements.
                count = max(1, plan.counts["echo"] // 2)
                baseline = EchoBaseline(echo_channel, count=count, plan=plan, pid=echo.pid)
            client = Client(
                stub=pb_grpc.WorkflowHostAPIStub(channel),
                concurrency=plan.concurrency,
                meter=CpuMeter.for_process(server.pid, redis_pids=redis_pids),
            )
            log(
                f"sidecar ready on {server.address} with {plan.engine_processes} engine "
                "process(es) (cpu%: server = the serving process, engine = its engine "
                "children together); warming up"
            )
            await warm_up(client)
            rows = await run_workloads(client, plan, baseline)
            return rows if baseline is None else [baseline.row(), *rows]
    finally:
        if started and plan.redis_url and prefix:
            removed = await delete_prefixed_keys(plan.redis_url, prefix)
            log(
                f"removed {removed} keys under {prefix}"
                if removed >= 0
                else f"warning: could not remove the keys under {prefix}"
            )


async def run_echo_only(plan: Plan, work_dir: Path) -> list[Result]:
    async with echo_process(work_dir) as server:
        log(f"echo: {plan.counts['echo']} calls at concurrency {plan.concurrency}")
        async with grpc.aio.insecure_channel(server.address) as channel:
            baseline = EchoBaseline(channel, count=plan.counts["echo"], plan=plan, pid=server.pid)
            await baseline.measure()
            return [baseline.row()]


async def run_bench(plan: Plan, *, on_cluster: bool = False) -> list[Result]:
    """Every selected workload, each server in its own process, in a scratch directory.

    With the echo baseline and rpc workloads both selected, the echo server runs beside the
    sidecar and is measured around each rpc workload (EchoBaseline). `on_cluster`: against a
    local Redis Cluster of plan.cluster_masters masters, started here and stopped after.
    """
    with tempfile.TemporaryDirectory(prefix="okra-bench-") as scratch:
        work_dir = Path(scratch)
        if not any(w in plan.counts for w in WORKLOADS if w != "echo"):
            return await run_echo_only(plan, work_dir)
        async with contextlib.AsyncExitStack() as stack:
            cluster_url = None
            redis_pids: tuple[int, ...] = ()
            if on_cluster:
                cluster = LocalCluster(data_dir=work_dir / "cluster", masters=plan.cluster_masters)
                cluster_url = (await stack.enter_async_context(cluster)).url
                redis_pids = tuple(n.process.pid for n in cluster.nodes if n.process is not None)
                log(f"Redis Cluster of {plan.cluster_masters} masters ready at {cluster_url}")
            echo = None
            if "echo" in plan.counts:
                echo = await stack.enter_async_context(echo_process(work_dir))
                log(f"echo server ready on {echo.address}: measured around each rpc workload")
            return await run_sidecar(
                plan, work_dir, echo, own_redis_url=cluster_url, redis_pids=redis_pids
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure the okra sidecar, run as its own process, against a grpc.aio echo.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts (about 10 s)")
    parser.add_argument(
        "--only",
        type=parse_only,
        default=list(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)} (W1 and W4 bring echo along)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (64)")
    parser.add_argument("--redis-url", help="use this Redis instead of an embedded one")
    parser.add_argument(
        "--engine-processes",
        type=int,
        default=1,
        help="the sidecar's engineProcesses: 0 takes turns in the serving process (1)",
    )
    parser.add_argument(
        "--hostile",
        type=int,
        default=0,
        help="start this many instances of an endless expression right before W2 (0)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the whole run (fresh servers) and report the median ratios (1)",
    )
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        help="also run each round against a local Redis Cluster of 3 masters, and compare",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    counts = QUICK_COUNTS if args.quick else FULL_COUNTS
    if args.redis_cluster and not {"W1", "W2", "W3", "W4"} & set(args.only):
        print("error: --redis-cluster needs one of W1-W4 in --only", file=sys.stderr)
        return 2
    plan = Plan(
        counts={w: counts[w] for w in args.only},
        concurrency=args.concurrency,
        redis_url=args.redis_url,
        engine_processes=args.engine_processes,
        hostile=args.hostile,
        cluster_masters=CLUSTER_MASTERS if args.redis_cluster else 0,
    )
    if args.rounds < 1:
        print("error: --rounds must be at least 1", file=sys.stderr)
        return 2
    rounds: list[list[Result]] = []
    cluster_rounds: list[list[Result]] = []
    for number in range(1, args.rounds + 1):
        if args.rounds > 1:
            log(f"round {number} of {args.rounds}")
        try:
            results = asyncio.run(run_bench(plan))
            cluster = (
                asyncio.run(run_bench(plan, on_cluster=True)) if plan.cluster_masters else None
            )
        except (ServerStartError, BenchError, ProgressTimeoutError, EmbeddedRedisError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        rounds.append(results)
        if cluster is not None:
            cluster_rounds.append(cluster)
        if not args.json:
            print(format_round(results, cluster, plan))
    if args.json:
        settings = {
            "counts": plan.counts,
            "concurrency": plan.concurrency,
            "redis": "external" if plan.redis_url else "embedded",
            "engineProcesses": plan.engine_processes,
            "hostile": plan.hostile,
            "clusterMasters": plan.cluster_masters,
        }
        if len(rounds) == 1:
            print(to_json(rounds[0], settings, cluster_rounds[0] if cluster_rounds else None))
        else:
            print(rounds_json(rounds, settings, cluster_rounds))
    elif len(rounds) > 1:
        print(format_medians(rounds, cluster_rounds))
    return 0


def format_round(results: list[Result], cluster: list[Result] | None, plan: Plan) -> str:
    """One round's table and ratios; with `cluster`, its table and ratios after them."""
    parts = [format_table(results)]
    if ratios := format_ratios(results):
        parts.append(ratios)
    if cluster is not None:
        where = "an external Redis" if plan.redis_url else "the embedded Redis"
        parts[0] = f"Single primary ({where}):\n{parts[0]}"
        parts.append(f"Redis Cluster ({plan.cluster_masters} masters):\n{format_table(cluster)}")
        if ratios := format_ratios(cluster):
            parts.append(ratios)
        if versus := cluster_ratio(results, cluster):
            parts.append(format_cluster_ratio(versus))
    return "\n\n".join(parts) + "\n"
