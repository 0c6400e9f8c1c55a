"""Tracing: the tracer provider, span names and attributes, and W3C trace context helpers.

The rpc span of a call is the current span while the call runs, so the hooks here
(`set_caller`, `annotate`, `record_error`, `note_policy_denial`) work from any layer below the
interceptor: the auth and policy interceptors, the servicer, the store. Each is cheap when the
call is not sampled or tracing is off.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagate import get_global_textmap
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    SpanProcessor,
    SynchronousMultiSpanProcessor,
    TracerProvider,
    sampling,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from okra_sidecar.config import TelemetrySettings
from okra_sidecar.telemetry.otlp import EncodingSpanProcessor, FastGrpcSpanExporter

TRACER_NAME = "okra_sidecar"

# Span names: rpc spans follow the RPC conventions (`package.Service/Method`); the engine's
# follow `Verb:type` with the workflow id or task name.
TURN_SPAN = "AdvanceWorkflow:{workflow}"
TASK_SPAN = "RunTask:{task}"

# Attributes beyond the OpenTelemetry conventions.
WORKFLOW_ID = "okra.workflow.id"
INSTANCE_ID = "okra.instance.id"
CORRELATION_ID = "okra.correlation_id"
CALLER_ID = "okra.caller.id"
CALLER_WORKFLOW = "okra.caller.workflow"
POLICY = "okra.policy"
SIGNAL_ID = "okra.signal.id"
SIGNAL_NAME = "okra.signal.name"
TASK_REFERENCE = "okra.task.reference"
TASK_NAME = "okra.task.name"
TASK_STATUS = "okra.task.status"
TASK_RESUMED = "okra.task.resumed"
TURN_OUTCOME = "okra.turn.outcome"
TURN_COMMITTED = "okra.turn.committed"
TURN_STEP = "okra.turn.current_step"
TIMER_DUE = "okra.timer.due_ms"
EFFECT_ID = "okra.effect.id"
EFFECT_KIND = "okra.effect.kind"

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
BAGGAGE = "baggage"
_TRACE_CONTEXT = TraceContextTextMapPropagator()
_BAGGAGE = W3CBaggagePropagator()


@dataclass
class RpcCall:
    """What layers below the interceptor tell it about the call in flight."""

    method: str
    caller: str = ""
    denied_by: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# Set by the rpc interceptor for the duration of one call (each call runs in its own task).
CURRENT_CALL: ContextVar[RpcCall | None] = ContextVar("okra_rpc_call", default=None)


# -- hooks for other layers ------------------------------------------------------------------


def set_caller(identity: str, **attributes: str) -> None:
    """Name the caller of the rpc in flight (the auth layer calls this with the token subject).

    Extra attributes (e.g. `issuer="..."`) land on the span as `okra.caller.<name>`.
    """
    call = CURRENT_CALL.get()
    if call is not None:
        call.caller = identity
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(CALLER_ID, identity)
        for name, value in attributes.items():
            span.set_attribute(f"okra.caller.{name}", value)


def note_policy_denial(policy: str) -> None:
    """Record that `policy` denied the rpc in flight: a span event and the denial counter."""
    call = CURRENT_CALL.get()
    if call is not None:
        call.denied_by = policy
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(POLICY, policy)
        span.add_event("policy.denied", {POLICY: policy})


def annotate(**attributes: str) -> None:
    """Set `okra.<name>` attributes on the current span, if it is recorded.

    `annotate(instance_id=...)` sets `okra.instance.id`: underscores in a name become dots.
    """
    span = trace.get_current_span()
    if span.is_recording():
        for name, value in attributes.items():
            if value:
                span.set_attribute(f"okra.{name.replace('_', '.')}", value)


def record_error(exc: BaseException, *, server_fault: bool) -> None:
    """Record an exception on the current span; a server fault also sets the span's status."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.record_exception(exc)
    if server_fault:
        span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")


# -- W3C trace context -----------------------------------------------------------------------


def traceparent_of(span_context: SpanContext) -> str:
    """The W3C `traceparent` header value of a span context."""
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
        f"-{int(span_context.trace_flags):02x}"
    )


def inject_traceparent(
    carrier: MutableMapping[str, str], context: Context | None = None
) -> MutableMapping[str, str]:
    """Add `traceparent`, `tracestate` and `baggage` of the current (or given) context.

    Use it on every outgoing call (HTTP headers, gRPC metadata as a dict, a worker task's
    envelope) so the called service continues the trace. It honours OTEL_PROPAGATORS and
    leaves the carrier untouched when there is no valid span. Returns the carrier.
    """
    get_global_textmap().inject(carrier, context=context)
    return carrier


def extract_context(carrier: Mapping[str, str]) -> Context:
    """The context that a carrier written by `inject_traceparent` describes."""
    return get_global_textmap().extract(carrier)


def current_carrier() -> dict[str, str]:
    """The current span's W3C context (and baggage) as a small dict; empty if there is none."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    carrier = {TRACEPARENT: traceparent_of(span_context)}
    if span_context.trace_state:
        carrier[TRACESTATE] = span_context.trace_state.to_header()
    if baggage.get_all():
        _BAGGAGE.inject(carrier)
    return carrier


def dump_carrier(carrier: Mapping[str, str]) -> str:
    """A carrier as stored with an instance: the bare traceparent when that is all (the
    usual case, read back without a JSON parse), else JSON."""
    if not carrier:
        return ""
    if len(carrier) == 1 and TRACEPARENT in carrier:
        return carrier[TRACEPARENT]
    return json.dumps(carrier, separators=(",", ":"))


def _remote_span_context(traceparent: str) -> SpanContext | None:
    """A version-00 traceparent parsed by hand; None for anything else."""
    version, _, rest = traceparent.partition("-")
    trace_hex, _, rest = rest.partition("-")
    span_hex, _, flags_hex = rest.partition("-")
    if version != "00" or len(trace_hex) != 32 or len(span_hex) != 16 or len(flags_hex) != 2:
        return None
    try:
        trace_id, span_id, flags = int(trace_hex, 16), int(span_hex, 16), int(flags_hex, 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def load_context(stored: str) -> Context | None:
    """The context saved by `dump_carrier(current_carrier())`; None when nothing usable."""
    if not stored:
        return None
    if not stored.startswith("{"):
        span_context = _remote_span_context(stored)
        if span_context is None:
            return None
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context))
    try:
        carrier = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    context = _TRACE_CONTEXT.extract(carrier)
    if BAGGAGE in carrier:
        context = _BAGGAGE.extract(carrier, context=context)
    return context


def span_context_of(carrier: Mapping[str, Any]) -> SpanContext | None:
    """The remote span context in a carrier (e.g. a CloudEvent's `traceparent`), if valid."""
    traceparent = carrier.get(TRACEPARENT)
    if not isinstance(traceparent, str):
        return None
    headers = {TRACEPARENT: traceparent}
    tracestate = carrier.get(TRACESTATE)
    if isinstance(tracestate, str):
        headers[TRACESTATE] = tracestate
    span_context = trace.get_current_span(_TRACE_CONTEXT.extract(headers)).get_span_context()
    return span_context if span_context.is_valid else None


# -- the provider ----------------------------------------------------------------------------


def build_sampler(settings: TelemetrySettings) -> sampling.Sampler:
    ratio = sampling.TraceIdRatioBased(settings.sampler_arg)
    samplers: dict[str, sampling.Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(ratio),
    }
    return samplers[settings.sampler]


def build_span_exporter(settings: TelemetrySettings) -> SpanExporter | None:
    """The configured exporter; the OTLP exporters read their TLS, header, timeout and
    compression variables (OTEL_EXPORTER_OTLP_*) themselves. OTEL_BSP_EXPORT_TIMEOUT, when
    set, bounds each export (retries included) instead of the exporter's own timeout."""
    if settings.traces_exporter == "console":
        return ConsoleSpanExporter(out=sys.stdout)
    if settings.traces_exporter != "otlp":
        return None
    protocol = settings.otlp_traces_protocol or settings.otlp_protocol
    endpoint = settings.otlp_traces_endpoint
    timeout_ms = settings.bsp_export_timeout_ms
    timeout_s = timeout_ms / 1000 if timeout_ms is not None else None
    if protocol == "grpc":
        return FastGrpcSpanExporter(endpoint=endpoint or settings.otlp_endpoint, timeout=timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    if endpoint is None and settings.otlp_endpoint:
        # The generic endpoint is a base URL; the signal's path is appended (OTLP spec).
        endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
    return HttpSpanExporter(endpoint=endpoint, timeout=timeout_s)


def build_tracer_provider(
    settings: TelemetrySettings,
    resource: Resource,
    *,
    processors: tuple[SpanProcessor, ...] = (),
) -> tuple[TracerProvider, SpanProcessor] | None:
    """A provider with a batch processor for the configured exporter, plus `processors`
    (tests pass in-memory ones), and the processor that feeds them all; None when there is
    nothing to send spans to."""
    exporter = build_span_exporter(settings)
    if exporter is None and not processors:
        return None
    every = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]  # SDK: untyped
    provider = TracerProvider(
        resource=resource,
        sampler=build_sampler(settings),
        active_span_processor=every,
        # The sidecar shuts its provider down itself, in order; no handler per provider.
        shutdown_on_exit=False,
    )
    if isinstance(exporter, FastGrpcSpanExporter):
        provider.add_span_processor(
            EncodingSpanProcessor(
                exporter,
                schedule_delay_s=settings.bsp_schedule_delay_ms / 1000,
                max_batch=settings.bsp_max_export_batch_size,
                max_queue=settings.bsp_max_queue_size,
            )
        )
    elif exporter is not None:
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                schedule_delay_millis=settings.bsp_schedule_delay_ms,
                max_queue_size=settings.bsp_max_queue_size,
                max_export_batch_size=settings.bsp_max_export_batch_size,
                export_timeout_millis=settings.bsp_export_timeout_ms or 30_000,
            )
        )
    for processor in processors:
        provider.add_span_processor(processor)
    return provider, every


def event_trace_fields() -> dict[str, str]:
    """CloudEvents distributed-tracing extension attributes for an event sent now."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    fields = {TRACEPARENT: traceparent_of(span_context)}
    if span_context.trace_state:
        fields[TRACESTATE] = span_context.trace_state.to_header()
    return fields


__all__ = [
    "CURRENT_CALL",
    "RpcCall",
    "annotate",
    "build_tracer_provider",
    "current_carrier",
    "dump_carrier",
    "event_trace_fields",
    "extract_context",
    "inject_traceparent",
    "load_context",
    "note_policy_denial",
    "record_error",
    "set_caller",
    "span_context_of",
    "traceparent_of",
]
