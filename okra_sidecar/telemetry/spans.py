"""LiteTracer: the sidecar's spans, made without the SDK's live-span machinery.

The SDK's span validates and copies every attribute into a locked bounded mapping, copies
itself once more when it ends, and walks its processors at start and end; in a sidecar that
makes several spans per workflow instance that was most of what tracing cost. A LiteSpan
keeps plain dicts and lists and, when it ends, hands one ReadableSpan to the provider's
processors (the batch export and, in tests, in-memory exporters). Sampling is the
configured SDK sampler's decision, ids are random as the SDK's are, and the Span API is the
standard one, so code that annotates `trace.get_current_span()` works unchanged. Our
attributes are few and bounded, so the SDK's attribute limits are not applied.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

SAMPLED = 0x01
RANDOM_TRACE_ID = 0x02  # W3C Trace Context level 2: the trace id's right part is random


@dataclass(frozen=True)
class SpanSink:
    """Where finished spans go: the provider's processors, with its resource and scope."""

    emit: Callable[[ReadableSpan], None]
    resource: Resource
    scope: InstrumentationScope


def new_span_id() -> int:
    return random.getrandbits(64) or 1


class LiteSpan(trace.Span):
    """A recording span that keeps its data in plain containers until it ends."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end_ns",
        "_events",
        "_kind",
        "_links",
        "_name",
        "_parent",
        "_sink",
        "_start_ns",
        "_status",
    )

    def __init__(
        self,
        *,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        links: list[Link],
        start_ns: int,
        sink: SpanSink,
    ) -> None:
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._links = links
        self._events: list[Event] = []
        self._start_ns = start_ns
        self._end_ns: int | None = None
        self._status = Status(StatusCode.UNSET)
        self._sink = sink

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_ns is None

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        if self._end_ns is None:
            self._attributes.update(attributes)

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self._end_ns is None:
            self._attributes[key] = value

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_ns is None:
            self._events.append(Event(name, dict(attributes or {}), timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end_ns is None and context.is_valid:
            self._links.append(Link(context, dict(attributes or {})))

    def update_name(self, name: str) -> None:
        if self._end_ns is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, UNSET is ignored.
        if self._end_ns is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        event: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}" if module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_ns is not None:
            return
        self._end_ns = end_time or time.time_ns()
        sink = self._sink
        sink.emit(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=sink.resource,
                attributes=self._attributes,
                events=tuple(self._events),
                links=tuple(self._links),
                kind=self._kind,
                status=self._status,
                start_time=self._start_ns,
                end_time=self._end_ns,
                instrumentation_scope=sink.scope,
            )
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_val is not None and self.is_recording():
            self.record_exception(exc_val, escaped=True)
            self.set_status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}")
        super().__exit__(exc_type, exc_val, exc_tb)


class LiteTracer(trace.Tracer):
    """Starts LiteSpans, sampled by the configured SDK sampler."""

    def __init__(self, *, sampler: Sampler, sink: SpanSink) -> None:
        self._sampler = sampler
        self.sink = sink

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
            random_bit = int(parent.trace_flags) & RANDOM_TRACE_ID
        else:
            parent = None
            trace_id = random.getrandbits(128) or 1
            random_bit = RANDOM_TRACE_ID
        result = self._sampler.should_sample(context, trace_id, name, kind, attributes, links)
        decision = result.decision
        flags = random_bit | (SAMPLED if decision is Decision.RECORD_AND_SAMPLE else 0)
        span_context = SpanContext(
            trace_id,
            new_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=result.trace_state,
        )
        if decision is Decision.DROP:
            return trace.NonRecordingSpan(span_context)
        span_attributes = dict(attributes) if attributes else {}
        if result.attributes:
            span_attributes.update(result.attributes)
        return LiteSpan(
            name=name,
            context=span_context,
            parent=parent,
            kind=kind,
            attributes=span_attributes,
            links=list(links or ()),
            start_ns=start_time or time.time_ns(),
            sink=self.sink,
        )

    # The API's own context-manager decorator is private, hence the override ignore.
    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(span, end_on_exit=end_on_exit) as current:
            yield current


__all__ = ["LiteSpan", "LiteTracer", "SpanSink", "new_span_id"]
