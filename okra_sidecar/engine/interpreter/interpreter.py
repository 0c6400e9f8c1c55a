"""The pure interpreter: (definition, state, inbox signals, now) -> new state and effects.

A turn runs tasks from the saved positions until the instance blocks (a listen without a
matching event, a wait or a retry backoff not yet due, an effect without its result), ends,
faults or uses its step budget. It does no I/O, reads no clock but `now_ms`, draws no random
number and never mutates the state it is given, so the runner may re-run a turn after a crash
and get the same result, effects and effect ids included.

Outside work (calls, child workflows, emitted events) leaves a turn as Effects (effects.py,
request shapes in calls.py). A task that asks for one waits in it (WAITING, `current_step` the
task) until the result event (`io.okra.effect.result`, data {effectId, ok, value, error}) is
in `signals`: the turn consumes it and goes on with `value` as the task's raw output, or raises
`error` in the task, where a `try` may catch it. Effect ids ("e1", "e2", ...) come from a
counter in the state, so they are unique for the instance's whole life; a result nobody waits
for any more (the task timed out, a `compete` fork's losers, a duplicate, an emit's) is
consumed and dropped. `emit` does not wait: the task completes at once with the event as its
output. Effects asked for and abandoned within the same turn are not returned.

Fork branches run in the same turn, one after the other, each up to where it blocks; a branch
that ends first in declaration order wins a `compete`. Error handling follows retries.py,
listen correlation and router subscriptions follow listening.py, the state's layout threads.py.

State values are shared with the previous state, not copied: nothing here mutates a value
once it is in a state, and callers must not either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

from okra_sidecar.engine.definitions.dsl import WorkflowDefinition
from okra_sidecar.engine.definitions.pointers import kind_of
from okra_sidecar.engine.definitions.tasks import (
    FlowDirective,
    ForSpec,
    SwitchCase,
    TaskNode,
    WorkflowPlan,
)
from okra_sidecar.engine.interpreter.arguments import TaskArguments
from okra_sidecar.engine.interpreter.catching import recover, resume_retry, start_attempt
from okra_sidecar.engine.interpreter.effects import Effect
from okra_sidecar.engine.interpreter.faults import WorkflowFaultError, problem, timeout_fault
from okra_sidecar.engine.interpreter.listening import subscriptions
from okra_sidecar.engine.interpreter.threads import (
    Branch,
    Frame,
    InstanceState,
    awaited_effects,
    threads,
    wake_at,
)
from okra_sidecar.engine.interpreter.turn import (
    STATE_VERSION,
    TurnBase,
    WorkflowEndedError,
    truthy,
)
from okra_sidecar.engine.interpreter.waiting import (
    drop_stale_results,
    emit,
    next_event,
    resume_effect,
    resume_listen,
    start_call,
    start_listen,
    start_run,
)
from okra_sidecar.engine.runtime import board as turn_board

__all__ = [
    "STATE_VERSION",
    "InboxSignal",
    "TurnOutcome",
    "TurnResult",
    "advance",
    "start_state",
]

_READABLE_VERSIONS = (1, 2)
_WORKFLOW_INSTANCE = "/"  # the `instance` of errors raised by the workflow itself
# How a thread stopped running in a turn.
_DONE = "done"
_BLOCKED = "blocked"
_BUDGET = "budget"


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


_FINISHED = (TurnOutcome.COMPLETED, TurnOutcome.FAILED)


@dataclass
class TurnResult:
    """What a turn did.

    `state` (JSON-serialisable) goes back unchanged into the next advance(). `outcome` RUNNING
    means the step budget ran out with more to do now. `current_step` is the reference of the
    task to run next or waited in ('' once finished); `output` is set when COMPLETED and `error`
    (RFC 7807: type, status, title, detail, instance) when FAILED. `consumed` lists the inbox
    entry ids this turn used, `wake_at_ms` when a waiting instance needs its next turn, and
    `history` the lifecycle events of the turn. `effects` is the outside work the turn asks for,
    to commit with the state; `subscriptions` (listening.py) what the instance listens to while
    WAITING. `changed` is False when the turn did nothing: the caller then has nothing to write.
    `reached` maps each top-level task started in the turn to its data and `$context` then.
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
    effects: list[Effect] = field(default_factory=list)
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    reached: dict[str, dict[str, Any]] = field(default_factory=dict)


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
        "seq": 0,
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
    # The state is one this module wrote (start_state or a TurnResult), back from JSON.
    return _Turn(definition, cast(InstanceState, state), signals, now_ms, max_steps).run()


def _as_json(state: InstanceState) -> dict[str, Any]:
    """The state as the store keeps it: a JSON object (the same dict, typed for the caller)."""
    return cast("dict[str, Any]", state)


class _Turn(TurnBase):
    """One advance(): runs the threads of the instance (turn.py holds their parts); the
    functions of catching.py (try, catch, retry) and waiting.py (effects, listens) work on it."""

    def run(self) -> TurnResult:
        if self.state.get("v") not in _READABLE_VERSIONS:
            raise ValueError(f"unknown state version {self.state.get('v')!r}")
        try:
            if self.state["status"] == "pending":
                self.start_workflow()
            if self.deadline is not None and self.deadline <= self.now:
                self.changed = True
                raise timeout_fault(self.deadline - self.state["startedAt"], _WORKFLOW_INSTANCE)
            try:
                status = self.run_thread()
            except WorkflowEndedError as ended:
                # Every other branch is abandoned: the workflow's output is the ending one's.
                self.stack, self.slot, self.data = [], None, ended.data
                status = _DONE
            if status == _DONE:
                return self.complete_workflow()
        except WorkflowFaultError as fault:
            return self.fail(fault)
        if status == _BUDGET:
            return self.result(TurnOutcome.RUNNING, self.next_task)
        return self.blocked()

    def run_thread(self) -> str:
        """Run the loaded thread until it is done, blocks or the budget runs out.

        Raises:
            WorkflowFaultError: an error no `try` of this thread catches.
        """
        while True:
            try:
                return self._run_thread()
            except WorkflowFaultError as fault:
                recover(self, fault)

    def _run_thread(self) -> str:
        if self.slot is not None or len(self.stack) > 1:  # a root frame has no deadline
            self.check_deadlines()
        lists = self.plan.lists
        while True:
            if self.slot is not None and not self.resume():
                return _BLOCKED
            stack = self.stack
            if not stack:
                return _DONE
            frame = stack[-1]
            if "branches" in frame:
                status = self.run_fork(frame)
                if status != _DONE:
                    return status
                continue
            # Not a fork frame (those have branches), so it names its task list.
            tasks = lists[frame["list"]].tasks  # type: ignore[index]
            index = frame["index"]
            if index >= len(tasks):
                self.finish_list()
                continue
            if self.steps >= self.max_steps:
                self.next_task = tasks[index].reference
                return _BUDGET
            self.steps += 1
            self.changed = True
            self.start_task(tasks[index])

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

    def start_task(self, node: TaskNode) -> None:
        """Run a task from its start; it completes, pushes a frame or waits in a slot."""
        turn_board.current().enter_task(node.reference)
        self.note_reached(node)
        raw = self.data
        args = TaskArguments(self, node, raw, self.now)
        if node.if_ is not None and not truthy(self.eval(node.if_, raw, args, node.reference)):
            self.stack[-1]["index"] += 1  # skipped: the raw input passes through
            return
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
            self.push(node, raw, task_input, args, node.body)
        elif kind == "raise":
            raise WorkflowFaultError(self.raised(node, task_input, args), task=node.reference)
        elif kind == "call":
            start_call(self, node, raw, task_input, args)
        elif kind == "for":
            self.start_for(node, raw, task_input, args)
        elif kind == "fork":
            self.start_fork(node, raw, task_input, args)
        elif kind == "try":
            frame = self.push(node, raw, task_input, args, node.body.do, {"kind": "try"})
            start_attempt(self, frame, node, args)
        elif kind == "emit":
            emit(self, node, task_input, args)
        elif kind == "run":
            start_run(self, node, raw, task_input, args)
        else:  # wait, listen: the loop resumes the slot right away
            slot = self.new_slot(node, raw, task_input, args)
            if kind == "wait":
                slot["due"] = self.now + self.duration(node.body, task_input, args, node.reference)
            else:
                start_listen(self, node, slot, task_input, args)
            self.slot = slot

    def resume(self) -> bool:
        """Try to get the waiting task going; True when the thread may go on."""
        slot = self.slot
        assert slot is not None
        turn_board.current().enter_task(slot["ref"])
        if "retry" in slot:
            return resume_retry(self, slot)
        node = self.plan.nodes[slot["ref"]]
        if "effect" in slot:
            return resume_effect(self, slot, node)
        if node.kind == "wait":
            if self.now < slot["due"]:
                return False
            self.changed = True
            self.slot = None
            self.complete_task(node, self.slot_args(slot, node), slot["input"])
            return True
        return resume_listen(self, slot, node)

    def finish_list(self) -> None:
        """A task list ran out: next item of a loop, or complete the composite task."""
        frame = self.stack[-1]
        kind = frame.get("kind")
        if kind == "for":
            self.next_item(frame)
            return
        if kind == "foreach":
            next_event(self, frame)
            return
        self.stack.pop()
        if "task" not in frame:
            return  # the root list, or a fork branch, ran out: the thread is done
        node = self.plan.nodes[frame["task"]]
        self.complete_task(node, self.frame_args(frame, node), self.data)

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

    def start_for(self, node: TaskNode, raw: Any, task_input: Any, args: TaskArguments) -> None:
        spec: ForSpec = node.body
        items = self.eval(spec.collection, task_input, args, node.reference)
        if items is None:
            items = []
        if not isinstance(items, list):
            detail = f"'for.in' must give an array to enumerate, not {kind_of(items)}"
            raise WorkflowFaultError(problem("expression", detail=detail, instance=node.reference))
        frame = self.push(
            node, raw, task_input, args, spec.do, {"kind": "for", "items": items, "at": -1}
        )
        self.next_item(frame)

    def next_item(self, frame: Frame) -> None:
        """Start the loop's next iteration with the current data, or complete the loop."""
        node = self.plan.nodes[frame["task"]]
        spec: ForSpec = node.body
        at = frame["at"] + 1
        items = frame["items"]
        if at < len(items):
            outer = self.variables_below(len(self.stack) - 1) or {}
            frame["vars"] = {**outer, spec.each: items[at], spec.at: at}
            frame["at"] = at
            frame["index"] = 0
            args = self.frame_args(frame, node)
            if spec.condition is None or truthy(
                self.eval(spec.condition, self.data, args, node.reference)
            ):
                return
        self.stack.pop()
        self.complete_task(node, self.frame_args(frame, node), self.data)

    def start_fork(self, node: TaskNode, raw: Any, task_input: Any, args: TaskArguments) -> None:
        outer = self.variables_below(len(self.stack))
        branches: list[Branch] = []
        for reference in node.body.branches:
            root: Frame = {"list": reference, "index": 0}
            if outer:
                root["vars"] = outer
            branches.append({"stack": [root], "data": task_input, "task": None})
        self.push(node, raw, task_input, args, None, {"kind": "fork", "branches": branches})

    def run_fork(self, frame: Frame) -> str:
        """Run every branch of the fork on top of the stack; complete it when it may."""
        node = self.plan.nodes[frame["task"]]
        compete = node.body.compete
        parent = (self.stack, self.data, self.slot)
        branches = list(frame["branches"])
        frame["branches"] = branches
        status = _DONE
        winner: int | None = None
        try:
            for index, branch in enumerate(branches):
                if branch.get("done"):
                    continue
                self.stack = [f.copy() for f in branch["stack"]]
                self.data = branch["data"]
                self.slot = branch["task"]
                self.forks += 1
                try:
                    ran = self.run_thread()
                finally:
                    self.forks -= 1
                if ran == _DONE:
                    branches[index] = {"done": True, "output": self.data}
                    if compete:
                        winner = index
                        break
                    continue
                branches[index] = {"stack": self.stack, "data": self.data, "task": self.slot}
                status = _BLOCKED if status == _DONE else status
                if ran == _BUDGET:
                    status = _BUDGET
                    break
        except WorkflowFaultError as fault:
            # A branch's uncaught error is the fork's: it leaves the fork's frame.
            self.stack, self.data, self.slot = parent
            fault.depth = len(self.stack) - 1
            raise
        self.stack, self.data, self.slot = parent
        if winner is not None:
            for loser in branches:
                if not loser.get("done"):
                    for _, waiting in threads(loser["stack"], loser["task"]):
                        if waiting is not None:
                            self.event("task.cancelled", waiting["ref"])
            output = branches[winner]["output"]
        elif status != _DONE:
            return status
        else:
            output = [branch["output"] for branch in branches]
        self.changed = True
        self.stack.pop()
        self.complete_task(node, self.frame_args(frame, node), output)
        return _DONE

    def switch(
        self, cases: tuple[SwitchCase, ...], data: Any, args: TaskArguments, node: TaskNode
    ) -> FlowDirective | None:
        default = None
        for case in cases:
            if case.when is None:
                default = case.then
            elif truthy(self.eval(case.when, data, args, node.reference)):
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

    def blocked(self) -> TurnResult:
        current = ""
        for _, waiting in threads(self.stack, self.slot):
            if waiting is not None:
                current = waiting["ref"]
                break
        wake = wake_at(self.stack, self.slot, self.deadline)
        return self.result(TurnOutcome.WAITING, current, wake_at_ms=wake)

    def listening(self) -> list[dict[str, Any]]:
        """The subscriptions of every listen still open in the threads (listening.py)."""
        found: list[dict[str, Any]] = []
        nodes = self.plan.nodes
        for frames, waiting in threads(self.stack, self.slot):
            listens = [] if waiting is None else [(waiting["ref"], waiting)]
            listens.extend((f["task"], f["listen"]) for f in frames if "listen" in f)
            for ref, listen in listens:
                node = nodes[ref]
                if node.kind == "listen" and not listen.get("done"):
                    keys = listen.get("corr", {})
                    found.extend(subscriptions(node.reference, node.body.to, keys))
        return found

    def fail(self, fault: WorkflowFaultError) -> TurnResult:
        self.changed = True
        error = fault.error
        if fault.task is not None and not fault.reported:
            self.event("task.faulted", fault.task)
        self.history.append({"type": "workflow.faulted", "time": self.now, "error": error["type"]})
        self.stack = []
        self.slot = None
        state = self.snapshot("failed", error=error)
        state["data"] = None
        if self.fault_point is not None:
            state["retryFrom"] = self.fault_point  # RETRY_POINT (redrive.py reads it)
        return self.result(TurnOutcome.FAILED, "", state=state, error=error)

    def result(
        self,
        outcome: TurnOutcome,
        current_step: str,
        *,
        state: InstanceState | None = None,
        output: Any = None,
        error: dict[str, Any] | None = None,
        wake_at_ms: int | None = None,
    ) -> TurnResult:
        if self.signals:
            drop_stale_results(
                self,
            )
        effects = self.effects
        if effects:
            # Effects abandoned within the turn (a timeout, a compete's loser) need not run.
            awaited = awaited_effects(self.stack, self.slot) | self.unawaited
            effects = [e for e in effects if e.effect_id in awaited]
        if not self.changed:
            # Nothing happened (e.g. woke up early): hand back the very same state.
            state = self.state
        elif state is None:
            state = self.snapshot(outcome.value)
        return TurnResult(
            state=_as_json(state),
            outcome=outcome,
            current_step=current_step,
            output=output,
            error=error,
            context=self.context,
            consumed=self.consumed,
            wake_at_ms=wake_at_ms,
            history=self.history,
            changed=self.changed,
            effects=effects,
            subscriptions=[] if outcome in _FINISHED else self.listening(),
            reached=self.reached,
        )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)
