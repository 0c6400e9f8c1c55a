"""The pure interpreter: (definition, state, inbox signals, now) -> new state and effects.

A turn runs tasks from the saved position until the instance blocks (a listen without a
matching signal, a wait not yet due), ends, faults or uses its step budget. It does no I/O,
reads no clock but `now_ms` and never mutates the state it is given, so the runner may re-run
a turn after a crash and get the same result.

State values are shared with the previous state, not copied: nothing here mutates a value
once it is in a state, and callers must not either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from okra_sidecar.engine.arguments import TaskArguments, datetime_descriptor
from okra_sidecar.engine.dsl import WorkflowDefinition
from okra_sidecar.engine.durations import DurationSpec
from okra_sidecar.engine.events import ListenProgress, advance_listen, read_event
from okra_sidecar.engine.expressions import CompiledValue, ExpressionError
from okra_sidecar.engine.faults import (
    WorkflowFaultError,
    expression_fault,
    problem,
    timeout_fault,
    validation_fault,
)
from okra_sidecar.engine.tasks import FlowDirective, SchemaCheck, SwitchCase, TaskNode, WorkflowPlan

__all__ = [
    "STATE_VERSION",
    "InboxSignal",
    "TurnOutcome",
    "TurnResult",
    "advance",
    "start_state",
]

STATE_VERSION = 1
_WORKFLOW_INSTANCE = "/"  # the `instance` of errors raised by the workflow itself


@dataclass(frozen=True)
class InboxSignal:
    """A CloudEvent waiting in the instance's inbox; `entry_id` is echoed in `consumed`."""

    entry_id: str
    event: dict[str, Any]


class TurnOutcome(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass
class TurnResult:
    """What a turn did.

    `state` (JSON-serialisable) goes back unchanged into the next advance(). `outcome` RUNNING
    means the step budget ran out with more to do now. `current_step` is the reference of the
    task to run next or waited in ('' once finished); `output` is set when COMPLETED and `error`
    (RFC 7807: type, status, title, detail, instance) when FAILED. `consumed` lists the inbox
    entry ids this turn used, `wake_at_ms` when a waiting instance needs its next turn, and
    `history` the lifecycle events of the turn. `changed` is False when the turn did nothing:
    the caller then has nothing to write.
    """

    state: dict[str, Any]
    outcome: TurnOutcome
    current_step: str
    output: Any
    error: dict[str, Any] | None
    context: dict[str, Any]
    consumed: list[str] = field(default_factory=list)
    wake_at_ms: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    changed: bool = True


def start_state(
    definition: WorkflowDefinition, *, instance_id: str, workflow_input: Any, now_ms: int
) -> dict[str, Any]:
    """The state of a new instance; its first advance() starts the workflow."""
    return {
        "v": STATE_VERSION,
        "id": instance_id,
        "workflow": definition.id,
        "status": "pending",
        "startedAt": now_ms,
        "input": {} if workflow_input is None else workflow_input,
        "context": {},
        "data": None,
        "stack": [],
        "task": None,
        "deadline": None,
        "output": None,
        "error": None,
    }


def advance(
    definition: WorkflowDefinition,
    state: dict[str, Any],
    *,
    signals: Sequence[InboxSignal],
    now_ms: int,
    max_steps: int = 1000,
) -> TurnResult:
    """Run one turn of an instance. See the module docstring for the guarantees.

    Args:
        definition: the definition the instance was started from.
        state: the state from start_state() or from the previous turn; not mutated.
        signals: the instance's inbox, oldest first; matched entries are consumed once.
        now_ms: the clock of this turn (epoch milliseconds).
        max_steps: how many tasks to start before yielding with RUNNING.

    Raises:
        ValueError: `state` was written by an incompatible version of this interpreter.
    """
    status = state["status"]
    if status in ("completed", "failed"):
        return TurnResult(
            state=state,
            outcome=TurnOutcome(status),
            current_step="",
            output=state["output"],
            error=state["error"],
            context=state["context"],
            changed=False,
        )
    return _Turn(definition, state, signals, now_ms).run(max_steps)


class _Turn:
    """One advance(): working copies of the state's parts, and the effects gathered so far."""

    def __init__(
        self,
        definition: WorkflowDefinition,
        state: dict[str, Any],
        signals: Sequence[InboxSignal],
        now_ms: int,
    ) -> None:
        self.definition = definition
        self.plan: WorkflowPlan = definition.plan
        self.state = state
        self.signals = signals
        self.now = now_ms
        # Frames are small dicts: copying them keeps the caller's state untouched.
        self.stack: list[dict[str, Any]] = [dict(frame) for frame in state["stack"]]
        self.data: Any = state["data"]
        self.context: Any = state["context"]
        self.slot: dict[str, Any] | None = state["task"]
        self.deadline: int | None = state["deadline"]
        self.taken: set[str] = set()
        self.consumed: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.changed = False
        self._workflow: dict[str, Any] | None = None

    # -- the loop ------------------------------------------------------------------------------

    def run(self, max_steps: int) -> TurnResult:
        if self.state.get("v") != STATE_VERSION:
            raise ValueError(f"unknown state version {self.state.get('v')!r}")
        try:
            if self.state["status"] == "pending":
                self.start_workflow()
            self.check_deadlines()
            if self.slot is not None and not self.resume():
                return self.blocked()
            steps = 0
            while self.stack:
                frame = self.stack[-1]
                tasks = self.plan.lists[frame["list"]].tasks
                index = frame["index"]
                if index >= len(tasks):
                    self.finish_list()
                    continue
                if steps >= max_steps:
                    return self.result(TurnOutcome.RUNNING, tasks[index].reference)
                steps += 1
                self.changed = True
                if self.start_task(tasks[index]):
                    return self.blocked()
            return self.complete_workflow()
        except WorkflowFaultError as fault:
            return self.fail(fault)

    def start_workflow(self) -> None:
        self.changed = True
        self.event("workflow.started")
        plan = self.plan
        raw = self.state["input"]
        if plan.input_schema is not None:
            self.validate(plan.input_schema, raw, "workflow input", _WORKFLOW_INSTANCE)
        data = raw
        if plan.input_from is not None:
            args = TaskArguments(self, None, raw, self.now)
            data = self.eval(plan.input_from, raw, args, _WORKFLOW_INSTANCE)
        self.data = data
        self.stack = [{"list": WorkflowPlan.ROOT, "index": 0}]
        if plan.timeout is not None:
            self.deadline = self.now + self.duration(
                plan.timeout, data, TaskArguments(self, None, raw, self.now), _WORKFLOW_INSTANCE
            )

    def check_deadlines(self) -> None:
        """Fault with a timeout when the workflow, a composite or the waiting task ran out."""
        candidates: list[tuple[int, int, str]] = []
        if self.deadline is not None:
            started = self.state["startedAt"]
            candidates.append((self.deadline, self.deadline - started, _WORKFLOW_INSTANCE))
        for frame in self.stack:
            if "deadline" in frame:
                deadline = frame["deadline"]
                candidates.append((deadline, deadline - frame["startedAt"], frame["task"]))
        slot = self.slot
        if slot is not None and slot.get("deadline") is not None:
            deadline = slot["deadline"]
            candidates.append((deadline, deadline - slot["startedAt"], slot["ref"]))
        expired = [c for c in candidates if c[0] <= self.now]
        if expired:
            _, length, instance = min(expired, key=lambda c: c[0])
            self.changed = True
            raise timeout_fault(length, instance)

    def start_task(self, node: TaskNode) -> bool:
        """Run a task from its start; True when it blocks."""
        raw = self.data
        args = TaskArguments(self, node, raw, self.now)
        if node.if_ is not None and not _truthy(self.eval(node.if_, raw, args, node.reference)):
            self.stack[-1]["index"] += 1  # skipped: the raw input passes through
            return False
        self.event("task.started", node.reference)
        if node.input_schema is not None:
            self.validate(node.input_schema, raw, "task input", node.reference)
        task_input = raw
        if node.input_from is not None:
            task_input = self.eval(node.input_from, raw, args, node.reference)
        args.input = task_input
        kind = node.kind
        if kind == "set":
            output = self.eval(node.body, task_input, args, node.reference)
            self.complete_task(node, args, output)
        elif kind == "switch":
            then = self.switch(node.body, task_input, args, node)
            self.complete_task(node, args, task_input, then)
        elif kind == "do":
            frame = {
                "list": node.body,
                "index": 0,
                "task": node.reference,
                "rawInput": raw,
                "input": task_input,
                "startedAt": self.now,
            }
            if node.timeout is not None:
                timeout = self.duration(node.timeout, task_input, args, node.reference)
                frame["deadline"] = self.now + timeout
            self.stack.append(frame)
            self.data = task_input
        elif kind == "raise":
            raise WorkflowFaultError(self.raised(node, task_input, args), task=node.reference)
        else:  # wait, listen: may block
            slot: dict[str, Any] = {
                "ref": node.reference,
                "rawInput": raw,
                "input": task_input,
                "startedAt": self.now,
            }
            if node.timeout is not None:
                slot["deadline"] = self.now + self.duration(
                    node.timeout, task_input, args, node.reference
                )
            if kind == "wait":
                slot["due"] = self.now + self.duration(node.body, task_input, args, node.reference)
            self.slot = slot
            return not self.resume()
        return False

    def resume(self) -> bool:
        """Try to finish the waiting task (a wait or listen); True when it finished."""
        slot = self.slot
        assert slot is not None
        node = self.plan.nodes[slot["ref"]]
        args = TaskArguments(self, node, slot["rawInput"], slot["startedAt"])
        args.input = slot["input"]
        if node.kind == "wait":
            if self.now < slot["due"]:
                return False
            output = slot["input"]
        else:
            progress = ListenProgress(slot)
            try:
                consumed, done = advance_listen(
                    node.body.to, node.body.read, progress, self.signals, self.taken, args
                )
            except ExpressionError as exc:
                raise expression_fault(exc, node.reference) from None
            if consumed:
                self.changed = True
                self.consumed.extend(consumed)
                self.slot = {**slot, **progress.to_state()}
            if not done:
                return False
            output = [read_event(event, node.body.read) for event in progress.events]
        self.changed = True
        self.slot = None
        self.complete_task(node, args, output)
        return True

    def complete_task(
        self, node: TaskNode, args: TaskArguments, output: Any, then: FlowDirective | None = None
    ) -> None:
        """Apply output.as, output.schema, export.as, export.schema, then the flow directive."""
        ref = node.reference
        if node.output_as is not None or node.export_as is not None:
            args.set_raw_output(output)
        if node.output_as is not None:
            output = self.eval(node.output_as, output, args, ref)
        if node.output_schema is not None:
            self.validate(node.output_schema, output, "task output", ref)
        if node.export_as is not None:
            args.output = output
            context = self.eval(node.export_as, output, args, ref)
            if not isinstance(context, dict):
                raise validation_fault(
                    "export.as", f"the context must be an object, not {_json_type(context)}", ref
                )
            self.context = context
        if node.export_schema is not None:
            self.validate(node.export_schema, self.context, "exported context", ref)
        self.event("task.completed", ref)
        self.data = output
        self.flow(then or node.then)

    def flow(self, directive: FlowDirective) -> None:
        kind = directive.kind
        frame = self.stack[-1]
        if kind == "continue":
            frame["index"] += 1
        elif kind == "goto":
            frame["index"] = directive.target
        elif kind == "exit":
            frame["index"] = len(self.plan.lists[frame["list"]].tasks)
        else:  # end: finish the workflow now, enclosing composites included
            self.stack.clear()

    def finish_list(self) -> None:
        """A task list ran out: complete its composite task (or, at the root, the workflow)."""
        frame = self.stack.pop()
        if not self.stack:
            return
        node = self.plan.nodes[frame["task"]]
        args = TaskArguments(self, node, frame["rawInput"], frame["startedAt"])
        args.input = frame["input"]
        self.complete_task(node, args, self.data)

    def complete_workflow(self) -> TurnResult:
        self.changed = True
        plan = self.plan
        output = self.data
        if plan.output_as is not None:
            args = TaskArguments(self, None, output, self.now)
            output = self.eval(plan.output_as, output, args, _WORKFLOW_INSTANCE)
        if plan.output_schema is not None:
            self.validate(plan.output_schema, output, "workflow output", _WORKFLOW_INSTANCE)
        self.event("workflow.completed")
        self.slot = None
        state = self.snapshot("completed", output=output)
        state["data"] = None
        return self.result(TurnOutcome.COMPLETED, "", state=state, output=output)

    # -- task kinds ----------------------------------------------------------------------------

    def switch(
        self, cases: tuple[SwitchCase, ...], data: Any, args: TaskArguments, node: TaskNode
    ) -> FlowDirective | None:
        default = None
        for case in cases:
            if case.when is None:
                default = case.then
            elif _truthy(self.eval(case.when, data, args, node.reference)):
                return case.then
        return default  # None: no case matched, the task's own `then` applies

    def raised(self, node: TaskNode, data: Any, args: TaskArguments) -> dict[str, Any]:
        error = self.eval(node.body, data, args, node.reference)
        if not isinstance(error, dict):  # pragma: no cover - the definition was checked
            error = {}
        return {
            "type": str(error.get("type", "")),
            "status": error.get("status"),
            "title": _text(error.get("title")),
            "detail": _text(error.get("detail")),
            "instance": _text(error.get("instance")) or node.reference,
        }

    # -- helpers -------------------------------------------------------------------------------

    def eval(self, compiled: CompiledValue, data: Any, args: TaskArguments, instance: str) -> Any:
        try:
            return compiled.evaluate(data, args)
        except ExpressionError as exc:
            raise expression_fault(exc, instance) from None

    def duration(self, spec: DurationSpec, data: Any, args: TaskArguments, instance: str) -> int:
        try:
            return int(spec.resolve(data, args))
        except ExpressionError as exc:
            raise expression_fault(exc, instance) from None
        except ValueError as exc:
            raise WorkflowFaultError(
                problem("expression", detail=str(exc), instance=instance)
            ) from None

    def validate(self, check: SchemaCheck, value: Any, what: str, instance: str) -> None:
        violation = check.problem(value)
        if violation is not None:
            raise validation_fault(what, violation, instance)

    def event(self, kind: str, task: str | None = None) -> None:
        if task is None:
            self.history.append({"type": kind, "time": self.now})
        else:
            self.history.append({"type": kind, "task": task, "time": self.now})

    def workflow_descriptor(self) -> dict[str, Any]:
        if self._workflow is None:
            self._workflow = {
                "id": self.state["id"],
                "definition": self.definition.document,
                "input": self.state["input"],
                "startedAt": datetime_descriptor(self.state["startedAt"]),
            }
        return self._workflow

    def snapshot(self, status: str, *, output: Any = None, error: Any = None) -> dict[str, Any]:
        state = dict(self.state)
        state["status"] = status
        state["context"] = self.context
        state["data"] = self.data
        state["stack"] = self.stack
        state["task"] = self.slot
        state["deadline"] = self.deadline
        state["output"] = output
        state["error"] = error
        return state

    def blocked(self) -> TurnResult:
        slot = self.slot
        assert slot is not None
        wakes = [slot.get("due"), slot.get("deadline"), self.deadline]
        wakes += [frame.get("deadline") for frame in self.stack]
        wake = min((w for w in wakes if w is not None), default=None)
        return self.result(TurnOutcome.WAITING, slot["ref"], wake_at_ms=wake)

    def fail(self, fault: WorkflowFaultError) -> TurnResult:
        self.changed = True
        error = fault.error
        if fault.task is not None:
            self.event("task.faulted", fault.task)
        self.history.append({"type": "workflow.faulted", "time": self.now, "error": error["type"]})
        self.stack = []
        self.slot = None
        state = self.snapshot("failed", error=error)
        state["data"] = None
        return self.result(TurnOutcome.FAILED, "", state=state, error=error)

    def result(
        self,
        outcome: TurnOutcome,
        current_step: str,
        *,
        state: dict[str, Any] | None = None,
        output: Any = None,
        error: dict[str, Any] | None = None,
        wake_at_ms: int | None = None,
    ) -> TurnResult:
        if not self.changed:
            # Nothing happened (e.g. woke up early): hand back the very same state.
            state = self.state
        elif state is None:
            state = self.snapshot(outcome.value)
        return TurnResult(
            state=state,
            outcome=outcome,
            current_step=current_step,
            output=output,
            error=error,
            context=self.context,
            consumed=self.consumed,
            wake_at_ms=wake_at_ms,
            history=self.history,
            changed=self.changed,
        )


def _truthy(value: Any) -> bool:
    return value is not None and value is not False


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else type(value).__name__
