"""Catching errors at run time: hand an error to the `try` that catches it, retry, handle.

The rules are in retries.py (its module docstring); this is the part of a turn that applies
them to the running thread.
"""

from __future__ import annotations

from typing import Any

from okra_sidecar.engine.definitions.tasks import RetryPolicy, TaskNode
from okra_sidecar.engine.interpreter.arguments import TaskArguments
from okra_sidecar.engine.interpreter.faults import WorkflowFaultError, error_matches
from okra_sidecar.engine.interpreter.retries import jitter_ms, retry_delay_ms
from okra_sidecar.engine.interpreter.threads import Frame, Slot
from okra_sidecar.engine.interpreter.turn import TurnBase, truthy

__all__ = [
    "catch",
    "position_of",
    "recover",
    "resume_retry",
    "retry_wanted",
    "schedule_retry",
    "start_attempt",
]


def recover(turn: TurnBase, fault: WorkflowFaultError) -> None:
    """Hand an error to the innermost `try` of the thread that catches it.

    Raises:
        WorkflowFaultError: no `try` of this thread catches it (or the handling raised).
    """
    while True:
        turn.changed = True
        if not turn.forks:
            # A fork branch's error reaches the root thread as the fork's: noted there.
            turn.fault_point = position_of(turn, fault)
        if fault.task is not None and not fault.reported:
            fault.reported = True
            turn.event("task.faulted", fault.task)
        depth = len(turn.stack) if fault.depth is None else min(fault.depth, len(turn.stack))
        fault.depth = None
        try:
            for index in range(depth - 1, -1, -1):
                frame = turn.stack[index]
                if frame.get("kind") == "try":
                    del turn.stack[index + 1 :]
                    turn.slot = None
                    if catch(turn, frame, index, fault):
                        turn.fault_point = None  # handled: nothing to retry from
                        return
            turn.stack.clear()
            turn.slot = None
            raise fault
        except WorkflowFaultError as raised:
            if raised is fault:
                raise
            fault = raised  # handling the error raised another one: handle that


def position_of(turn: TurnBase, fault: WorkflowFaultError) -> dict[str, Any]:
    """The frames under the task that raised `fault` and that task's raw input: with them
    the thread runs the task again from its start (the frame's index still names it)."""
    stack = turn.stack
    depth = len(stack) if fault.depth is None else min(fault.depth, len(stack))
    if depth < len(stack):
        data = stack[depth].get("rawInput")  # a composite task, left whole
    elif turn.slot is not None and "rawInput" in turn.slot:
        data = turn.slot["rawInput"]  # a task that waited: a call, a listen, a wait
    else:
        data = turn.data  # a task that raised as it started: its input is the data
    task = ""
    list_ref = stack[depth - 1].get("list") if depth else None
    if list_ref is not None:
        tasks = turn.plan.lists[list_ref].tasks
        index = stack[depth - 1].get("index", 0)
        if index < len(tasks):
            task = tasks[index].reference
    return {"stack": [dict(f) for f in stack[:depth]], "data": data, "task": task}


def catch(turn: TurnBase, frame: Frame, index: int, fault: WorkflowFaultError) -> bool:
    """Whether the `try` of `frame` (on top of the stack) catches the error, and handle it."""
    node = turn.plan.nodes[frame["task"]]
    spec = node.body.catch
    error = fault.error
    if spec.errors is not None and not error_matches(spec.errors, error):
        return False
    variables = {**(turn.variables_below(index) or {}), spec.as_: error}
    args = TaskArguments(turn, node, frame["rawInput"], frame["startedAt"], variables=variables)
    args.input = frame["input"]
    ref = node.reference
    try:
        if spec.when is not None and not truthy(turn.eval(spec.when, error, args, ref)):
            return False
        if spec.except_when is not None and truthy(turn.eval(spec.except_when, error, args, ref)):
            return False
        frame.pop("attemptDeadline", None)
        policy = spec.retry
        if policy is not None and retry_wanted(turn, policy, error, args, ref):
            if schedule_retry(turn, frame, node, policy, args):
                return True
            if spec.do is None:
                return False  # retries exhausted and no handler: the error goes on
    except WorkflowFaultError as raised:
        raised.depth = index  # the try's own conditions failed: it cannot catch that
        raise
    if spec.do is not None:
        catch_frame: Frame = {
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
        turn.stack[-1] = catch_frame
        turn.data = frame["input"]
        return True
    turn.stack.pop()
    turn.complete_task(node, args, frame["input"])
    return True


def retry_wanted(
    turn: TurnBase, policy: RetryPolicy, error: dict[str, Any], args: TaskArguments, ref: str
) -> bool:
    if policy.when is not None and not truthy(turn.eval(policy.when, error, args, ref)):
        return False
    return policy.except_when is None or not truthy(turn.eval(policy.except_when, error, args, ref))


def schedule_retry(
    turn: TurnBase, frame: Frame, node: TaskNode, policy: RetryPolicy, args: TaskArguments
) -> bool:
    """Wait in a backoff slot before the next attempt; False when the limits say no more."""
    retry = frame.get("retries", 0) + 1
    if policy.count is not None and retry > policy.count:
        return False
    ref = node.reference
    data = frame["input"]
    delay = 0 if policy.delay is None else turn.duration(policy.delay, data, args, ref)
    delay = retry_delay_ms(policy.backoff, delay, retry)
    if policy.jitter is not None:
        low = turn.duration(policy.jitter[0], data, args, ref)
        high = turn.duration(policy.jitter[1], data, args, ref)
        delay += jitter_ms(low, high, f"{turn.state['id']}|{ref}|{retry}")
    due = turn.now + delay
    if policy.duration is not None:
        if due - frame["startedAt"] > turn.duration(policy.duration, data, args, ref):
            return False
    frame["retries"] = retry
    turn.slot = {"ref": ref, "retry": retry, "due": due}
    return True


def resume_retry(turn: TurnBase, slot: Slot) -> bool:
    if turn.now < slot["due"]:
        return False
    turn.changed = True
    turn.slot = None
    frame = turn.stack[-1]
    node = turn.plan.nodes[frame["task"]]
    turn.event("task.retried", node.reference)
    frame["index"] = 0
    turn.data = frame["input"]
    start_attempt(turn, frame, node, turn.frame_args(frame, node))
    return True


def start_attempt(turn: TurnBase, frame: Frame, node: TaskNode, args: TaskArguments) -> None:
    policy = node.body.catch.retry
    if policy is not None and policy.attempt_duration is not None:
        limit = turn.duration(policy.attempt_duration, frame["input"], args, node.reference)
        frame["attemptDeadline"] = turn.now + limit
        frame["attemptAt"] = turn.now
