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
listen correlation and router subscriptions follow events.py, the state's layout threads.py.

State values are shared with the previous state, not copied: nothing here mutates a value
once it is in a state, and callers must not either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from okra_sidecar.engine import calls
from okra_sidecar.engine.arguments import TaskArguments, datetime_descriptor
from okra_sidecar.engine.dsl import WorkflowDefinition
from okra_sidecar.engine.durations import DurationSpec
from okra_sidecar.engine.effects import RESULT_EVENT_TYPE, Effect, EffectKind
from okra_sidecar.engine.events import (
    ListenProgress,
    advance_listen,
    expected_correlation,
    read_event,
    subscriptions,
)
from okra_sidecar.engine.expressions import CompiledValue, ExpressionError
from okra_sidecar.engine.faults import (
    WorkflowFaultError,
    error_matches,
    expression_fault,
    outside_error,
    problem,
    timeout_fault,
    validation_fault,
)
from okra_sidecar.engine.pointers import kind_of
from okra_sidecar.engine.retries import jitter_ms, retry_delay_ms
from okra_sidecar.engine.tasks import (
    FlowDirective,
    ForSpec,
    RetryPolicy,
    SchemaCheck,
    SwitchCase,
    TaskNode,
    WorkflowPlan,
)
from okra_sidecar.engine.threads import awaited_effects, threads, wake_at

__all__ = [
    "STATE_VERSION",
    "InboxSignal",
    "TurnOutcome",
    "TurnResult",
    "advance",
    "start_state",
]

# 2: effects, fork branches, for/try/catch/foreach frames, `seq`. A version 1 state (no such
# parts) reads as a version 2 one.
STATE_VERSION = 2
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


@dataclass
class TurnResult:
    """What a turn did.

    `state` (JSON-serialisable) goes back unchanged into the next advance(). `outcome` RUNNING
    means the step budget ran out with more to do now. `current_step` is the reference of the
    task to run next or waited in ('' once finished); `output` is set when COMPLETED and `error`
    (RFC 7807: type, status, title, detail, instance) when FAILED. `consumed` lists the inbox
    entry ids this turn used, `wake_at_ms` when a waiting instance needs its next turn, and
    `history` the lifecycle events of the turn. `effects` is the outside work the turn asks for,
    to commit with the state; `subscriptions` (events.py) what the instance listens to while
    WAITING. `changed` is False when the turn did nothing: the caller then has nothing to write.
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
    return _Turn(definition, state, signals, now_ms, max_steps).run()


class _Turn:
    """One advance(): the running thread's parts, and what the turn gathered so far."""

    def __init__(
        self,
        definition: WorkflowDefinition,
        state: dict[str, Any],
        signals: Sequence[InboxSignal],
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
        self.stack: list[dict[str, Any]] = [dict(frame) for frame in state["stack"]]
        self.data: Any = state["data"]
        self.slot: dict[str, Any] | None = state["task"]
        self.context: Any = state["context"]
        self.deadline: int | None = state["deadline"]
        self.seq: int = state.get("seq", 0)
        self.taken: set[str] = set()
        self.consumed: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.effects: list[Effect] = []
        self.unawaited: set[str] = set()  # effects nobody waits for: emits, unawaited runs
        self.next_task = ""  # the task a thread stopped before when the budget ran out
        self.changed = False
        self._workflow: dict[str, Any] | None = None
        self._results: dict[str, InboxSignal] | None = None

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> TurnResult:
        if self.state.get("v") not in _READABLE_VERSIONS:
            raise ValueError(f"unknown state version {self.state.get('v')!r}")
        try:
            if self.state["status"] == "pending":
                self.start_workflow()
            if self.deadline is not None and self.deadline <= self.now:
                self.changed = True
                raise timeout_fault(self.deadline - self.state["startedAt"], _WORKFLOW_INSTANCE)
            status = self.run_thread()
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
                self.recover(fault)

    def _run_thread(self) -> str:
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
            tasks = lists[frame["list"]].tasks
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

    def check_deadlines(self) -> None:
        """Raise a timeout in the running thread when one of its tasks ran out of time.

        The error leaves the stack below the task that timed out, so a `try` around it may
        catch it; an attempt of a `try` that ran out may be caught by that very `try`.
        """
        expired: tuple[int, int, str, int] | None = None
        now = self.now
        for depth, frame in enumerate(self.stack):
            for key, start, below in (
                ("deadline", "startedAt", 0),
                ("attemptDeadline", "attemptAt", 1),
            ):
                when = frame.get(key)
                if when is not None and when <= now and (expired is None or when < expired[0]):
                    expired = (when, when - frame[start], frame["task"], depth + below)
        slot = self.slot
        if slot is not None:
            when = slot.get("deadline")
            if when is not None and when <= now and (expired is None or when < expired[0]):
                expired = (when, when - slot["startedAt"], slot["ref"], len(self.stack))
        if expired is not None:
            self.changed = True
            _, length, instance, depth = expired
            raise timeout_fault(length, instance, depth=depth)

    def start_task(self, node: TaskNode) -> None:
        """Run a task from its start; it completes, pushes a frame or waits in a slot."""
        raw = self.data
        args = TaskArguments(self, node, raw, self.now)
        if node.if_ is not None and not _truthy(self.eval(node.if_, raw, args, node.reference)):
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
            self.start_call(node, raw, task_input, args)
        elif kind == "for":
            self.start_for(node, raw, task_input, args)
        elif kind == "fork":
            self.start_fork(node, raw, task_input, args)
        elif kind == "try":
            frame = self.push(node, raw, task_input, args, node.body.do, kind="try")
            self.start_attempt(frame, node, args)
        elif kind == "emit":
            self.emit(node, task_input, args)
        elif kind == "run":
            self.start_run(node, raw, task_input, args)
        else:  # wait, listen: the loop resumes the slot right away
            slot = self.new_slot(node, raw, task_input, args)
            if kind == "wait":
                slot["due"] = self.now + self.duration(node.body, task_input, args, node.reference)
            else:
                self.start_listen(node, slot, task_input, args)
            self.slot = slot

    def new_slot(
        self, node: TaskNode, raw: Any, task_input: Any, args: TaskArguments
    ) -> dict[str, Any]:
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
        return slot

    def push(
        self,
        node: TaskNode,
        raw: Any,
        task_input: Any,
        args: TaskArguments,
        task_list: str | None,
        **more: Any,
    ) -> dict[str, Any]:
        """Start a composite task: its frame runs `task_list` with the task input as data."""
        frame: dict[str, Any] = {
            "list": task_list,
            "index": 0,
            "task": node.reference,
            "rawInput": raw,
            "input": task_input,
            "startedAt": self.now,
            **more,
        }
        if node.timeout is not None:
            timeout = self.duration(node.timeout, task_input, args, node.reference)
            frame["deadline"] = self.now + timeout
        self.stack.append(frame)
        self.data = task_input
        return frame

    def resume(self) -> bool:
        """Try to get the waiting task going; True when the thread may go on."""
        slot = self.slot
        assert slot is not None
        if "retry" in slot:
            return self.resume_retry(slot)
        node = self.plan.nodes[slot["ref"]]
        if "effect" in slot:
            return self.resume_effect(slot, node)
        if node.kind == "wait":
            if self.now < slot["due"]:
                return False
            self.changed = True
            self.slot = None
            self.complete_task(node, self.slot_args(slot, node), slot["input"])
            return True
        return self.resume_listen(slot, node)

    def slot_args(self, slot: dict[str, Any], node: TaskNode) -> TaskArguments:
        args = TaskArguments(self, node, slot["rawInput"], slot["startedAt"])
        args.input = slot["input"]
        args.authorization = slot.get("authorization")
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
                "export.as", f"the context must be an object, not {_json_type(context)}", ref
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
            frame["index"] = len(self.plan.lists[frame["list"]].tasks)
            if frame.get("kind") == "for":
                frame["at"] = len(frame["items"])  # `exit` leaves the loop, not the iteration
        else:  # end: finish the workflow (or the fork branch) now, composites included
            self.stack.clear()

    def finish_list(self) -> None:
        """A task list ran out: next item of a loop, or complete the composite task."""
        frame = self.stack[-1]
        kind = frame.get("kind")
        if kind == "for":
            self.next_item(frame)
            return
        if kind == "foreach":
            self.next_event(frame)
            return
        self.stack.pop()
        if "task" not in frame:
            return  # the root list, or a fork branch, ran out: the thread is done
        node = self.plan.nodes[frame["task"]]
        self.complete_task(node, self.frame_args(frame, node), self.data)

    def frame_args(self, frame: dict[str, Any], node: TaskNode) -> TaskArguments:
        args = TaskArguments(self, node, frame["rawInput"], frame["startedAt"])
        args.input = frame["input"]
        return args

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

    # -- errors: try, catch, retry -------------------------------------------------------------

    def recover(self, fault: WorkflowFaultError) -> None:
        """Hand an error to the innermost `try` of the thread that catches it.

        Raises:
            WorkflowFaultError: no `try` of this thread catches it (or the handling raised).
        """
        while True:
            self.changed = True
            if fault.task is not None and not fault.reported:
                fault.reported = True
                self.event("task.faulted", fault.task)
            depth = len(self.stack) if fault.depth is None else min(fault.depth, len(self.stack))
            fault.depth = None
            try:
                for index in range(depth - 1, -1, -1):
                    frame = self.stack[index]
                    if frame.get("kind") == "try":
                        del self.stack[index + 1 :]
                        self.slot = None
                        if self.catch(frame, index, fault):
                            return
                self.stack.clear()
                self.slot = None
                raise fault
            except WorkflowFaultError as raised:
                if raised is fault:
                    raise
                fault = raised  # handling the error raised another one: handle that

    def catch(self, frame: dict[str, Any], index: int, fault: WorkflowFaultError) -> bool:
        """Whether the `try` of `frame` (on top of the stack) catches the error, and handle it."""
        node = self.plan.nodes[frame["task"]]
        spec = node.body.catch
        error = fault.error
        if spec.errors is not None and not error_matches(spec.errors, error):
            return False
        variables = {**(self.variables_below(index) or {}), spec.as_: error}
        args = TaskArguments(self, node, frame["rawInput"], frame["startedAt"], variables=variables)
        args.input = frame["input"]
        ref = node.reference
        try:
            if spec.when is not None and not _truthy(self.eval(spec.when, error, args, ref)):
                return False
            if spec.except_when is not None and _truthy(
                self.eval(spec.except_when, error, args, ref)
            ):
                return False
            frame.pop("attemptDeadline", None)
            policy = spec.retry
            if policy is not None and self.retry_wanted(policy, error, args, ref):
                if self.schedule_retry(frame, node, policy, args):
                    return True
                if spec.do is None:
                    return False  # retries exhausted and no handler: the error goes on
        except WorkflowFaultError as raised:
            raised.depth = index  # the try's own conditions failed: it cannot catch that
            raise
        if spec.do is not None:
            catch_frame = {
                "list": spec.do,
                "index": 0,
                "kind": "catch",
                "task": ref,
                "rawInput": frame["rawInput"],
                "input": frame["input"],
                "startedAt": frame["startedAt"],
                "vars": variables,
            }
            if "deadline" in frame:
                catch_frame["deadline"] = frame["deadline"]
            self.stack[-1] = catch_frame
            self.data = frame["input"]
            return True
        self.stack.pop()
        self.complete_task(node, args, frame["input"])
        return True

    def retry_wanted(
        self, policy: RetryPolicy, error: dict[str, Any], args: TaskArguments, ref: str
    ) -> bool:
        if policy.when is not None and not _truthy(self.eval(policy.when, error, args, ref)):
            return False
        return policy.except_when is None or not _truthy(
            self.eval(policy.except_when, error, args, ref)
        )

    def schedule_retry(
        self, frame: dict[str, Any], node: TaskNode, policy: RetryPolicy, args: TaskArguments
    ) -> bool:
        """Wait in a backoff slot before the next attempt; False when the limits say no more."""
        retry = frame.get("retries", 0) + 1
        if policy.count is not None and retry > policy.count:
            return False
        ref = node.reference
        data = frame["input"]
        delay = 0 if policy.delay is None else self.duration(policy.delay, data, args, ref)
        delay = retry_delay_ms(policy.backoff, delay, retry)
        if policy.jitter is not None:
            low = self.duration(policy.jitter[0], data, args, ref)
            high = self.duration(policy.jitter[1], data, args, ref)
            delay += jitter_ms(low, high, f"{self.state['id']}|{ref}|{retry}")
        due = self.now + delay
        if policy.duration is not None:
            if due - frame["startedAt"] > self.duration(policy.duration, data, args, ref):
                return False
        frame["retries"] = retry
        self.slot = {"ref": ref, "retry": retry, "due": due}
        return True

    def resume_retry(self, slot: dict[str, Any]) -> bool:
        if self.now < slot["due"]:
            return False
        self.changed = True
        self.slot = None
        frame = self.stack[-1]
        node = self.plan.nodes[frame["task"]]
        self.event("task.retried", node.reference)
        frame["index"] = 0
        self.data = frame["input"]
        self.start_attempt(frame, node, self.frame_args(frame, node))
        return True

    def start_attempt(self, frame: dict[str, Any], node: TaskNode, args: TaskArguments) -> None:
        policy = node.body.catch.retry
        if policy is not None and policy.attempt_duration is not None:
            limit = self.duration(policy.attempt_duration, frame["input"], args, node.reference)
            frame["attemptDeadline"] = self.now + limit
            frame["attemptAt"] = self.now

    # -- for, fork -----------------------------------------------------------------------------

    def start_for(self, node: TaskNode, raw: Any, task_input: Any, args: TaskArguments) -> None:
        spec: ForSpec = node.body
        items = self.eval(spec.collection, task_input, args, node.reference)
        if items is None:
            items = []
        if not isinstance(items, list):
            detail = f"'for.in' must give an array to enumerate, not {kind_of(items)}"
            raise WorkflowFaultError(problem("expression", detail=detail, instance=node.reference))
        frame = self.push(node, raw, task_input, args, spec.do, kind="for", items=items, at=-1)
        self.next_item(frame)

    def next_item(self, frame: dict[str, Any]) -> None:
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
            if spec.condition is None or _truthy(
                self.eval(spec.condition, self.data, args, node.reference)
            ):
                return
        self.stack.pop()
        self.complete_task(node, self.frame_args(frame, node), self.data)

    def start_fork(self, node: TaskNode, raw: Any, task_input: Any, args: TaskArguments) -> None:
        outer = self.variables_below(len(self.stack))
        branches = []
        for reference in node.body.branches:
            root: dict[str, Any] = {"list": reference, "index": 0}
            if outer:
                root["vars"] = outer
            branches.append({"stack": [root], "data": task_input, "task": None})
        self.push(node, raw, task_input, args, None, kind="fork", branches=branches)

    def run_fork(self, frame: dict[str, Any]) -> str:
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
                self.stack = [dict(f) for f in branch["stack"]]
                self.data = branch["data"]
                self.slot = branch["task"]
                ran = self.run_thread()
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

    # -- outside work --------------------------------------------------------------------------

    def next_effect_id(self) -> str:
        self.seq += 1
        return f"e{self.seq}"

    def ask(
        self, kind: EffectKind, node: TaskNode, request: dict[str, Any], slot: dict[str, Any] | None
    ) -> str:
        """Record an effect; with a slot, the task waits in it for the result."""
        effect_id = self.next_effect_id()
        timeout_ms = None
        if slot is not None:
            slot["effect"] = effect_id
            ends = [w for w in (slot.get("deadline"), self.deadline) if w is not None]
            timeout_ms = max(min(ends) - self.now, 0) if ends else None
            self.slot = slot
        else:
            self.unawaited.add(effect_id)
        self.effects.append(Effect(effect_id, kind, node.reference, request, timeout_ms))
        return effect_id

    def start_call(self, node: TaskNode, raw: Any, task_input: Any, args: TaskArguments) -> None:
        body = node.body
        if isinstance(body, calls.FunctionCall):
            value = task_input
            if body.arguments is not None:
                value = self.eval(body.arguments, task_input, args, node.reference)
            self.push(node, raw, task_input, args, body.do)
            self.data = value  # the function's raw input is its arguments
            return
        try:
            request = body.request(task_input, args)
        except ExpressionError as exc:
            raise expression_fault(exc, node.reference) from None
        slot = self.new_slot(node, raw, task_input, args)
        if args.authorization is not None:
            slot["authorization"] = args.authorization
        self.ask(body.kind, node, request, slot)

    def start_run(self, node: TaskNode, raw: Any, task_input: Any, args: TaskArguments) -> None:
        body: calls.RunWorkflow = node.body
        try:
            request = body.request(task_input, args)
        except ExpressionError as exc:
            raise expression_fault(exc, node.reference) from None
        if body.wait:
            self.ask(body.kind, node, request, self.new_slot(node, raw, task_input, args))
        else:
            self.ask(body.kind, node, request, None)
            self.complete_task(node, args, task_input)

    def emit(self, node: TaskNode, task_input: Any, args: TaskArguments) -> None:
        body: calls.EmitEvent = node.body
        effect_id = f"e{self.seq + 1}"
        time_iso = datetime_descriptor(self.now)["iso8601"]
        try:
            event = body.build(
                task_input, args, event_id=f"{self.state['id']}:{effect_id}", time_iso=time_iso
            )
        except ExpressionError as exc:
            raise expression_fault(exc, node.reference) from None
        self.ask(body.kind, node, {"event": event}, None)
        self.complete_task(node, args, event)

    def results(self) -> dict[str, InboxSignal]:
        """Effect results in the inbox by effect id (the first of duplicates)."""
        if self._results is None:
            self._results = {}
            for signal in self.signals:
                event = signal.event
                if event.get("type") != RESULT_EVENT_TYPE:
                    continue
                data = event.get("data")
                effect_id = data.get("effectId") if isinstance(data, dict) else None
                if isinstance(effect_id, str) and effect_id not in self._results:
                    self._results[effect_id] = signal
        return self._results

    def take(self, signal: InboxSignal) -> None:
        self.changed = True
        self.taken.add(signal.entry_id)
        self.consumed.append(signal.entry_id)

    def resume_effect(self, slot: dict[str, Any], node: TaskNode) -> bool:
        signal = self.results().get(slot["effect"])
        if signal is None or signal.entry_id in self.taken:
            return False
        self.take(signal)
        self.slot = None
        data = signal.event.get("data")
        if not isinstance(data, dict):
            data = {}
        if data.get("ok") is not True:
            error = outside_error(data.get("error"), node.reference)
            raise WorkflowFaultError(error, task=node.reference)
        value = data.get("value")
        if isinstance(node.body, calls.RunWorkflow) and not node.body.returns:
            value = None
        self.complete_task(node, self.slot_args(slot, node), value)
        return True

    def drop_stale_results(self) -> None:
        """Consume the effect results nobody waits for any more: they would never be used."""
        awaited = awaited_effects(self.stack, self.slot)
        for signal in self.signals:
            if signal.entry_id in self.taken or signal.event.get("type") != RESULT_EVENT_TYPE:
                continue
            data = signal.event.get("data")
            effect_id = data.get("effectId") if isinstance(data, dict) else None
            # The first result of an awaited effect stays for its task; duplicates go.
            if effect_id not in awaited or self.results().get(effect_id) is not signal:
                self.take(signal)

    # -- listen --------------------------------------------------------------------------------

    def start_listen(
        self, node: TaskNode, slot: dict[str, Any], task_input: Any, args: TaskArguments
    ) -> None:
        try:
            keys = expected_correlation(node.body.to, task_input, args)
        except ExpressionError as exc:
            raise expression_fault(exc, node.reference) from None
        if keys:
            slot["corr"] = keys
        if node.body.foreach is not None:
            slot.update(queue=[], outputs=[], n=0, done=False)

    def resume_listen(self, slot: dict[str, Any], node: TaskNode) -> bool:
        spec = node.body
        args = self.slot_args(slot, node)
        progress = ListenProgress(slot)
        before = len(progress.events)
        done = slot.get("done", False)
        if not done:
            try:
                consumed, done = advance_listen(
                    spec.to, spec.read, progress, self.signals, self.taken, args
                )
            except ExpressionError as exc:
                raise expression_fault(exc, node.reference) from None
            if consumed:
                self.changed = True
                self.consumed.extend(consumed)
                slot = {**slot, **progress.to_state()}
                if spec.foreach is not None:
                    queue = slot["queue"] + progress.events[before:]
                    slot = {**slot, "queue": queue, "done": done}
                self.slot = slot
        if spec.foreach is not None:
            return self.next_listened(slot, node)
        if not done:
            return False
        self.changed = True
        self.slot = None
        output = [read_event(event, spec.read) for event in progress.events]
        self.complete_task(node, args, output)
        return True

    def next_listened(self, slot: dict[str, Any], node: TaskNode) -> bool:
        """`foreach`: run the tasks for the next queued event, or complete the listen."""
        spec = node.body
        foreach = spec.foreach
        while slot["queue"]:
            self.changed = True
            event, *rest = slot["queue"]
            item = read_event(event, spec.read)
            outer = self.variables_below(len(self.stack)) or {}
            variables = {**outer, foreach.item: item, foreach.at: slot["n"]}
            saved = {**slot, "queue": rest}
            if foreach.do is None:
                args = self.slot_args(slot, node)
                args.variables = variables
                slot = self.listened(node, args, saved, item)
                continue
            frame = {
                "list": foreach.do,
                "index": 0,
                "kind": "foreach",
                "task": node.reference,
                "rawInput": slot["rawInput"],
                "input": slot["input"],
                "startedAt": slot["startedAt"],
                "listen": saved,
                "vars": variables,
            }
            if "deadline" in slot:
                frame["deadline"] = slot["deadline"]
            self.slot = None
            self.stack.append(frame)
            self.data = item
            return True
        self.slot = slot
        if not slot["done"]:
            return False
        self.changed = True
        self.slot = None
        self.complete_task(node, self.slot_args(slot, node), slot["outputs"])
        return True

    def next_event(self, frame: dict[str, Any]) -> None:
        """The tasks of one listened event ran: record its output and go back to the listen."""
        node = self.plan.nodes[frame["task"]]
        args = self.frame_args(frame, node)
        saved = self.listened(node, args, frame["listen"], self.data)
        self.stack.pop()
        self.slot = saved

    def listened(
        self, node: TaskNode, args: TaskArguments, saved: dict[str, Any], output: Any
    ) -> dict[str, Any]:
        """Apply foreach.output and foreach.export to one event's output; the updated slot."""
        foreach = node.body.foreach
        ref = node.reference
        if foreach.output_as is not None or foreach.export_as is not None:
            args.set_raw_output(output)
        if foreach.output_as is not None:
            output = self.eval(foreach.output_as, output, args, ref)
        if foreach.output_schema is not None:
            self.validate(foreach.output_schema, output, "foreach output", ref)
        if foreach.export_as is not None:
            args.output = output
            self.export(foreach.export_as, output, args, ref)
        if foreach.export_schema is not None:
            self.validate(foreach.export_schema, self.context, "exported context", ref)
        return {**saved, "outputs": [*saved["outputs"], output], "n": saved["n"] + 1}

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

    def blocked(self) -> TurnResult:
        current = ""
        found: list[dict[str, Any]] = []
        nodes = self.plan.nodes
        for frames, waiting in threads(self.stack, self.slot):
            if waiting is not None:
                current = current or waiting["ref"]
                node = nodes[waiting["ref"]]
                if node.kind == "listen" and not waiting.get("done"):
                    found.extend(
                        subscriptions(node.reference, node.body.to, waiting.get("corr", {}))
                    )
            for frame in frames:
                listen = frame.get("listen")
                if listen is not None and not listen.get("done"):
                    node = nodes[frame["task"]]
                    found.extend(
                        subscriptions(node.reference, node.body.to, listen.get("corr", {}))
                    )
        wake = wake_at(self.stack, self.slot, self.deadline)
        result = self.result(TurnOutcome.WAITING, current, wake_at_ms=wake)
        result.subscriptions = found
        return result

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
        if self.signals:
            self.drop_stale_results()
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
            effects=effects,
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
