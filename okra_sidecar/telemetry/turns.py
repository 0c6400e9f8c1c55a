"""Engine turn and task spans, in the trace of the Run that started the instance.

A turn's span is a child of the Run's span context, stored with the instance, whichever
sidecar runs the turn and however much later. A turn that consumes a signal links to the
span of the Signal call that sent it (the CloudEvent's `traceparent`); a turn that a timer
asked for carries the timer's due time. Task spans are children of the turn they ran in and
are made from the history events the pure interpreter reports, so a task that waits across
turns (a `listen`, a `wait`) has one span per turn it was active in, the first marked
`waiting`. The interpreter does not time tasks one by one: a task span covers the turn's
interpretation. The turn's committed state, not each attempt, makes task spans, so a turn
retried after a revision race reports its tasks once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, Tracer

from okra_sidecar.telemetry import tracing
from okra_sidecar.telemetry.metrics import SidecarMetrics
from okra_sidecar.telemetry.spans import SpanSink, new_span_id

NS_PER_MS = 1_000_000
TASK_END_EVENTS = {"task.completed": "completed", "task.faulted": "faulted"}
FINISHED_STATUSES = ("completed", "failed", "cancelled")
# engine.interpreter.effects.RESULT_EVENT_TYPE (the engine depends on telemetry, not the reverse).
EFFECT_RESULT_TYPE = "io.okra.effect.result"
FAULTED = Status(StatusCode.ERROR, "the task faulted")
UNSET = Status(StatusCode.UNSET)


class TurnInput(Protocol):
    """What a turn span reads from the engine's snapshot (store.base.TurnSnapshot)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def workflow_id(self) -> str: ...

    @property
    def revision(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def trace_context(self) -> str: ...

    @property
    def inbox(self) -> Sequence[Any]: ...


class TurnOutput(Protocol):
    """What a turn span reads from the interpreter's result (engine TurnResult)."""

    @property
    def current_step(self) -> str: ...

    @property
    def consumed(self) -> list[str]: ...

    @property
    def history(self) -> list[dict[str, Any]]: ...

    @property
    def changed(self) -> bool: ...

    @property
    def outcome(self) -> Any: ...


class TurnScope:
    """One attempt at a turn; `finish()` records its outcome once the commit returned."""

    __slots__ = ("_metrics", "_sink", "_snapshot", "_span", "_started_ns", "interpreted_ns")

    def __init__(
        self,
        sink: SpanSink | None,
        metrics: SidecarMetrics,
        snapshot: TurnInput,
        span: Span | None,
        started_ns: int,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._snapshot = snapshot
        self._span = span
        self._started_ns = started_ns
        self.interpreted_ns: tuple[int, int] | None = None

    def __enter__(self) -> TurnScope:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def interpreted(self, started_ns: int) -> None:
        """Mark the interpreter's run: from `started_ns` until now."""
        self.interpreted_ns = (started_ns, time.time_ns())

    def finish(self, result: TurnOutput, *, committed: bool, status: str) -> None:
        snapshot = self._snapshot
        outcome = str(result.outcome)
        if committed:
            self._metrics.turn_finished(
                (time.time_ns() - self._started_ns) / 1e9, snapshot.workflow_id, outcome
            )
            # Counted here, not at Run, so scheduled runs and child runs count too.
            if snapshot.status == "pending":
                self._metrics.instance_started(snapshot.workflow_id)
            if status in FINISHED_STATUSES:
                self._metrics.instance_finished(snapshot.workflow_id, status)
        span = self._span
        if span is None or not span.is_recording():
            return
        attributes: dict[str, str | bool] = {
            tracing.TURN_OUTCOME: outcome,
            tracing.TURN_COMMITTED: committed,
        }
        if result.current_step:
            attributes[tracing.TURN_STEP] = result.current_step
        span.set_attributes(attributes)
        if outcome == "failed":
            span.set_status(trace.StatusCode.ERROR, "the instance failed")
        if not committed:
            return
        if result.consumed:
            self._link_senders(span, result.consumed)
        if result.history and self._sink is not None:
            self._task_spans(span.get_span_context(), result.history)

    def _link_senders(self, span: Span, consumed: list[str]) -> None:
        """Link to the span that sent each consumed event: a Signal call, or the executor
        that ran an effect and delivered its result."""
        wanted = set(consumed)
        for entry in self._snapshot.inbox:
            if entry.entry_id not in wanted:
                continue
            event: Mapping[str, Any] = entry.event
            sender = tracing.span_context_of(event)
            if sender is None:
                continue
            if event.get("type") == EFFECT_RESULT_TYPE:
                data = event.get("data") or {}
                attributes = {tracing.EFFECT_ID: str(data.get("effectId", ""))}
            else:
                attributes = {
                    tracing.SIGNAL_ID: str(event.get("id", "")),
                    tracing.SIGNAL_NAME: str(event.get("type", "")),
                }
            span.add_link(sender, attributes)

    def _task_spans(self, turn: SpanContext, history: list[dict[str, Any]]) -> None:
        """One span per task that did something in this turn, child of the turn's span."""
        sink = self._sink
        assert sink is not None
        start_ns, end_ns = self.interpreted_ns or (self._started_ns, time.time_ns())
        started: dict[str, bool] = {}
        ended: list[tuple[str, str, bool]] = []
        for event in history:
            reference = event.get("task")
            if not reference:
                continue
            kind = event.get("type")
            if kind == "task.started":
                started[reference] = True
            elif kind in TASK_END_EVENTS:
                resumed = started.pop(reference, None) is None  # started in an earlier turn
                ended.append((reference, TASK_END_EVENTS[kind], resumed))
        ended.extend((reference, "waiting", False) for reference in started)
        for reference, task_status, resumed in ended:
            name = reference.rsplit("/", 1)[-1]
            attributes: dict[str, str | bool] = {
                tracing.TASK_REFERENCE: reference,
                tracing.TASK_NAME: name,
                tracing.TASK_STATUS: task_status,
            }
            if resumed:
                attributes[tracing.TASK_RESUMED] = True
            sink.emit(
                ReadableSpan(
                    name=tracing.TASK_SPAN.format(task=name),
                    context=SpanContext(
                        turn.trace_id,
                        new_span_id(),
                        is_remote=False,
                        trace_flags=turn.trace_flags,
                        trace_state=turn.trace_state,
                    ),
                    parent=turn,
                    resource=sink.resource,
                    attributes=attributes,
                    kind=SpanKind.INTERNAL,
                    status=FAULTED if task_status == "faulted" else UNSET,
                    start_time=start_ns,
                    end_time=end_ns,
                    instrumentation_scope=sink.scope,
                )
            )


class TurnTracer:
    """Makes turn scopes for the engine runner; with tracing off it only feeds metrics."""

    def __init__(
        self, *, tracer: Tracer | None, metrics: SidecarMetrics, sink: SpanSink | None = None
    ) -> None:
        self._tracer = tracer
        self._metrics = metrics
        self._sink = sink

    def turn(
        self, snapshot: TurnInput, *, started_ns: int, due_ms: Sequence[int] = ()
    ) -> AbstractContextManager[TurnScope]:
        """The scope of one turn attempt, its span current while the block runs.

        `due_ms` are the due times of the timers that asked for this turn (first attempt only).
        """
        for due in due_ms:
            self._metrics.timer_fired((started_ns / NS_PER_MS - due) / 1000)
        tracer = self._tracer
        if tracer is None:
            # No span to make current: the scope is its own context (no generator per turn).
            return TurnScope(None, self._metrics, snapshot, None, started_ns)
        return self._traced(tracer, snapshot, started_ns, due_ms)

    @contextmanager
    def _traced(
        self, tracer: Tracer, snapshot: TurnInput, started_ns: int, due_ms: Sequence[int]
    ) -> Iterator[TurnScope]:
        parent = tracing.load_context(snapshot.trace_context)
        attributes: dict[str, str | int] = {
            tracing.WORKFLOW_ID: snapshot.workflow_id,
            tracing.INSTANCE_ID: snapshot.instance_id,
        }
        if due_ms:
            attributes[tracing.TIMER_DUE] = max(due_ms)
        span = tracer.start_span(
            tracing.TURN_SPAN.format(workflow=snapshot.workflow_id),
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            start_time=started_ns,
        )
        # Keep the stored baggage current too, so outgoing calls made in the turn carry it.
        token = context_api.attach(trace.set_span_in_context(span, parent))
        try:
            yield TurnScope(self._sink, self._metrics, snapshot, span, started_ns)
        except BaseException as exc:
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            context_api.detach(token)
            span.end()


__all__ = ["TurnScope", "TurnTracer"]
