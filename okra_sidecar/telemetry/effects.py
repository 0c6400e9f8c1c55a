"""Effect spans: the outside work a turn asked for, in the trace of that turn.

A turn commits its effects (HTTP, OpenAPI and gRPC calls, worker tasks, child runs) with the
W3C context of its span (`traceparent`, `tracestate` in the effect's JSON). Whichever
sidecar's executor runs the effect later makes a span for it as a child of that turn, current
while it runs, so `inject_traceparent` puts it on the outgoing request and the called service
continues the trace. The result event carries the effect span's context back, and the turn
that consumes it links to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer

from okra_sidecar.telemetry import tracing

# Span name verb and kind by effect kind; the name ends with the task's name.
EFFECT_SPANS = {
    "http": ("CallHttp", SpanKind.CLIENT),
    "openapi": ("CallOpenApi", SpanKind.CLIENT),
    "grpc": ("CallGrpc", SpanKind.CLIENT),
    "worker": ("EnqueueTask", SpanKind.PRODUCER),
    "child": ("StartChildWorkflow", SpanKind.PRODUCER),
    "emit": ("EmitEvent", SpanKind.PRODUCER),
}


def parent_context(effect: Mapping[str, Any]) -> context_api.Context | None:
    """The context of the turn that committed `effect`, if it carried one."""
    span_context = tracing.span_context_of(effect)
    if span_context is None:
        return None
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context))


class EffectTracer:
    """Makes effect spans for an executor; with tracing off it still makes the turn's context
    current, so outgoing calls carry the instance's trace to services that trace."""

    def __init__(self, tracer: Tracer | None) -> None:
        self._tracer = tracer

    @contextmanager
    def span(self, effect: Mapping[str, Any], *, instance_id: str) -> Iterator[None]:
        parent = parent_context(effect)
        tracer = self._tracer
        if tracer is None:
            if parent is None:
                yield
                return
            token = context_api.attach(parent)
            try:
                yield
            finally:
                context_api.detach(token)
            return
        kind = str(effect.get("kind") or "")
        verb, span_kind = EFFECT_SPANS.get(kind, ("RunEffect", SpanKind.INTERNAL))
        reference = str(effect.get("task") or "")
        span = tracer.start_span(
            f"{verb}:{reference.rsplit('/', 1)[-1] or kind}",
            context=parent,
            kind=span_kind,
            attributes={
                tracing.INSTANCE_ID: instance_id,
                tracing.EFFECT_ID: str(effect.get("id") or ""),
                tracing.EFFECT_KIND: kind,
                tracing.TASK_REFERENCE: reference,
            },
        )
        token = context_api.attach(trace.set_span_in_context(span, parent))
        try:
            yield
        except BaseException as exc:
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            context_api.detach(token)
            span.end()


__all__ = ["EFFECT_SPANS", "EffectTracer", "parent_context"]
