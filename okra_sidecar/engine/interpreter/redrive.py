"""Retry (redrive) of a failed instance: its state put back where its uncaught error was raised;
Reset of an ended or waiting instance: its state put back at a top-level task.

A turn that fails an instance keeps, under RETRY_POINT, the frames under the task that raised
the error and that task's raw input (catching.py). retry_state turns that failed state into a
running one at that task, with the same `$context` (or one patched by the operator), so the
next turn runs the task again from its start. reset_state does the same for a top-level task
from the data and `$context` the instance had when it first started it (TurnResult.reached, kept
by the store). Pure: the runtime loads and commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from okra_sidecar.engine.definitions.tasks import WorkflowPlan
from okra_sidecar.engine.interpreter.turn import RETRY_POINT

__all__ = ["reset_state", "retry_state", "top_level_tasks"]


def retry_state(
    state: Mapping[str, Any], *, variables: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], str] | None:
    """The running state a Retry commits and the pointer of the task it runs again; None when
    the failure left no task to run again (the workflow's input or its own timeout failed it,
    or the state is not a failed one).

    Args:
        state: a failed instance's state, as the turn that failed it committed it.
        variables: `$context` entries to set (each replaces the entry of the same name).
    """
    point = state.get(RETRY_POINT)
    if state.get("status") != "failed" or not isinstance(point, Mapping) or not point["stack"]:
        return None
    retried = {key: value for key, value in state.items() if key != RETRY_POINT}
    retried.update(
        status="running",
        stack=[dict(frame) for frame in point["stack"]],
        data=point["data"],
        task=None,
        output=None,
        error=None,
    )
    if variables:
        context = state.get("context")
        retried["context"] = {**(context if isinstance(context, Mapping) else {}), **variables}
    return retried, str(point.get("task", ""))


def top_level_tasks(plan: WorkflowPlan) -> list[str]:
    """The JSON pointers of the workflow's top-level tasks, in order: what Reset goes back to."""
    return [node.reference for node in plan.lists[WorkflowPlan.ROOT].tasks]


def reset_state(
    state: Mapping[str, Any], plan: WorkflowPlan, task: str, point: Mapping[str, Any]
) -> dict[str, Any]:
    """The running state a Reset commits: about to start the top-level `task` with the data
    and `$context` of `point` (what the instance had when it first reached it).

    The effect counter (`seq`) and the workflow's deadline stay as they are: effect ids stay
    unique for the instance's whole life, so results of effects from before the reset find
    no task waiting for them and are dropped.
    """
    reset = {key: value for key, value in state.items() if key != RETRY_POINT}
    reset.update(
        status="running",
        stack=[{"list": WorkflowPlan.ROOT, "index": top_level_tasks(plan).index(task)}],
        data=point.get("data"),
        context=point.get("context") or {},
        task=None,
        output=None,
        error=None,
    )
    return reset
