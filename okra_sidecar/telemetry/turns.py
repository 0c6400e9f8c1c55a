"""Engine turn and task spans, in the trace of the Run that started the instance.

A turn's span is a child of the Run's span context, stored with the instance, whichever
sidecar runs the turn and however much later. A turn that consumes a signal links to the
span of the Signal call that sent it (the CloudEvent's `traceparent`); a turn that a timer
asked for carries the timer's due time. Task spans are children of the turn they ran in and
are made from the history events the pure interpreter reports, so a task that waits across
turns (a `listen`, a `wait`) has one span per turn it was active in, the first marked
`waiting`. The interpreter does not time tasks one by one: a task span covers the turn's
interpretation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer

from okra_sidecar.telemetry import tracing
from okra_sidecar.telemetry.metrics import SidecarMetrics

NS_PER_MS = 1_000_000
TASK_END_EVENTS = {"task.completed": "completed", "task.faulted": "faulted"}
FINISHED_STATUSES = ("completed", "failed", "cancelled")


class TurnInput(Protocol):
    """What a turn span reads from the engine's snapshot (store.base.TurnSnapshot)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def workflow_id(self) -> str: ...

    @property
    def revision(self) -> str: ...

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

    __slots__ = ("_metrics", "_snapshot", "_span", "_started_ns", "_tracer", "interpreted_ns")

    def __init__(
        self,
        tracer: Tracer | None,
        metrics: SidecarMetrics,
        snapshot: TurnInput,
        span: Span | None,
        started_ns: int,
    ) -> None:
        self._tracer = tracer
        self._metrics = metrics
        self._snapshot = snapshot
        self._span = span
        self._started_ns = started_ns
        self.interpreted_ns: tuple[int, int] | None = None

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
            if status in FINISHED_STATUSES:
                self._metrics.instance_finished(snapshot.workflow_id, status)
        span = self._span
        if span is None or not span.is_recording():
            return
        span.set_attribute(tracing.TURN_OUTCOME, outcome)
        span.set_attribute(tracing.TURN_COMMITTED, committed)
        span.set_attribute(tracing.TURN_CHANGED, result.changed)
        if result.current_step:
            span.set_attribute(tracing.TURN_STEP, result.current_step)
        if outcome == "failed":
            span.set_status(trace.StatusCode.ERROR, "the instance failed")
        if not committed:
            return
        if result.consumed:
            self._link_signals(span, result.consumed)
        if result.history and self._tracer is not None:
            self._task_spans(span, result.history)

    def _link_signals(self, span: Span, consumed: list[str]) -> None:
        wanted = set(consumed)
        for entry in self._snapshot.inbox:
            if entry.entry_id not in wanted:
                continue
            event: Mapping[str, Any] = entry.event
            sender = tracing.span_context_of(event)
            if sender is not None:
                span.add_link(
                    sender,
                    {
                        tracing.SIGNAL_ID: str(event.get("id", "")),
                        tracing.SIGNAL_NAME: str(event.get("type", "")),
                    },
                )

    def _task_spans(self, turn_span: Span, history: list[dict[str, Any]]) -> None:
        assert self._tracer is not None
        start_ns, end_ns = self.interpreted_ns or (self._started_ns, time.time_ns())
        parent = trace.set_span_in_context(turn_span)
        open_tasks: dict[str, Span] = {}
        for event in history:
            reference = event.get("task")
            if not reference:
                continue
            kind = event.get("type")
            if kind == "task.started":
                open_tasks[reference] = self._start_task(reference, parent, start_ns, False)
            elif kind in TASK_END_EVENTS:
                span = open_tasks.pop(reference, None)
                if span is None:  # started in an earlier turn: resumed here
                    span = self._start_task(reference, parent, start_ns, True)
                span.set_attribute(tracing.TASK_STATUS, TASK_END_EVENTS[kind])
                if kind == "task.faulted":
                    span.set_status(trace.StatusCode.ERROR, "the task faulted")
                span.end(end_ns)
        for span in open_tasks.values():
            span.set_attribute(tracing.TASK_STATUS, "waiting")
            span.end(end_ns)

    def _start_task(
        self, reference: str, parent: context_api.Context, start_ns: int, resumed: bool
    ) -> Span:
        assert self._tracer is not None
        name = reference.rsplit("/", 1)[-1]
        attributes: dict[str, str | bool] = {
            tracing.TASK_REFERENCE: reference,
            tracing.TASK_NAME: name,
            tracing.INSTANCE_ID: self._snapshot.instance_id,
        }
        if resumed:
            attributes["okra.task.resumed"] = True
        return self._tracer.start_span(
            tracing.TASK_SPAN.format(task=name),
            context=parent,
            attributes=attributes,
            start_time=start_ns,
        )


class TurnTracer:
    """Makes turn scopes for the engine runner; with tracing off it only feeds metrics."""

    def __init__(self, *, tracer: Tracer | None, metrics: SidecarMetrics) -> None:
        self._tracer = tracer
        self._metrics = metrics

    @contextmanager
    def turn(
        self, snapshot: TurnInput, *, started_ns: int, due_ms: Sequence[int] = ()
    ) -> Iterator[TurnScope]:
        """The scope of one turn attempt, its span current while the block runs.

        `due_ms` are the due times of the timers that asked for this turn (first attempt only).
        """
        for due in due_ms:
            self._metrics.timer_fired((started_ns / NS_PER_MS - due) / 1000)
        tracer = self._tracer
        if tracer is None:
            yield TurnScope(None, self._metrics, snapshot, None, started_ns)
            return
        parent = tracing.load_context(snapshot.trace_context)
        span = tracer.start_span(
            tracing.TURN_SPAN.format(workflow=snapshot.workflow_id),
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=started_ns,
        )
        if span.is_recording():
            span.set_attribute(tracing.WORKFLOW_ID, snapshot.workflow_id)
            span.set_attribute(tracing.INSTANCE_ID, snapshot.instance_id)
            span.set_attribute(tracing.TURN_REVISION, snapshot.revision)
            if due_ms:
                span.set_attribute(tracing.TIMER_DUE, max(due_ms))
        # Keep the stored baggage current too, so outgoing calls made in the turn carry it.
        token = context_api.attach(trace.set_span_in_context(span, parent))
        try:
            yield TurnScope(tracer, self._metrics, snapshot, span, started_ns)
        except BaseException as exc:
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            context_api.detach(token)
            span.end()


__all__ = ["TurnScope", "TurnTracer"]
