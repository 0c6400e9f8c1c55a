"""The running turn: the instance's parts a turn works on, and the steps every task shares.

TurnBase holds the thread being run (its stack of frames, its data and its slot, see
threads.py), the workflow context and what the turn gathers (consumed inbox entries, history,
effects). interpreter.py drives it; the functions of catching.py (the tasks that catch
errors) and waiting.py (the tasks that wait on the outside) work on it, typed against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from okra_sidecar.engine.definitions.dsl import WorkflowDefinition
from okra_sidecar.engine.definitions.durations import DurationSpec
from okra_sidecar.engine.definitions.expressions import CompiledValue, ExpressionError
from okra_sidecar.engine.definitions.pointers import kind_of
from okra_sidecar.engine.definitions.tasks import FlowDirective, SchemaCheck, TaskNode, WorkflowPlan
from okra_sidecar.engine.interpreter.arguments import TaskArguments, datetime_descriptor
from okra_sidecar.engine.interpreter.effects import Effect
from okra_sidecar.engine.interpreter.faults import (
    WorkflowFaultError,
    expression_fault,
    problem,
    timeout_fault,
    validation_fault,
)
from okra_sidecar.engine.interpreter.listening import Signal
from okra_sidecar.engine.interpreter.threads import Frame, InstanceState, Slot

__all__ = ["RETRY_POINT", "STATE_VERSION", "TurnBase", "WorkflowEndedError", "truthy"]

# 2: effects, fork branches, for/try/catch/foreach frames, `seq`. A version 1 state (no such
# parts) reads as a version 2 one.
STATE_VERSION = 2
# A failed state's key for where its uncaught error was raised (TurnBase.fault_point).
RETRY_POINT = "retryFrom"


def truthy(value: Any) -> bool:
    """jq's truth: everything but false and null."""
    return value is not None and value is not False


class WorkflowEndedError(Exception):
    """`then: end` in a fork branch: the whole workflow ends with the branch's data."""

    def __init__(self, data: Any) -> None:
        super().__init__("the workflow ended in a fork branch")
        self.data = data


class TurnBase:
    """One advance(): the running thread's parts, and what the turn gathered so far."""

    def __init__(
        self,
        definition: WorkflowDefinition,
        state: InstanceState,
        signals: Sequence[Signal],
        now_ms: int,
        max_steps: int,
    ) -> None:
        self.definition = definition
        self.plan: WorkflowPlan = definition.plan
        self.state = state
        self.signals = signals
        self.now = now_ms
        self.max_steps = max_steps
        self.steps = 0
        # The running thread: frames are small dicts, copied so the caller's state stays intact.
        self.stack: list[Frame] = [frame.copy() for frame in state["stack"]]
        self.data: Any = state["data"]
        self.slot: Slot | None = state["task"]
        self.context: Any = state["context"]
        self.deadline: int | None = state["deadline"]
        self.seq: int = state.get("seq", 0)
        self.taken: set[str] = set()
        self.consumed: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.effects: list[Effect] = []
        self.unawaited: set[str] = set()  # effects nobody waits for: emits, unawaited runs
        self.next_task = ""  # the task a thread stopped before when the budget ran out
        self.forks = 0  # how many fork branches deep the running thread is
        # Where the root thread was when its last error was raised (catching.py): what an
        # operator's Retry runs again if no `try` catches the error.
        self.fault_point: dict[str, Any] | None = None
        # The data and `$context` at each top-level task started in this turn, first time
        # only: the store keeps the first one per task ever, what an operator's Reset restores.
        self.reached: dict[str, dict[str, Any]] = {}
        self.changed = False
        self._workflow: dict[str, Any] | None = None
        # The inbox's effect results by effect id, read once per turn (waiting.results).
        self.effect_results: dict[str, Signal] | None = None

    def note_reached(self, node: TaskNode) -> None:
        """Remember the state at a top-level task as it starts (a task of the root list)."""
        stack = self.stack
        if len(stack) == 1 and stack[0].get("list") == WorkflowPlan.ROOT:
            self.reached.setdefault(node.reference, {"data": self.data, "context": self.context})

    def variable(self, name: str) -> Any:
        """A variable bound by an enclosing frame of the running thread (WorkflowScope)."""
        for frame in reversed(self.stack):
            variables = frame.get("vars")
            if variables is not None:
                return variables.get(name)
        return None

    def variables_below(self, depth: int) -> dict[str, Any] | None:
        """The variables in scope of the frames under `depth`."""
        for frame in reversed(self.stack[:depth]):
            variables = frame.get("vars")
            if variables is not None:
                return dict(variables)
        return None

    def check_deadlines(self) -> None:
        """Raise a timeout in the running thread when one of its tasks ran out of time.

        The error leaves the stack below the task that timed out, so a `try` around it may
        catch it; an attempt of a `try` that ran out may be caught by that very `try`.
        """
        expired: tuple[int, int, str, int] | None = None
        now = self.now
        for depth, frame in enumerate(self.stack):
            if "deadline" not in frame and "attemptDeadline" not in frame:
                continue
            # The frame's own timeout, then its try's attempt (which ends the attempt only).
            for when, started, below in (
                (frame.get("deadline"), frame.get("startedAt", 0), 0),
                (frame.get("attemptDeadline"), frame.get("attemptAt", 0), 1),
            ):
                if when is not None and when <= now and (expired is None or when < expired[0]):
                    expired = (when, when - started, frame["task"], depth + below)
        slot = self.slot
        if slot is not None:
            when = slot.get("deadline")
            if when is not None and when <= now and (expired is None or when < expired[0]):
                expired = (when, when - slot["startedAt"], slot["ref"], len(self.stack))
        if expired is not None:
            self.changed = True
            _, length, instance, depth = expired
            raise timeout_fault(length, instance, depth=depth)

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

    def new_slot(self, node: TaskNode, raw: Any, task_input: Any, args: TaskArguments) -> Slot:
        slot: Slot = {
            "ref": node.reference,
            "rawInput": raw,
            "input": task_input,
            "startedAt": self.now,
        }
        if node.timeout is not None:
            slot["deadline"] = self.now + self.duration(
                node.timeout, task_input, args, node.reference
            )
        return slot

    def push(
        self,
        node: TaskNode,
        raw: Any,
        task_input: Any,
        args: TaskArguments,
        task_list: str | None,
        more: Frame | None = None,
    ) -> Frame:
        """Start a composite task: its frame runs `task_list` with the task input as data."""
        frame: Frame = {
            "list": task_list,
            "index": 0,
            "task": node.reference,
            "rawInput": raw,
            "input": task_input,
            "startedAt": self.now,
        }
        if more is not None:
            frame.update(more)
        if node.timeout is not None:
            timeout = self.duration(node.timeout, task_input, args, node.reference)
            frame["deadline"] = self.now + timeout
        self.stack.append(frame)
        self.data = task_input
        return frame

    def slot_args(self, slot: Slot, node: TaskNode) -> TaskArguments:
        args = TaskArguments(self, node, slot["rawInput"], slot["startedAt"])
        args.input = slot["input"]
        args.authorization = slot.get("authorization")
        return args

    def frame_args(self, frame: Frame, node: TaskNode) -> TaskArguments:
        args = TaskArguments(self, node, frame["rawInput"], frame["startedAt"])
        args.input = frame["input"]
        return args

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
            self.export(node.export_as, output, args, ref)
        if node.export_schema is not None:
            self.validate(node.export_schema, self.context, "exported context", ref)
        self.event("task.completed", ref)
        self.data = output
        self.flow(then or node.then)

    def export(self, export_as: CompiledValue, output: Any, args: TaskArguments, ref: str) -> None:
        context = self.eval(export_as, output, args, ref)
        if not isinstance(context, dict):
            raise validation_fault(
                "export.as", f"the context must be an object, not {kind_of(context)}", ref
            )
        self.context = context

    def flow(self, directive: FlowDirective) -> None:
        kind = directive.kind
        frame = self.stack[-1]
        if kind == "continue":
            frame["index"] += 1
        elif kind == "goto":
            frame["index"] = directive.target
        elif kind == "exit":
            # A fork frame never takes a directive: its branches run their own lists.
            frame["index"] = len(self.plan.lists[frame["list"]].tasks)  # type: ignore[index]
            if frame.get("kind") == "for":
                frame["at"] = len(frame["items"])  # `exit` leaves the loop, not the iteration
        else:  # end: finish the workflow now, composites (and forks around) included
            self.stack.clear()
            if self.forks:
                raise WorkflowEndedError(self.data)

    def snapshot(self, status: str, *, output: Any = None, error: Any = None) -> InstanceState:
        state = self.state.copy()
        state["v"] = STATE_VERSION
        state["status"] = status
        state["context"] = self.context
        state["data"] = self.data
        state["stack"] = self.stack
        state["task"] = self.slot
        state["deadline"] = self.deadline
        state["output"] = output
        state["error"] = error
        state["seq"] = self.seq
        return state
