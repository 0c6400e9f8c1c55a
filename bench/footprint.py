"""`python -m bench.footprint`: what the sidecar costs at rest and per instance, in Redis
commands and CPU time by process, figures the machine's load moves far less than rates.

One sidecar process (its embedded Redis, one engine process) is started and left to settle;
then:

- at rest, for `idle` seconds: the CPU ticks (1/100 s) of each of its processes and the Redis
  commands per second its background loops send (timers, orphan claims, heartbeats, the
  reconciler);
- W2's workflow: `count` `bench.steps` instances started and run to completion: the Redis
  commands per instance by name (`INFO commandstats`, the commands inside scripts included;
  the bench's own Query polls too) and the CPU time per instance of each process (`/proc`).
  With `--workflow approve`, W3's instead: `bench.approve` instances started, parked in their
  `listen`, each sent the Signal that completes it; the figures cover the whole of that.

With `--redis-cluster` the sidecar runs against a local Redis Cluster of three masters instead
of its embedded Redis: the commands are summed over the masters and the masters' CPU counts as
`redis`, so the two runs side by side show what the Cluster adds per instance.

Run it on two builds one after the other (or alternating, several times) to see what a change
to a hot path or a background loop does. docs/benchmarks.md records the figures; the test
runs it with tiny counts and asserts no speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc
from redis.asyncio import Redis

from bench.cli import CLUSTER_MASTERS
from bench.cpu import CpuMeter, process_cpu_s
from bench.processes import sidecar_process
from bench.tree_cpu import TreeCpuMeter, TreeCpuSample
from bench.workloads import APPROVE, STEPS, Client, run_to_the_end, warm_up
from okra_sidecar.store.embedded import SOCKET_NAME
from okra_sidecar.store.local_cluster import LocalCluster

__all__ = ["Footprint", "measure", "report"]

IDLE_S = 30.0
# The workflows measured per instance, by the name --workflow takes: W2's and W3's.
WORKFLOWS = {"steps": STEPS, "approve": APPROVE}
COUNT = 5000
# After the health check answers, the engine children and the fork server still import.
SETTLE_S = 10.0


@dataclass(frozen=True)
class Footprint:
    idle_s: float
    idle_ticks: dict[str, int]  # CPU ticks at rest by process role
    idle_commands_per_s: dict[str, float]
    count: int
    workflow: str  # a name of WORKFLOWS
    cpu_us_per_instance: dict[str, float]  # by process role
    commands_per_instance: dict[str, float]  # by command name

    @property
    def total_commands_per_instance(self) -> float:
        return sum(self.commands_per_instance.values())


async def _command_calls(redises: Sequence[Redis]) -> dict[str, int]:
    """Calls by command name, summed over `redises` (a Cluster's masters)."""
    calls: dict[str, int] = {}
    for redis in redises:
        stats = await redis.info("commandstats")
        for name, values in stats.items():
            command = name.removeprefix("cmdstat_")
            calls[command] = calls.get(command, 0) + int(values["calls"])
    calls.pop("info", None)  # our own
    return calls


@dataclass
class _Target:
    """Where the sidecar keeps its data: the URL it is given (None: its embedded Redis),
    clients of every master to count commands on, and the masters' processes when they are
    not the sidecar's children (a Cluster's), whose CPU counts as `redis`."""

    redis_url: str | None
    redises: list[Redis]
    redis_pids: tuple[int, ...] = ()

    def redis_cpu_s(self) -> float:
        return sum(process_cpu_s(pid) or 0.0 for pid in self.redis_pids)


@asynccontextmanager
async def _target(work_dir: Path, *, cluster_masters: int) -> AsyncIterator[_Target]:
    if not cluster_masters:
        # The embedded Redis of `--data-dir work_dir/data` (bench.processes).
        redis = Redis(unix_socket_path=str(work_dir / "data" / "redis" / SOCKET_NAME))
        try:
            yield _Target(None, [redis])
        finally:
            await redis.aclose()
        return
    async with LocalCluster(data_dir=work_dir / "cluster", masters=cluster_masters) as cluster:
        masters = cluster.masters()
        redises = [Redis(host="127.0.0.1", port=node.port) for node in masters]
        pids = tuple(node.process.pid for node in masters if node.process is not None)
        try:
            yield _Target(cluster.url, redises, pids)
        finally:
            for redis in redises:
                await redis.aclose()


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v > before.get(k, 0)}


async def measure(
    *,
    idle_s: float = IDLE_S,
    count: int = COUNT,
    settle_s: float = SETTLE_S,
    work_dir: Path,
    cluster_masters: int = 0,
    workflow: str = "steps",
) -> Footprint:
    """The figures of one sidecar on its embedded Redis, or on a local Redis Cluster of
    `cluster_masters` masters when that is not 0, for `count` instances of `workflow` (a name
    of WORKFLOWS)."""
    workflow_id = WORKFLOWS[workflow]
    async with (
        _target(work_dir, cluster_masters=cluster_masters) as target,
        sidecar_process(
            work_dir, redis_url=target.redis_url, env={"OKRA_ENGINE_PROCESSES": "1"}
        ) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        tree = TreeCpuMeter(server.pid)

        def cpu_sample() -> tuple[TreeCpuSample, float]:
            return tree.sample(), target.redis_cpu_s()

        def cpu_used(start: tuple[TreeCpuSample, float]) -> dict[str, float]:
            end = cpu_sample()
            used = TreeCpuMeter.used_s(start[0], end[0])
            used["redis"] += end[1] - start[1]
            return used

        await asyncio.sleep(settle_s)
        cpu, calls = cpu_sample(), await _command_calls(target.redises)
        await asyncio.sleep(idle_s)
        idle_cpu = cpu_used(cpu)
        idle_calls = _grown(calls, await _command_calls(target.redises))

        client = Client(
            stub=pb_grpc.WorkflowHostAPIStub(channel), meter=CpuMeter.for_process(server.pid)
        )
        await warm_up(client)
        cpu, calls = cpu_sample(), await _command_calls(target.redises)
        await run_to_the_end(client, workflow_id, count)
        run_cpu = cpu_used(cpu)
        run_calls = _grown(calls, await _command_calls(target.redises))
    return Footprint(
        idle_s=idle_s,
        idle_ticks={role: round(s * 100) for role, s in idle_cpu.items() if s},
        idle_commands_per_s={k: round(v / idle_s, 1) for k, v in idle_calls.items()},
        count=count,
        workflow=workflow,
        cpu_us_per_instance={role: round(s * 1e6 / count) for role, s in run_cpu.items() if s},
        commands_per_instance={k: round(v / count, 2) for k, v in run_calls.items()},
    )


def report(result: Footprint) -> str:
    def listed(values: dict[str, float] | dict[str, int]) -> str:
        return ", ".join(f"{name} {value}" for name, value in values.items())

    ticks = sum(result.idle_ticks.values())
    cpu = sum(result.cpu_us_per_instance.values())
    return "\n".join(
        [
            f"at rest, {result.idle_s:.0f} s: {ticks} CPU ticks ({listed(result.idle_ticks)})",
            f"  Redis commands/s: {listed(result.idle_commands_per_s)}",
            f"{result.count} bench.{result.workflow} instances: {cpu:.0f} µs CPU per instance "
            f"({listed(result.cpu_us_per_instance)})",
            f"  Redis commands per instance: {result.total_commands_per_instance:.2f} "
            f"({listed(result.commands_per_instance)})",
        ]
    )


async def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__)
    parser.add_argument("--idle", type=float, default=IDLE_S, help="seconds at rest")
    parser.add_argument("--count", type=int, default=COUNT, help="instances measured")
    parser.add_argument(
        "--workflow",
        choices=sorted(WORKFLOWS),
        default="steps",
        help="W2's bench.steps (run to completion) or W3's bench.approve (run, then signalled)",
    )
    parser.add_argument("--settle", type=float, default=SETTLE_S, help="seconds before")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        help=f"against a local Redis Cluster of {CLUSTER_MASTERS} masters, not an embedded Redis",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="okra-footprint-") as tmp:
        result = await measure(
            idle_s=args.idle,
            count=args.count,
            settle_s=args.settle,
            work_dir=Path(tmp),
            cluster_masters=CLUSTER_MASTERS if args.redis_cluster else 0,
            workflow=args.workflow,
        )
    print(json.dumps(asdict(result), indent=1) if args.json else report(result))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
