"""What the suite checks once the workload has drained, through the public API only."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from okra_client import OkraClient, WorkflowInstance, WorkflowStatus
from okra_client.errors import OkraRpcError

from chaos.workload import Started

__all__ = ["Findings", "check", "expected_output"]

READ_CONCURRENCY = 32


def expected_output(record: Started) -> dict[str, Any]:
    n = record.n
    steps = (n + 1) * 10 + 2
    outputs: dict[str, dict[str, Any]] = {
        "steps": {"n": steps},
        "signal": {"n": n, "got": [n]},
        "timer": {"n": n},
        "child": {"n": n, "child": steps},
        "http": {"n": n, "echoed": record.key},
        "work": {"n": n, "worked": record.key},
    }
    return outputs[record.kind]


@dataclass
class Findings:
    """Counts per problem; `failures` says which must be zero."""

    acknowledged: int = 0
    refused: int = 0
    lost: int = 0
    stuck: int = 0
    failed: int = 0
    wrong_output: int = 0
    completed_twice: int = 0
    steps_twice: int = 0
    signals_lost_or_twice: int = 0
    http_calls: Counter[int] = field(default_factory=Counter)  # calls per task -> tasks
    worker_runs: Counter[int] = field(default_factory=Counter)
    completion_s: list[float] = field(default_factory=list)
    after_fault_s: list[float] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def failures(self) -> dict[str, int]:
        counts = {
            "acknowledged Runs lost": self.lost,
            "instances stuck": self.stuck,
            "instances failed": self.failed,
            "wrong outputs": self.wrong_output,
            "instances completed twice": self.completed_twice,
            "steps run twice": self.steps_twice,
            "signals lost or delivered twice": self.signals_lost_or_twice,
            "outside calls never made": self.http_calls[0] + self.worker_runs[0],
        }
        return {name: count for name, count in counts.items() if count}


async def _wait_final(client: OkraClient, instance_id: str, deadline: float) -> WorkflowInstance:
    loop = asyncio.get_running_loop()
    while True:
        instance = await client.get_status(instance_id)
        if instance.finished or loop.time() > deadline:
            return instance
        await asyncio.sleep(0.5)


async def _check_one(
    client: OkraClient,
    record: Started,
    findings: Findings,
    deadline: float,
    faults: Sequence[float],
) -> None:
    try:
        instance = await _wait_final(client, record.instance_id, deadline)
    except OkraRpcError as error:
        if error.code == grpc.StatusCode.NOT_FOUND:
            findings.lost += 1
            findings.examples.append(f"lost: {record.kind} {record.instance_id}")
            return
        raise
    if not instance.finished:
        findings.stuck += 1
        findings.examples.append(f"stuck: {record.kind} {record.instance_id} {instance.status}")
        return
    if instance.status != WorkflowStatus.COMPLETED:
        findings.failed += 1
        detail = instance.error.detail if instance.error else instance.status.value
        findings.examples.append(f"failed: {record.kind} {record.instance_id}: {detail}")
        return
    if instance.output != expected_output(record):
        findings.wrong_output += 1
        if record.kind == "signal":
            findings.signals_lost_or_twice += 1
        findings.examples.append(f"output: {record.kind} {record.instance_id} {instance.output}")
    events = [event async for event in client.history(record.instance_id, page_size=1000)]
    if sum(e.type == "workflow.completed" for e in events) > 1:
        findings.completed_twice += 1
    steps = Counter(e.task for e in events if e.type == "task.completed")
    if any(count > 1 for count in steps.values()):
        findings.steps_twice += 1
        findings.examples.append(f"twice: {record.kind} {record.instance_id} {dict(steps)}")
    if instance.end_time is not None:
        took = instance.end_time.timestamp() - record.acked_at
        findings.completion_s.append(took)
        # Started within the two seconds before a fault: how long recovery held it up.
        if any(0 <= fault - record.acked_at <= 2 for fault in faults):
            findings.after_fault_s.append(took)


async def check(
    client: OkraClient,
    started: Sequence[Started],
    *,
    http_calls: Counter[str],
    worker_runs: Counter[str],
    faults: Sequence[float],
    drain_s: float,
) -> Findings:
    """Wait up to `drain_s` for every acknowledged instance to finish, then count problems."""
    findings = Findings()
    deadline = asyncio.get_running_loop().time() + drain_s
    acknowledged = [r for r in started if r.instance_id]
    findings.acknowledged = len(acknowledged)
    findings.refused = len(started) - len(acknowledged)
    gate = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(record: Started) -> None:
        async with gate:
            await _check_one(client, record, findings, deadline, faults)

    await asyncio.gather(*(one(r) for r in acknowledged))
    for record in acknowledged:
        if record.kind == "http":
            findings.http_calls[http_calls[record.key]] += 1
        elif record.kind == "work":
            findings.worker_runs[worker_runs[record.key]] += 1
    return findings
