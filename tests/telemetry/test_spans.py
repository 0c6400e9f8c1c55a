"""LiteTracer's spans behave as the SDK's do where the sidecar relies on it."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

from okra_sidecar.telemetry.otlp import encode_spans
from okra_sidecar.telemetry.spans import LiteTracer, SpanSink
from tests.telemetry.support import new_trace


def _lite(sampler: Sampler = ALWAYS_ON) -> tuple[LiteTracer, list[ReadableSpan]]:
    finished: list[ReadableSpan] = []
    sink = SpanSink(
        emit=finished.append,
        resource=Resource({"service.name": "t"}),
        scope=InstrumentationScope("okra_sidecar", "1"),
    )
    return LiteTracer(sampler=sampler, sink=sink), finished


def test_a_span_records_what_the_sdk_span_would() -> None:
    lite, finished = _lite()
    sdk = TracerProvider().get_tracer("sdk")
    for tracer in (lite, sdk):
        span = tracer.start_span("op", kind=SpanKind.SERVER, attributes={"a": 1})
        span.set_attributes({"b": "x", "c": True})
        span.set_attribute("d", 2.5)
        span.add_event("happened", {"e": "f"})
        try:
            raise KeyError("missing")
        except KeyError as exc:
            span.record_exception(exc)
        span.set_status(StatusCode.ERROR, "broke")
        span.set_status(StatusCode.UNSET)  # ignored, as in the SDK
        span.end()
        span.end()  # a second end changes nothing
        span.set_attribute("late", 1)  # ignored once ended
        if tracer is sdk:
            assert isinstance(span, ReadableSpan)
            expected = span
    (got,) = finished
    assert got.name == expected.name and got.kind is expected.kind
    assert dict(got.attributes or {}) == dict(expected.attributes or {})
    assert got.status.status_code is StatusCode.ERROR and got.status.description == "broke"
    assert [e.name for e in got.events] == [e.name for e in expected.events]
    exception = dict(got.events[1].attributes or {})
    assert exception == {
        **dict(expected.events[1].attributes or {}),
        "exception.stacktrace": exception["exception.stacktrace"],
    }
    assert exception["exception.type"] == "KeyError"
    assert got.end_time is not None and got.start_time is not None
    assert got.end_time >= got.start_time


def test_ok_is_final_and_a_status_object_is_taken_whole() -> None:
    lite, finished = _lite()
    span = lite.start_span("op")
    span.set_status(Status(StatusCode.OK))
    span.set_status(StatusCode.ERROR, "too late")
    span.end()
    assert finished[0].status.status_code is StatusCode.OK


def test_children_join_the_parent_trace_and_follow_its_sampling() -> None:
    lite, finished = _lite(ParentBased(ALWAYS_ON))
    trace_id, span_id = new_trace()
    sampled = trace.SpanContext(trace_id, span_id, True, trace.TraceFlags(0x01))
    unsampled = trace.SpanContext(trace_id, span_id, True, trace.TraceFlags(0x00))
    child = lite.start_span("c", context=trace.set_span_in_context(NonRecordingSpan(sampled)))
    child.end()
    dropped = lite.start_span("d", context=trace.set_span_in_context(NonRecordingSpan(unsampled)))
    dropped.end()
    assert not dropped.is_recording() and dropped.get_span_context().trace_id == trace_id
    (span,) = finished
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == trace_id and span.parent.span_id == span_id
    assert span.parent.is_remote and span.context.trace_flags.sampled


def test_root_spans_are_new_traces_and_always_off_records_nothing() -> None:
    lite, finished = _lite()
    first, second = lite.start_span("a"), lite.start_span("b")
    assert first.get_span_context().trace_id != second.get_span_context().trace_id
    assert int(first.get_span_context().trace_flags) == 0x03  # sampled, random trace id
    off, nothing = _lite(ALWAYS_OFF)
    span = off.start_span("x")
    span.end()
    assert not span.is_recording() and nothing == []


def test_start_as_current_span_makes_it_current_and_records_an_escaping_error() -> None:
    lite, finished = _lite()
    try:
        with lite.start_as_current_span("work") as span:
            assert trace.get_current_span() is span
            raise ValueError("no")
    except ValueError:
        pass
    (got,) = finished
    assert got.status.status_code is StatusCode.ERROR
    assert [e.name for e in got.events] == ["exception"]


def test_lite_spans_encode_as_the_stock_encoder_does() -> None:
    lite, finished = _lite()
    trace_id, span_id = new_trace()
    parent = trace.SpanContext(
        trace_id, span_id, True, trace.TraceFlags(0x01), trace.TraceState([("k", "v")])
    )
    span = lite.start_span(
        "op",
        context=trace.set_span_in_context(NonRecordingSpan(parent)),
        kind=SpanKind.CONSUMER,
        attributes={"a": "b", "n": 3},
    )
    span.add_link(parent, {"okra.signal.name": "go"})
    span.add_event("e", {"x": 1})
    span.set_status(StatusCode.ERROR, "bad")
    span.end()
    assert encode_spans(finished) == stock_encode(finished)
