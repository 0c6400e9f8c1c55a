"""The byte-level OTLP encoder writes what the stock encoder writes, for every kind of span."""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from okra_sidecar.config import TelemetrySettings
from okra_sidecar.telemetry.otlp import (
    EncodingSpanProcessor,
    FastGrpcSpanExporter,
    encode_spans,
)
from okra_sidecar.telemetry.providers import Telemetry
from tests.telemetry.support import new_trace


def _spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "s", "n": 3}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("okra_sidecar", "0.1.0", attributes={"scope.attr": True})
    other = provider.get_tracer("other")
    trace_id, span_id = new_trace()
    remote = SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "abc"), ("b", "2")]),
    )
    with tracer.start_as_current_span(
        "okra.workflow.v1.WorkflowHostAPI/Run",
        context=set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.SERVER,
        attributes={
            "rpc.system": "grpc",
            "rpc.grpc.status_code": 0,
            "negative": -5,
            "big": 2**62,
            "ratio": 0.25,
            "flag": False,
            "on": True,
            "empty": "",
            "names": ("a", "b"),
            "numbers": [1, 2, 3],
            "ünïcode": "välue ✓",
        },
    ) as run:
        run.add_event("policy.denied", {"okra.policy": "p"})
        try:
            raise ValueError("boom")
        except ValueError as exc:
            run.record_exception(exc)
        run.set_status(StatusCode.ERROR, "INTERNAL: boom")
        child = tracer.start_span(
            "AdvanceWorkflow:w",
            kind=SpanKind.CONSUMER,
            links=[Link(remote, {"okra.signal.name": "approve"}), Link(remote)],
        )
        child.end()
        other.start_span("unnamed scope").end()
        tracer.start_span("").end()
    return list(exporter.get_finished_spans())


def test_the_encoders_agree_on_every_kind_of_span() -> None:
    spans = _spans()
    assert encode_spans(spans) == stock_encode(spans)
    for span in spans:
        assert encode_spans([span]) == stock_encode([span])


def test_the_encoders_agree_on_task_spans_made_without_the_sdk_span() -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry.create(
        TelemetrySettings(), instance_id="i", span_processors=[SimpleSpanProcessor(exporter)]
    )
    sink = telemetry.turns._sink
    assert sink is not None
    trace_id, span_id = new_trace()
    parent = SpanContext(trace_id, span_id, False, TraceFlags(TraceFlags.SAMPLED))
    sink.emit(
        ReadableSpan(
            name="RunTask:decide",
            context=SpanContext(trace_id, 7, False, TraceFlags(TraceFlags.SAMPLED)),
            parent=parent,
            resource=sink.resource,
            attributes={"okra.task.reference": "/do/1/decide"},
            start_time=1,
            end_time=2,
            instrumentation_scope=sink.scope,
        )
    )
    spans = list(exporter.get_finished_spans())
    assert len(spans) == 1
    assert encode_spans(spans) == stock_encode(spans)


class _Capture(FastGrpcSpanExporter):
    """Keeps what it is asked to export instead of sending it."""

    def __init__(self) -> None:
        super().__init__(endpoint="http://127.0.0.1:9")
        self.batches: list[ExportTraceServiceRequest] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.batches.append(self._translate_data(spans))
        return SpanExportResult.SUCCESS


def test_the_encoding_processor_exports_what_the_stock_encoder_would() -> None:
    spans = _spans()
    exporter = _Capture()
    processor = EncodingSpanProcessor(exporter, schedule_delay_s=60)
    try:
        for span in spans:
            processor.on_end(span)
        assert processor.force_flush(5000)
        (batch,) = exporter.batches
        assert batch == stock_encode(spans)
        assert processor.force_flush(5000)  # nothing new: no empty export
        assert len(exporter.batches) == 1
    finally:
        processor.shutdown()


def _span_counts(batches: list[ExportTraceServiceRequest]) -> list[int]:
    return [sum(len(s.spans) for r in b.resource_spans for s in r.scope_spans) for b in batches]


def test_the_encoding_processor_sends_a_full_batch_at_once_and_the_rest_on_shutdown() -> None:
    (span, *_) = _spans()
    exporter = _Capture()
    processor = EncodingSpanProcessor(exporter, schedule_delay_s=60, max_batch=4)
    for _ in range(4):
        processor.on_end(span)
    deadline = time.monotonic() + 5
    while not exporter.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _span_counts(exporter.batches) == [4]
    for _ in range(3):
        processor.on_end(span)
    processor.shutdown()
    assert _span_counts(exporter.batches) == [4, 3]


def test_the_encoding_processor_drops_spans_past_its_queue() -> None:
    spans = _spans()
    exporter = _Capture()
    processor = EncodingSpanProcessor(exporter, schedule_delay_s=60, max_queue=3)
    for span in spans * 2:
        processor.on_end(span)
    processor.shutdown()
    assert _span_counts(exporter.batches) == [3]
