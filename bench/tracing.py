"""`python -m bench.tracing`: Run (W1) and W2 throughput with tracing on, next to off.

Tracing on means every span sampled and batch-exported over OTLP/gRPC to a local receiver
(`bench.otlp_sink`, a process of its own, as a collector on the node would be). Rounds
alternate off and on, each with a fresh sidecar, so a machine that other work keeps busy
hurts both alike; the report shows every round, the medians and their ratio, and the
sidecar's CPU time per instance, which such contention hardly moves.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from bench.cpu import CpuMeter, process_cpu_s
from bench.processes import free_port, sidecar_process
from bench.report import against
from bench.workloads import Client, measure_completion, measure_run, warm_up

FULL = {"W1": 2000, "W2": 1000}
QUICK = {"W1": 500, "W2": 300}
TARGET = 0.80
SINK_START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Round:
    """One sidecar's W1 and W2: rates, and the sidecar's CPU milliseconds per instance."""

    traced: bool
    w1_rate: float
    w2_rate: float
    w1_cpu_ms: float
    w2_cpu_ms: float


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@asynccontextmanager
async def otlp_sink(work_dir: Path) -> AsyncIterator[str]:
    """`python -m bench.otlp_sink` on a free port; yields its endpoint URL."""
    address = f"127.0.0.1:{free_port()}"
    with (work_dir / "sink.log").open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.otlp_sink", "--listen", address, stdout=out, stderr=out
        )
    try:
        deadline = asyncio.get_running_loop().time() + SINK_START_TIMEOUT_S
        async with grpc.aio.insecure_channel(address) as channel:
            while True:
                try:
                    await asyncio.wait_for(channel.channel_ready(), 0.5)
                    break
                except TimeoutError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise RuntimeError(f"the OTLP sink did not start on {address}") from None
        yield f"http://{address}"
    finally:
        process.terminate()
        await process.wait()
        lines = (work_dir / "sink.log").read_text().strip().splitlines()
        if lines:
            log(lines[-1])


def tracing_env(endpoint: str | None) -> dict[str, str]:
    if endpoint is None:
        return {"OTEL_SDK_DISABLED": "true"}
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


def _cpu_ms(pid: int, before: float | None, count: int) -> float:
    after = process_cpu_s(pid)
    if before is None or after is None or count == 0:
        return float("nan")
    return (after - before) * 1000 / count


async def measure_round(work_dir: Path, counts: dict[str, int], endpoint: str | None) -> Round:
    async with sidecar_process(work_dir, env=tracing_env(endpoint)) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            client = Client(
                stub=pb_grpc.WorkflowHostAPIStub(channel), meter=CpuMeter.for_process(server.pid)
            )
            await warm_up(client)
            before = process_cpu_s(server.pid)
            w1 = await measure_run(client, counts["W1"])
            w1_cpu = _cpu_ms(server.pid, before, counts["W1"])
            before = process_cpu_s(server.pid)
            w2, _ = await measure_completion(client, counts["W2"])
            w2_cpu = _cpu_ms(server.pid, before, counts["W2"])
    return Round(endpoint is not None, w1.rate, w2.rate, w1_cpu, w2_cpu)


async def run_rounds(rounds: int, counts: dict[str, int]) -> list[Round]:
    results: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="okra-bench-tracing-") as scratch:
        work_dir = Path(scratch)
        async with otlp_sink(work_dir) as endpoint:
            for index in range(rounds):
                for traced in (False, True):
                    mode = "on" if traced else "off"
                    log(f"round {index + 1}/{rounds}, tracing {mode}")
                    # A fresh embedded Redis each time: no round inherits another's instances.
                    round_dir = work_dir / f"round-{index}-{mode}"
                    round_dir.mkdir()
                    results.append(
                        await measure_round(round_dir, counts, endpoint if traced else None)
                    )
    return results


def report(results: Sequence[Round]) -> str:
    lines = [
        "tracing  W1 Run/s  W2 Run->completed/s  sidecar cpu ms/instance W1  W2",
        "-------  --------  -------------------  --------------------------  ----",
    ]
    for r in results:
        lines.append(
            f"{'on' if r.traced else 'off':<7}  {r.w1_rate:>8.0f}  {r.w2_rate:>19.0f}  "
            f"{r.w1_cpu_ms:>26.2f}  {r.w2_cpu_ms:>4.2f}"
        )
    off = [r for r in results if not r.traced]
    on = [r for r in results if r.traced]

    def ratio(attribute: str) -> float:
        values_on = statistics.median(getattr(r, attribute) for r in on)
        values_off = statistics.median(getattr(r, attribute) for r in off)
        return values_on / values_off if values_off else float("nan")

    lines.append("")
    for name, attribute, cpu in (
        ("W1 Run", "w1_rate", "w1_cpu_ms"),
        ("W2", "w2_rate", "w2_cpu_ms"),
    ):
        rate = ratio(attribute)
        lines.append(
            f"{name} traced/untraced = {rate:.0%} of the untraced rate (medians; "
            f"{against(rate, TARGET)}); sidecar cpu per instance x{ratio(cpu):.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs to run (3)")
    args = parser.parse_args(argv)
    results = asyncio.run(run_rounds(args.rounds, QUICK if args.quick else FULL))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
