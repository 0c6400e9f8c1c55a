"""The results as one text table, or as JSON for machines."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc

from bench.cpu import CpuShare
from bench.load import Result
from bench.workloads import ECHO

# Rows that are plain rpc rates, comparable with the echo baseline, and their targets.
RPC_ROWS = {"W1 Run": 0.40, "W3 Signal rpc": None, "W4 GetStatus": 0.60}
# With --redis-cluster: the Cluster's W2 rate over the single primary's, and its target.
CLUSTER_ROW = "W2 Run->completed"
CLUSTER_TARGET = 0.70


@dataclass(frozen=True)
class Ratio:
    name: str
    value: float
    target: float | None

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.value >= self.target


def ratios(results: Sequence[Result]) -> list[Ratio]:
    """Each rpc row's rate over the echo rate measured around it (else the echo row's)."""
    by_name = {r.name: r for r in results}
    echo = by_name.get(ECHO)
    found = []
    for name, target in RPC_ROWS.items():
        row = by_name.get(name)
        baseline = row.baseline_rate if row is not None else None
        if baseline is None and echo is not None:
            baseline = echo.rate
        if row is not None and baseline:
            found.append(Ratio(name, row.rate / baseline, target))
    return found


def cluster_ratio(single: Sequence[Result], cluster: Sequence[Result]) -> Ratio | None:
    """The Cluster's W2 rate over the single primary's, from one round of each."""
    one = {r.name: r.rate for r in single}.get(CLUSTER_ROW)
    many = {r.name: r.rate for r in cluster}.get(CLUSTER_ROW)
    if not one or many is None:
        return None
    return Ratio(f"{CLUSTER_ROW} on the Cluster / single primary", many / one, CLUSTER_TARGET)


def format_cluster_ratio(ratio: Ratio) -> str:
    assert ratio.target is not None
    return f"{ratio.name} = {ratio.value:.1%} ({against(ratio.value, ratio.target)})"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_table(results: Sequence[Result]) -> str:
    by_ratio = {r.name: r for r in ratios(results)}
    header: tuple[str, ...] = (
        "workload",
        "count",
        "rate/s",
        "p50 ms",
        "p99 ms",
        "vs echo",
        "retried",
        "cpu% client/server/engine/redis",
    )
    rows: list[tuple[str, ...]] = [header]
    for result in results:
        ratio = by_ratio.get(result.name)
        cpu = result.cpu
        rows.append(
            (
                result.name,
                str(result.count),
                f"{result.rate:.0f}",
                f"{result.p50_ms:.1f}",
                f"{result.p99_ms:.1f}",
                f"{ratio.value:.1%}" if ratio else "",
                str(result.errors) if result.errors else "",
                "/".join(_percent(v) for v in (cpu.client, cpu.server, cpu.engine, cpu.redis))
                if cpu
                else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for number, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def against(value: float, target: float) -> str:
    """`target 40%`, or `target 40%, 2.5 points under`: a figure to read, not a failure."""
    if value >= target:
        return f"target {target:.0%}"
    return f"target {target:.0%}, {(target - value) * 100:.1f} points under"


def format_ratios(results: Sequence[Result]) -> str:
    lines = []
    for ratio in ratios(results):
        if ratio.target is None:
            continue
        lines.append(
            f"{ratio.name} / echo = {ratio.value:.1%} ({against(ratio.value, ratio.target)})"
        )
    return "\n".join(lines)


def median_ratios(rounds: Sequence[Sequence[Result]]) -> list[tuple[str, list[float], Ratio]]:
    """Per ratio row: its value in each round and a Ratio holding the median of them."""
    by_row: dict[str, list[Ratio]] = {}
    for results in rounds:
        for ratio in ratios(results):
            by_row.setdefault(ratio.name, []).append(ratio)
    return [
        (
            name,
            [r.value for r in row],
            Ratio(name, statistics.median(r.value for r in row), row[0].target),
        )
        for name, row in by_row.items()
    ]


def median_cluster_ratio(
    rounds: Sequence[Sequence[Result]], cluster_rounds: Sequence[Sequence[Result]]
) -> tuple[list[float], Ratio] | None:
    """The Cluster's W2 over the single primary's in each round, and their median."""
    found = [cluster_ratio(one, many) for one, many in zip(rounds, cluster_rounds, strict=True)]
    values = [r.value for r in found if r is not None]
    first = next((r for r in found if r is not None), None)
    if first is None:
        return None
    return values, replace(first, value=statistics.median(values))


def format_medians(
    rounds: Sequence[Sequence[Result]], cluster_rounds: Sequence[Sequence[Result]] = ()
) -> str:
    """One line per ratio row: every round's value and the median, judged on the median."""
    lines = [f"Medians over {len(rounds)} rounds:"]
    for name, values, median in median_ratios(rounds):
        each = ", ".join(f"{v:.1%}" for v in values)
        target = "" if median.target is None else f" ({against(median.value, median.target)})"
        lines.append(f"{name} / echo = {median.value:.1%}{target}; rounds: {each}")
    for name, values, median in median_ratios(cluster_rounds):
        each = ", ".join(f"{v:.1%}" for v in values)
        lines.append(f"{name} / echo on the Cluster = {median.value:.1%}; rounds: {each}")
    cluster = median_cluster_ratio(rounds, cluster_rounds) if cluster_rounds else None
    if cluster is not None:
        values, median = cluster
        each = ", ".join(f"{v:.1%}" for v in values)
        lines.append(f"{format_cluster_ratio(median)}; rounds: {each}")
    return "\n".join(lines)


def rounds_json(
    rounds: Sequence[Sequence[Result]],
    settings: Mapping[str, Any],
    cluster_rounds: Sequence[Sequence[Result]] = (),
) -> str:
    """Every round as to_json gives it, and the median ratios."""
    medians = {name: round(median.value, 4) for name, _, median in median_ratios(rounds)}
    cluster = median_cluster_ratio(rounds, cluster_rounds) if cluster_rounds else None
    if cluster is not None:
        medians["cluster_w2_to_single"] = round(cluster[1].value, 4)
    many: list[Sequence[Result] | None] = [*cluster_rounds] or [None] * len(rounds)
    paired = zip(rounds, many, strict=True)
    return json.dumps(
        {
            "rounds": [json.loads(to_json(one, settings, other)) for one, other in paired],
            "median_ratios": medians,
        },
        indent=2,
    )


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }


def _cpu_json(cpu: CpuShare) -> dict[str, float | None]:
    shares = {
        "client": cpu.client,
        "server": cpu.server,
        "engine": cpu.engine,
        "redis": cpu.redis,
    }
    return {k: None if v is None else round(v, 1) for k, v in shares.items()}


def to_json(
    results: Sequence[Result],
    settings: Mapping[str, Any],
    cluster: Sequence[Result] | None = None,
) -> str:
    """One round; with `cluster`, the same workloads against the Cluster under `cluster`."""
    report = {"machine": machine(), "settings": dict(settings), **_results_json(results)}
    if cluster is not None:
        ratio = cluster_ratio(results, cluster)
        report["cluster"] = {
            **_results_json(cluster),
            "w2_to_single": None if ratio is None else round(ratio.value, 3),
            "target": CLUSTER_TARGET,
        }
    return json.dumps(report, indent=2)


def _results_json(results: Sequence[Result]) -> dict[str, Any]:
    return {
        "results": [
            {
                "workload": r.name,
                "count": r.count,
                "elapsed_s": round(r.elapsed_s, 4),
                "rate_per_s": round(r.rate, 1),
                "p50_ms": round(r.p50_ms, 2),
                "p99_ms": round(r.p99_ms, 2),
                "retried_errors": r.errors,
                "cpu_percent": None if r.cpu is None else _cpu_json(r.cpu),
                "echo_around_per_s": None if r.baseline_rate is None else round(r.baseline_rate, 1),
            }
            for r in results
        ],
        "ratios": [
            {"workload": q.name, "to_echo": round(q.value, 3), "target": q.target, "met": q.met}
            for q in ratios(results)
        ],
    }
