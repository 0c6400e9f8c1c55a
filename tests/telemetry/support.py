"""Telemetry test helpers: sidecars whose spans and metrics land in memory."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from okra_sidecar.config import Settings, TelemetrySettings
from okra_sidecar.telemetry import Telemetry

RPC = "okra.workflow.v1.WorkflowHostAPI"


def memory_telemetry(
    exporter: InMemorySpanExporter | None,
    *,
    instance_id: str,
    reader: InMemoryMetricReader | None = None,
    settings: TelemetrySettings | None = None,
) -> Telemetry:
    """A sidecar's telemetry that keeps spans in `exporter` and metrics in `reader`."""
    return Telemetry.create(
        settings or TelemetrySettings(),
        instance_id=instance_id,
        span_processors=[SimpleSpanProcessor(exporter)] if exporter is not None else [],
        metric_readers=[reader] if reader is not None else [],
    )


def with_telemetry(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, telemetry=replace(settings.telemetry, **changes))


def new_trace() -> tuple[int, int]:
    """A random (trace id, span id) pair, as a caller's tracer would have."""
    return random.getrandbits(128) | 1, random.getrandbits(64) | 1


def traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def spans_named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def wait_for_spans(
    exporter: InMemorySpanExporter,
    ready: Callable[[Sequence[ReadableSpan]], bool],
    *,
    timeout_s: float = 10.0,
) -> Sequence[ReadableSpan]:
    """Poll the exporter until `ready(spans)` holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        spans = exporter.get_finished_spans()
        if ready(spans):
            return spans
        if asyncio.get_running_loop().time() > deadline:
            names = sorted({s.name for s in spans})
            raise AssertionError(f"spans never became ready; have {len(spans)}: {names}")
        await asyncio.sleep(0.02)


def metric_points(data: MetricsData | None, name: str) -> list[Any]:
    """Every data point of the metric `name`, across resources and scopes."""
    points: list[Any] = []
    for resource_metrics in data.resource_metrics if data else ():
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)
    return points
