"""OTLP span encoding straight to protobuf wire bytes, and the gRPC exporter that uses it.

The stock OTLP exporter builds a protobuf object per span, attribute and value, on a thread
of the sidecar's process and so under its GIL; that costs more than making the span. Here
a batch is written as bytes with a few Python steps per field (the resource and scope once
per batch) and parsed back into the request message by protobuf's C runtime, which costs
little. A test checks that the result equals the stock encoder's for every kind of span the
sidecar makes, so the wire format stays the collector's.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

logger = logging.getLogger(__name__)

# SpanFlags: bit 8 says bit 9 is known; bit 9 says the parent (or linked span) is remote.
HAS_IS_REMOTE = 0x100
IS_REMOTE = 0x200
_DOUBLE = struct.Struct("<d")
_FIXED32 = struct.Struct("<I")
_FIXED64 = struct.Struct("<Q")


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 as two's complement: ten bytes
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _text(number: int, text: str | None) -> bytes:
    return _field(number, text.encode()) if text else b""


def _uint(number: int, value: int | None) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _value(value: Any) -> bytes:
    """An AnyValue message's bytes."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(6, _attributes(1, value))
    raise TypeError(f"cannot encode a {type(value).__name__} attribute")


# Encoded KeyValue fields by (field number, key, value type, value): the same attributes
# recur on most spans (rpc names, workflow ids, statuses). Cleared when it grows past the cap.
_ENCODED: dict[tuple[int, str, type, Any], bytes] = {}
_ENCODED_CAP = 20_000
_CACHEABLE = (str, int, bool, float)


def _key_value(number: int, key: str, value: Any) -> bytes:
    return _field(number, _field(1, key.encode()) + _field(2, _value(value)))


def _attributes(number: int, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated KeyValue fields numbered `number`."""
    if not attributes:
        return b""
    cache = _ENCODED
    parts = []
    for key, value in attributes.items():
        kind = type(value)
        if kind not in _CACHEABLE:
            parts.append(_key_value(number, str(key), value))
            continue
        entry = (number, key, kind, value)
        encoded = cache.get(entry)
        if encoded is None:
            if len(cache) >= _ENCODED_CAP:
                cache.clear()
            encoded = cache[entry] = _key_value(number, str(key), value)
        parts.append(encoded)
    return b"".join(parts)


def _flags(number: int, context: SpanContext | None) -> bytes:
    flags = HAS_IS_REMOTE | (IS_REMOTE if context is not None and context.is_remote else 0)
    return _varint(number << 3 | 5) + _FIXED32.pack(flags)


def _trace_state(context: SpanContext) -> bytes:
    state = context.trace_state
    if not state:
        return b""
    return _text(3, ",".join(f"{key}={value}" for key, value in state.items()))


# Fields that take few values, encoded once: span names and kinds, flags, the unset status.
_NAMES: dict[str, bytes] = {}
_KINDS = {kind: _uint(6, kind.value + 1) for kind in SpanKind}
_SPAN_FLAGS = {False: _flags(16, None), True: _varint(16 << 3 | 5) + _FIXED32.pack(0x300)}
_UNSET_STATUS = _field(15, b"")


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    name = span.name
    name_bytes = _NAMES.get(name)
    if name_bytes is None:
        if len(_NAMES) >= _ENCODED_CAP:
            _NAMES.clear()
        name_bytes = _NAMES[name] = _text(5, name)
    start, end = span.start_time, span.end_time
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        _trace_state(context),
        b"\x22\x08" + parent.span_id.to_bytes(8, "big") if parent is not None else b"",
        name_bytes,
        _KINDS[span.kind],
        b"\x39" + _FIXED64.pack(start) if start else b"",
        b"\x41" + _FIXED64.pack(end) if end else b"",
        _attributes(9, span.attributes),
        _uint(10, span.dropped_attributes),
    ]
    events = span.events
    if events:
        for event in events:
            parts.append(
                _field(
                    11,
                    (b"\x09" + _FIXED64.pack(event.timestamp) if event.timestamp else b"")
                    + _text(2, event.name)
                    + _attributes(3, event.attributes)
                    + _uint(4, event.dropped_attributes),
                )
            )
        parts.append(_uint(12, span.dropped_events))
    links = span.links
    if links:
        for link in links:
            linked = link.context
            parts.append(
                _field(
                    13,
                    b"\x0a\x10"
                    + linked.trace_id.to_bytes(16, "big")
                    + b"\x12\x08"
                    + linked.span_id.to_bytes(8, "big")
                    + _attributes(4, link.attributes)
                    + _uint(5, link.dropped_attributes)
                    + _flags(6, linked),
                )
            )
        parts.append(_uint(14, span.dropped_links))
    status = span.status
    if status.status_code is StatusCode.UNSET and not status.description:
        parts.append(_UNSET_STATUS)
    else:
        parts.append(_field(15, _text(2, status.description) + _uint(3, status.status_code.value)))
    parts.append(_SPAN_FLAGS[parent is not None and parent.is_remote])
    return b"".join(parts)


def _group_key(span: ReadableSpan) -> tuple[int, Any]:
    return id(span.resource), span.instrumentation_scope or None


def _request_bytes(groups: dict[tuple[int, Any], tuple[Any, list[bytes]]]) -> bytes:
    """ExportTraceServiceRequest bytes from encoded Span fields grouped by resource and scope."""
    by_resource: dict[int, tuple[Any, list[bytes]]] = {}
    for (resource_id, scope), (resource, spans) in groups.items():
        scope_bytes = b""
        if scope is not None:
            scope_bytes = (
                _text(1, scope.name) + _text(2, scope.version) + _attributes(3, scope.attributes)
            )
        schema = _text(3, scope.schema_url) if scope is not None else b""
        scope_spans = _field(2, _field(1, scope_bytes) + b"".join(spans) + schema)
        by_resource.setdefault(resource_id, (resource, []))[1].append(scope_spans)
    out = []
    for resource, scopes in by_resource.values():
        body = _field(1, _attributes(1, resource.attributes)) + b"".join(scopes)
        out.append(_field(1, body + _text(3, resource.schema_url)))
    return b"".join(out)


def encode_spans_bytes(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ExportTraceServiceRequest for `spans`, grouped by resource and scope."""
    groups: dict[tuple[int, Any], tuple[Any, list[bytes]]] = {}
    for span in spans:
        groups.setdefault(_group_key(span), (span.resource, []))[1].append(_field(2, _span(span)))
    return _request_bytes(groups)


def encode_spans(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(encode_spans_bytes(spans))


class EncodedBatch:
    """Spans already encoded as an ExportTraceServiceRequest; its length is the span count."""

    __slots__ = ("count", "data")

    def __init__(self, data: bytes, count: int) -> None:
        self.data = data
        self.count = count

    def __len__(self) -> int:
        return self.count


class FastGrpcSpanExporter(OTLPSpanExporter):
    """The stock OTLP/gRPC span exporter (transport, retries, TLS, headers and compression
    as OTEL_EXPORTER_OTLP_* configure them) with the byte-level encoder; it also takes an
    EncodedBatch, which EncodingSpanProcessor hands it."""

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        if isinstance(data, EncodedBatch):
            return ExportTraceServiceRequest.FromString(data.data)
        return encode_spans(data)


class EncodingSpanProcessor(SpanProcessor):
    """A batch processor that encodes each span as it ends, on the thread that ended it.

    The stock BatchSpanProcessor encodes whole batches on its export thread, which then holds
    the GIL for milliseconds at a time and stalls the event loop that serves calls. Here the
    loop encodes a span in a few microseconds when it ends, and the export thread only joins
    bytes and sends them (gRPC releases the GIL while it waits). Spans beyond `max_queue`
    waiting for export are dropped, as the stock processor drops them.
    """

    def __init__(
        self,
        exporter: FastGrpcSpanExporter,
        *,
        schedule_delay_s: float = 1.0,
        max_batch: int = 2048,
        max_queue: int = 16384,
    ) -> None:
        self._exporter = exporter
        self._delay_s = schedule_delay_s
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._lock = threading.Condition()
        self._groups: dict[tuple[int, Any], tuple[Any, list[bytes]]] = {}
        self._count = 0
        self._dropped = 0
        self._flushes = 0  # requests to export now, served by the worker
        self._flushed = 0
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="okra-otlp-export", daemon=True)
        self._worker.start()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        encoded = _field(2, _span(span))
        with self._lock:
            if self._count >= self._max_queue:
                self._dropped += 1
                return
            self._groups.setdefault(_group_key(span), (span.resource, []))[1].append(encoded)
            self._count += 1
            if self._count >= self._max_batch:
                self._lock.notify()

    def _take(self) -> EncodedBatch | None:
        """Up to `max_batch` of the waiting spans, oldest group first."""
        if not self._count:
            return None
        if self._count <= self._max_batch:
            taken, self._groups = self._groups, {}
        else:
            taken = {}
            room = self._max_batch
            for key, (resource, spans) in list(self._groups.items()):
                if room <= 0:
                    break
                taken[key] = (resource, spans[:room])
                if len(spans) > room:
                    self._groups[key] = (resource, spans[room:])
                else:
                    del self._groups[key]
                room -= len(taken[key][1])
        count = sum(len(spans) for _, spans in taken.values())
        self._count -= count
        return EncodedBatch(_request_bytes(taken), count)

    def _run(self) -> None:
        while True:
            with self._lock:
                flushing = self._flushed < self._flushes
                if not flushing and self._count < self._max_batch and not self._stopping:
                    self._lock.wait(self._delay_s)
                batch = self._take()
                stopping, flushes = self._stopping, self._flushes
                # A flush is served once every span it covers has gone, batch after batch.
                drained = not self._count
            if batch is not None:
                try:
                    self._exporter.export(batch)  # type: ignore[arg-type]  # see _translate_data
                except Exception:
                    logger.exception("could not export %d spans", batch.count)
            with self._lock:
                if drained:
                    self._flushed = max(self._flushed, flushes)
                self._lock.notify_all()
                if stopping and not self._count:
                    return

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        with self._lock:
            self._flushes += 1
            target = self._flushes
            self._lock.notify_all()
            return self._lock.wait_for(
                lambda: self._flushed >= target or not self._worker.is_alive(),
                timeout_millis / 1000,
            )

    def shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._worker.join(timeout=30)
        if self._dropped:
            logger.warning("dropped %d spans: the export queue was full", self._dropped)
        self._exporter.shutdown()


__all__ = [
    "EncodedBatch",
    "EncodingSpanProcessor",
    "FastGrpcSpanExporter",
    "encode_spans",
    "encode_spans_bytes",
]
