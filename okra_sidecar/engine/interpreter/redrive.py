"""Retry (redrive) of a failed instance: its state put back where its uncaught error was raised.

A turn that fails an instance keeps, under RETRY_POINT, the frames under the task that raised
the error and that task's raw input (catching.py). retry_state turns that failed state into a
running one at that task, with the same `$context` (or one patched by the operator), so the
next turn runs the task again from its start. Pure: the runtime loads and commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from okra_sidecar.engine.interpreter.turn import RETRY_POINT

__all__ = ["retry_state"]


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
