"""`python -m chaos`: run the workload through a fleet while faults are injected; print what held.

python -m chaos                          # 2 minutes, every fault
python -m chaos --duration 600 --rate 20 # the long profile: 10 minutes, 12,000 instances
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from okra_client import OkraClient

from bench.load import percentile
from chaos.checks import Findings, check
from chaos.faults import FAULTS, FaultInjector
from chaos.netns import Topology, unavailable
from chaos.processes import RedisServer, SidecarProcess
from chaos.stub import CountingService, counting_worker
from chaos.workload import KINDS, Workload, fleet_clients

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of workload")
    parser.add_argument("--rate", type=float, default=10.0, help="instances started per second")
    parser.add_argument("--sidecars", type=int, default=2, help="sidecar processes (2 or 3)")
    parser.add_argument("--engine-processes", type=int, default=1, help="engine children each")
    parser.add_argument("--fault-interval", type=float, default=8.0, help="seconds between faults")
    parser.add_argument("--faults", default=",".join(FAULTS), help="which faults, comma-separated")
    parser.add_argument("--claim-idle-ms", type=int, default=30000, help="the sidecars' setting")
    parser.add_argument("--drain", type=float, default=90.0, help="seconds to let instances finish")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, help="keep logs and Redis data here")
    parser.add_argument("--json", action="store_true", help="the findings as JSON")
    return parser


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def report(findings: Findings, faults: Sequence[tuple[float, str]], started: int) -> str:
    def ms(values: Sequence[float], pct: float) -> str:
        return f"{percentile(sorted(values), pct) * 1000:.0f} ms" if values else "-"

    rows = [
        ("instances started", started),
        ("Runs acknowledged", findings.acknowledged),
        ("Runs refused (never acknowledged)", findings.refused),
        ("faults injected", len(faults)),
        ("acknowledged Runs lost", findings.lost),
        ("instances completed twice", findings.completed_twice),
        ("steps run twice", findings.steps_twice),
        ("signals lost or delivered twice", findings.signals_lost_or_twice),
        ("instances failed", findings.failed),
        ("wrong outputs", findings.wrong_output),
        ("instances stuck", findings.stuck),
        ("HTTP calls per task (calls: tasks)", dict(sorted(findings.http_calls.items()))),
        ("worker runs per task (runs: tasks)", dict(sorted(findings.worker_runs.items()))),
        (
            "completion p50 / p99",
            f"{ms(findings.completion_s, 50)} / {ms(findings.completion_s, 99)}",
        ),
        (
            "recovery: started <=2 s before a fault, p50 / p99",
            f"{ms(findings.after_fault_s, 50)} / {ms(findings.after_fault_s, 99)}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


async def run(
    args: argparse.Namespace, work_dir: Path, kinds: Sequence[str], topology: Topology | None
) -> Findings:
    service = CountingService()
    await service.start("0.0.0.0" if topology else "127.0.0.1")
    if topology is None:
        redis = RedisServer(work_dir)
    else:
        redis = RedisServer(
            work_dir,
            host=topology.redis_host(),
            prefix=topology.exec_prefix(topology.redis_ns),
        )
    await redis.start()
    env = {
        "OKRA_HTTP_HOSTS": f"chaos.stub={service.address}",
        "OKRA_DURABILITY": "aof",
        "OKRA_ENGINE_PROCESSES": str(args.engine_processes),
        "OKRA_CLAIM_IDLE_MS": str(args.claim_idle_ms),
        "OKRA_TASK_LEASE_MS": "5000",
        "OKRA_LOG_LEVEL": "WARNING",
    }
    sidecars = [_sidecar(i, work_dir, env, redis, service, topology) for i in range(args.sidecars)]
    worker_runs: Counter[str] = Counter()
    clients: list[OkraClient] = []
    try:
        for sidecar in sidecars:
            await sidecar.start()
        log(f"redis {redis.url}, sidecars {[s.address for s in sidecars]}, stub {service.address}")
        worker = counting_worker(sidecars[0].address, worker_runs)
        working = asyncio.create_task(worker.run())
        clients = fleet_clients([s.address for s in sidecars])
        workload = Workload(clients=clients, rate_per_s=args.rate, seed=args.seed)
        injector = FaultInjector(
            redis=redis,
            sidecars=sidecars,
            kinds=kinds,
            interval_s=args.fault_interval,
            seed=args.seed,
            topology=topology,
        )
        log(f"{args.duration:g}s of workload at {args.rate:g}/s ({', '.join(KINDS)})")
        await asyncio.gather(workload.run(args.duration), injector.run(args.duration))
        for at, what in injector.done:
            log(f"fault at {time.strftime('%H:%M:%S', time.localtime(at))}: {what}")
        log(f"draining (up to {args.drain:g}s)")
        findings = await check(
            clients[0],
            workload.started,
            http_calls=service.calls,
            worker_runs=worker_runs,
            faults=[at for at, _ in injector.done],
            drain_s=args.drain,
        )
        worker.stop()
        await working
        print(report(findings, injector.done, len(workload.started)))
        return findings
    finally:
        for client in clients:
            await client.close()
        for sidecar in sidecars:
            await sidecar.stop()
        await redis.stop()
        await service.stop()


def _sidecar(
    index: int,
    work_dir: Path,
    env: dict[str, str],
    redis: RedisServer,
    service: CountingService,
    topology: Topology | None,
) -> SidecarProcess:
    name = f"sidecar-{index}"
    if topology is None:
        return SidecarProcess(name, work_dir, env, redis_url=redis.url)
    # In its own namespace: clients reach it on its link to the driver, and Redis over the
    # link a partition cuts. Its port is on that link, not loopback, and knowingly plaintext.
    stub = f"{topology.driver_host_for(index)}:{service.port}"
    return SidecarProcess(
        name,
        work_dir,
        {**env, "OKRA_HTTP_HOSTS": f"chaos.stub={stub}", "OKRA_INSECURE": "true"},
        redis_url=f"redis://{topology.redis_host_for(index)}:{redis.port}",
        host=topology.sidecar_host(index),
        prefix=topology.exec_prefix(topology.sidecar_ns[index]),
    )


def choose_faults(text: str) -> tuple[list[str], bool]:
    """The faults to inject, and whether the namespaces for a partition are needed.

    Without root or `ip netns` the partition is left out, saying why.
    """
    kinds = [k for k in text.split(",") if k]
    if "partition" not in kinds:
        return kinds, False
    reason = unavailable()
    if reason is None:
        return kinds, True
    log(f"partition fault skipped: {reason}")
    return [k for k in kinds if k != "partition"], False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = set(args.faults.split(",")) - set(FAULTS) - {""}
    if unknown:
        print(f"error: unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
        return 2
    kinds, partitioned = choose_faults(args.faults)
    with contextlib.ExitStack() as stack:
        work_dir = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work_dir.mkdir(parents=True, exist_ok=True)
        topology = None
        if partitioned:
            topology = Topology(args.sidecars)
            stack.callback(topology.close)
            topology.create()
            # Before asyncio or gRPC start a thread: a thread keeps the namespace it began in.
            topology.enter_driver()
            log(f"network namespaces: driver, redis and {args.sidecars} sidecars, no route out")
        findings = asyncio.run(run(args, work_dir, kinds, topology))
    failures = findings.failures()
    if args.json:
        print(json.dumps({"failures": failures, "examples": findings.examples[:20]}, indent=2))
    for example in findings.examples[:20]:
        print(f"  {example}", file=sys.stderr)
    if failures:
        print(f"FAILED: {', '.join(f'{n} {name}' for name, n in failures.items())}")
        return 1
    print("passed: nothing lost, nothing twice, nothing stuck")
    return 0
