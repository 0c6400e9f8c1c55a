"""Cancel: one instance, the outcome its parent awaits, and the cascade to its child runs."""

from __future__ import annotations

from okra_sidecar.engine.interpreter.effects import cancelled_result_event
from okra_sidecar.errors import FailedPreconditionError, NotFoundError, instance_kept_changing
from okra_sidecar.store.base import Store

__all__ = ["cancel_instance"]

# A turn that changes the subscriptions between the read of the links and the cancel makes
# the store write nothing; each retry reads them again.
CANCEL_ATTEMPTS = 8


async def cancel_instance(
    store: Store,
    instance_id: str,
    *,
    reason: str,
    now_ms: int,
    expect_status: str | None = None,
    operation: str = "",
) -> str:
    """Cancel an unfinished instance, then its child runs (whose parent then can start no
    more); returns its workflow id. A child run's parent gets a runtime error as its outcome.
    A bulk operation's cancel names the `operation` in the history event it writes (not its
    children's, which it did not match).

    Raises:
        NotFoundError: no such instance.
        FailedPreconditionError: it has finished already, or kept changing while cancelled.
        InstanceChangedError: the status is no longer `expect_status`; nothing was written.
    """
    for _ in range(CANCEL_ATTEMPTS):
        links = await store.cancel_links(instance_id)
        parent_event = None
        if links.parent_id:
            parent_event = cancelled_result_event(links.parent_effect, instance_id, reason, now_ms)
        workflow_id = await store.cancel(
            instance_id,
            reason=reason,
            now_ms=now_ms,
            links=links,
            parent_event=parent_event,
            expect_status=expect_status,
            operation=operation,
        )
        if workflow_id is not None:
            break
    else:
        raise instance_kept_changing(instance_id, "being cancelled")
    for child in await store.children(instance_id):
        try:
            await cancel_instance(
                store, child, reason=f"parent {instance_id} cancelled", now_ms=now_ms
            )
        except (NotFoundError, FailedPreconditionError):
            pass  # finished on its own already
    return workflow_id
