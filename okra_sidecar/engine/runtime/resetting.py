"""Reset: an ended or waiting instance taken back to one of its top-level tasks (for the api)."""

from __future__ import annotations

from okra_sidecar.engine.interpreter.redrive import reset_state, top_level_tasks
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.errors import (
    FailedPreconditionError,
    FieldViolation,
    InstanceChangedError,
    InvalidInputError,
    PreconditionViolation,
    Reason,
    instance_kept_changing,
    instance_not_found,
)
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.base import Store
from okra_sidecar.store.turn_store import RESET_POINT_BUDGET

__all__ = ["reset_instance"]

# A state built for a Reset is committed only if nothing changed since it was read.
RESET_ATTEMPTS = 8


async def reset_instance(
    store: Store,
    registry: WorkflowRegistry,
    instance_id: str,
    *,
    task: str,
    reason: str,
    now_ms: int,
    expect_status: str | None = None,
) -> tuple[str, InstanceStatus]:
    """Take an instance back to the top-level `task`; (its workflow id, the status it had).

    Raises:
        NotFoundError: no such instance (or its workflow is no longer registered).
        InvalidInputError: `task` is not a top-level task of its workflow.
        InstanceChangedError: the status is no longer `expect_status` (the one the policies
            decided on); nothing was written.
        FailedPreconditionError: it is not ended or waiting, never reached `task`, its state
            there was not kept, or it kept changing.
    """
    for _ in range(RESET_ATTEMPTS):
        snapshot = await store.load_turn(instance_id)
        if snapshot is None:
            raise instance_not_found(instance_id)
        if expect_status is not None and snapshot.status.value != expect_status:
            raise InstanceChangedError(instance_id, snapshot.status.value)
        plan = (await registry.get(snapshot.workflow_id)).definition.plan
        tasks = top_level_tasks(plan)
        if task not in tasks:
            raise _unknown_task(task, snapshot.workflow_id, tasks)
        point = await store.reset_point(instance_id, task)
        if not point:
            raise _no_point(instance_id, task, kept=point is None)
        # A status reset.lua refuses (running, pending, suspended) is answered by the store.
        state = reset_state(snapshot.state, plan, task, point)
        workflow_id = await store.reset(
            instance_id,
            revision=snapshot.revision,
            state=state,
            reason=reason,
            task=task,
            previous=snapshot.status.value,
            now_ms=now_ms,
        )
        if workflow_id is not None:
            return workflow_id, snapshot.status
    raise instance_kept_changing(instance_id, "being reset")


def _unknown_task(task: str, workflow_id: str, tasks: list[str]) -> InvalidInputError:
    listed = ", ".join(tasks)
    description = (
        f"{task[:200]!r} is not a top-level task of {workflow_id}; it has {listed}"
        if task
        else f"must name a top-level task of {workflow_id}: {listed}"
    )
    error = InvalidInputError(
        f"task: {description}", [FieldViolation("task", description)], reason=Reason.UNKNOWN_TASK
    )
    error.metadata.update(workflow=workflow_id, tasks=listed)
    return error


def _no_point(instance_id: str, task: str, *, kept: bool) -> FailedPreconditionError:
    if kept:
        return FailedPreconditionError(
            f"instance {instance_id} never reached {task}, so there is no state to go back "
            "to; its history shows the tasks it started",
            reason=Reason.TASK_NOT_REACHED,
            violation=PreconditionViolation(
                "RESET_POINT", f"instance/{instance_id}", f"the instance must have reached {task}"
            ),
            metadata={"instance": instance_id, "task": task},
        )
    return FailedPreconditionError(
        f"instance {instance_id}'s state at {task} was not kept: its reset points would have "
        f"taken more than {RESET_POINT_BUDGET} bytes; reset it to an earlier task",
        reason=Reason.RESET_POINT_NOT_KEPT,
        violation=PreconditionViolation(
            "RESET_POINT", f"instance/{instance_id}", f"its state at {task} must have been kept"
        ),
        metadata={"instance": instance_id, "task": task, "limit": str(RESET_POINT_BUDGET)},
    )
