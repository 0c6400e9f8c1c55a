"""Retry: a failed instance run again from the task that failed it (for the api and bulk)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from okra_sidecar.engine.interpreter.redrive import retry_state
from okra_sidecar.errors import (
    FailedPreconditionError,
    Reason,
    instance_kept_changing,
    instance_not_failed,
    instance_not_found,
    instance_status_violation,
)
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.base import Store

__all__ = ["retry_instance"]

# A state built for a Retry is committed only if nothing changed since it was read.
RETRY_ATTEMPTS = 8


async def retry_instance(
    store: Store,
    instance_id: str,
    *,
    reason: str,
    now_ms: int,
    variables: Mapping[str, Any] | None = None,
    operation: str = "",
) -> tuple[str, str]:
    """Run a failed instance again from the task that failed it; (its workflow id, the task).

    Raises:
        NotFoundError: no such instance.
        FailedPreconditionError: it has not failed, failed outside any task, or kept changing.
    """
    for _ in range(RETRY_ATTEMPTS):
        snapshot = await store.load_turn(instance_id)
        if snapshot is None:
            raise instance_not_found(instance_id)
        if snapshot.status is not InstanceStatus.FAILED:
            raise instance_not_failed(instance_id, snapshot.status.value)
        redrive = retry_state(snapshot.state, variables=variables)
        if redrive is None:
            raise FailedPreconditionError(
                f"instance {instance_id} failed outside any task (its workflow's timeout or "
                "input), so no task can run again; start a new instance",
                reason=Reason.NOTHING_TO_RETRY,
                violation=instance_status_violation(
                    instance_id, "the instance must have failed in a task"
                ),
                metadata={"instance": instance_id},
            )
        state, task = redrive
        workflow_id = await store.retry(
            instance_id,
            revision=snapshot.revision,
            state=state,
            reason=reason,
            task=task,
            now_ms=now_ms,
            operation=operation,
        )
        if workflow_id is not None:
            return workflow_id, task
    raise instance_kept_changing(instance_id, "being retried")
