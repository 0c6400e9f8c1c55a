"""W3C trace context in and out: what an instance stores, what a signal carries, and what an
outgoing call gets."""

from __future__ import annotations

from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider

from okra_sidecar.telemetry import (
    current_carrier,
    dump_carrier,
    event_trace_fields,
    extract_context,
    inject_traceparent,
)
from okra_sidecar.telemetry.tracing import load_context, span_context_of
from tests.telemetry.support import new_trace, traceparent

TRACER = TracerProvider().get_tracer("test")


def test_outside_a_span_nothing_is_carried() -> None:
    assert current_carrier() == {}
    assert dump_carrier(current_carrier()) == ""
    assert event_trace_fields() == {}
    assert inject_traceparent({"x": "1"}) == {"x": "1"}
    assert load_context("") is None


def test_a_plain_context_is_stored_as_the_bare_traceparent() -> None:
    with TRACER.start_as_current_span("run") as span:
        stored = dump_carrier(current_carrier())
        fields = event_trace_fields()
        headers = inject_traceparent({})
    span_context = span.get_span_context()
    assert stored == headers["traceparent"] == fields["traceparent"]
    flags = int(span_context.trace_flags)
    assert stored == f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}"
    loaded = trace.get_current_span(load_context(stored)).get_span_context()
    assert (loaded.trace_id, loaded.span_id, loaded.is_remote) == (
        span_context.trace_id,
        span_context.span_id,
        True,
    )
    assert loaded.trace_flags.sampled


def test_tracestate_and_baggage_travel_as_json() -> None:
    trace_id, span_id = new_trace()
    incoming = extract_context(
        {
            "traceparent": traceparent(trace_id, span_id),
            "tracestate": "vendor=abc",
            "baggage": "tenant=acme",
        }
    )
    token = context.attach(incoming)
    try:
        with TRACER.start_as_current_span("run"):
            stored = dump_carrier(current_carrier())
    finally:
        context.detach(token)
    assert stored.startswith("{")
    restored = load_context(stored)
    assert baggage.get_baggage("tenant", restored) == "acme"
    span_context = trace.get_current_span(restored).get_span_context()
    assert span_context.trace_id == trace_id
    assert span_context.trace_state.get("vendor") == "abc"


def test_unusable_stored_contexts_are_ignored() -> None:
    for stored in ("garbage", "01-abc", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "{", "[1]"):
        assert (
            load_context(stored) is None
            or not trace.get_current_span(load_context(stored)).get_span_context().is_valid
        )


def test_a_signal_event_names_its_sender() -> None:
    trace_id, span_id = new_trace()
    sender = span_context_of({"traceparent": traceparent(trace_id, span_id), "type": "go"})
    assert sender is not None and (sender.trace_id, sender.span_id) == (trace_id, span_id)
    assert span_context_of({"traceparent": "nonsense"}) is None
    assert span_context_of({"type": "go"}) is None
