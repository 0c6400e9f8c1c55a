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

__all__ = ["CatchingTurn"]


class CatchingTurn(TurnBase):
    """try/catch/retry for the running thread."""

    def recover(self, fault: WorkflowFaultError) -> None:
        """Hand an error to the innermost `try` of the thread that catches it.

        Raises:
            WorkflowFaultError: no `try` of this thread catches it (or the handling raised).
        """
        while True:
            self.changed = True
            if not self.forks:
                # A fork branch's error reaches the root thread as the fork's: noted there.
                self.fault_point = self.position_of(fault)
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
                            self.fault_point = None  # handled: nothing to retry from
                            return
                self.stack.clear()
                self.slot = None
                raise fault
            except WorkflowFaultError as raised:
                if raised is fault:
                    raise
                fault = raised  # handling the error raised another one: handle that

    def position_of(self, fault: WorkflowFaultError) -> dict[str, Any]:
        """The frames under the task that raised `fault` and that task's raw input: with them
        the thread runs the task again from its start (the frame's index still names it)."""
        stack = self.stack
        depth = len(stack) if fault.depth is None else min(fault.depth, len(stack))
        if depth < len(stack):
            data = stack[depth].get("rawInput")  # a composite task, left whole
        elif self.slot is not None and "rawInput" in self.slot:
            data = self.slot["rawInput"]  # a task that waited: a call, a listen, a wait
        else:
            data = self.data  # a task that raised as it started: its input is the data
        task = ""
        list_ref = stack[depth - 1].get("list") if depth else None
        if list_ref is not None:
            tasks = self.plan.lists[list_ref].tasks
            index = stack[depth - 1].get("index", 0)
            if index < len(tasks):
                task = tasks[index].reference
        return {"stack": [dict(f) for f in stack[:depth]], "data": data, "task": task}

    def catch(self, frame: Frame, index: int, fault: WorkflowFaultError) -> bool:
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
            if spec.when is not None and not truthy(self.eval(spec.when, error, args, ref)):
                return False
            if spec.except_when is not None and truthy(
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
            self.stack[-1] = catch_frame
            self.data = frame["input"]
            return True
        self.stack.pop()
        self.complete_task(node, args, frame["input"])
        return True

    def retry_wanted(
        self, policy: RetryPolicy, error: dict[str, Any], args: TaskArguments, ref: str
    ) -> bool:
        if policy.when is not None and not truthy(self.eval(policy.when, error, args, ref)):
            return False
        return policy.except_when is None or not truthy(
            self.eval(policy.except_when, error, args, ref)
        )

    def schedule_retry(
        self, frame: Frame, node: TaskNode, policy: RetryPolicy, args: TaskArguments
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

    def resume_retry(self, slot: Slot) -> bool:
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

    def start_attempt(self, frame: Frame, node: TaskNode, args: TaskArguments) -> None:
        policy = node.body.catch.retry
        if policy is not None and policy.attempt_duration is not None:
            limit = self.duration(policy.attempt_duration, frame["input"], args, node.reference)
            frame["attemptDeadline"] = self.now + limit
            frame["attemptAt"] = self.now
