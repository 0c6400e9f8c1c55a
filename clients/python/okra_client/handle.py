"""WorkflowHandle: one instance, in temporalio's style (`handle = await client.start(...)`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING

from okra_client.models import (
    FINISHED_STATUSES,
    HistoryEvent,
    Json,
    SignalResult,
    WorkflowInstance,
    WorkflowStatus,
)

if TYPE_CHECKING:
    from okra_client.client import OkraClient

__all__ = ["StatusUnreachableError", "WorkflowFailedError", "WorkflowHandle", "join_statuses"]


def join_statuses(statuses: Iterable[WorkflowStatus]) -> str:
    """`cancelled, completed or failed`: the statuses in a message, in a stable order."""
    *others, last = sorted(statuses)
    return f"{', '.join(others)} or {last}" if others else last


class WorkflowFailedError(Exception):
    """`result()` of an instance that failed or was cancelled; `instance` has the details."""

    def __init__(self, instance: WorkflowInstance) -> None:
        if instance.status is WorkflowStatus.CANCELLED:
            reason = f": {instance.cancel_reason}" if instance.cancel_reason else ""
            message = f"instance {instance.instance_id} was cancelled{reason}"
        else:
            error = instance.error
            detail = f": {error.title}: {error.detail}" if error is not None else ""
            message = f"instance {instance.instance_id} failed{detail}"
        super().__init__(message)
        self.instance = instance


class StatusUnreachableError(Exception):
    """`wait(until=...)` found the instance finished in a status not in `until`.

    A finished instance takes another status only when an operator resets or retries it, so
    waiting on could only end at the deadline. `instance` is the finished instance as the
    sidecar answered it, `until` the statuses asked for.
    """

    def __init__(self, instance: WorkflowInstance, until: Iterable[WorkflowStatus]) -> None:
        self.instance = instance
        self.until = frozenset(until)
        super().__init__(
            f"instance {instance.instance_id} is {instance.status} and will not be "
            f"{join_statuses(self.until)} unless an operator resets or retries it"
        )


class WorkflowHandle:
    """An instance's id and the client, with the verbs that act on that one instance.

    Waiting (`result`, `wait`, `watch`) goes through AwaitInstance and WatchInstance: the
    sidecar answers when the instance changes, so nothing polls.
    """

    def __init__(self, client: OkraClient, instance_id: str) -> None:
        self._client = client
        self.id = instance_id

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r})"

    async def describe(self, *, timeout_s: float | None = None) -> WorkflowInstance:
        """The instance as it is now (GetStatus)."""
        return await self._client.get_status(self.id, timeout_s=timeout_s)

    async def wait(
        self,
        *,
        until: Iterable[WorkflowStatus | str] = FINISHED_STATUSES,
        timeout_s: float | None = None,
    ) -> WorkflowInstance:
        """The instance once its status is in `until` (finished by default).

        Raises:
            StatusUnreachableError: it has finished in a status not in `until` (see
                OkraClient.wait).
            TimeoutError: it was not within `timeout_s` seconds (None: wait for ever).
        """
        return await self._client.wait(self.id, until=until, timeout_s=timeout_s)

    async def result(self, *, timeout_s: float | None = None) -> Json:
        """The workflow's output once it has completed.

        Raises:
            WorkflowFailedError: it failed or was cancelled.
            TimeoutError: it did not finish within `timeout_s` seconds (None: wait for ever).
        """
        instance = await self.wait(timeout_s=timeout_s)
        if instance.status is not WorkflowStatus.COMPLETED:
            raise WorkflowFailedError(instance)
        return instance.output

    def watch(self) -> AsyncIterator[WorkflowInstance]:
        """The instance now, then at each change, until it has finished (WatchInstance)."""
        return self._client.watch(self.id)

    async def signal(
        self,
        signal: str,
        payload: Json = None,
        *,
        signal_id: str | None = None,
        timeout_s: float | None = None,
    ) -> SignalResult:
        """Deliver `signal` with `payload` (see OkraClient.signal)."""
        return await self._client.signal(
            self.id, signal, payload, signal_id=signal_id, timeout_s=timeout_s
        )

    async def cancel(self, reason: str | None = None, *, timeout_s: float | None = None) -> None:
        """Cancel the instance (see OkraClient.cancel)."""
        await self._client.cancel(self.id, reason, timeout_s=timeout_s)

    async def suspend(self, reason: str = "", *, timeout_s: float | None = None) -> None:
        """Pause the instance: it starts no task until `resume` (see OperatorClient.suspend)."""
        await self._client.operator.suspend(self.id, reason, timeout_s=timeout_s)

    async def resume(self, reason: str = "", *, timeout_s: float | None = None) -> None:
        """Let the suspended instance carry on where it stopped (see OperatorClient.resume)."""
        await self._client.operator.resume(self.id, reason, timeout_s=timeout_s)

    async def retry(
        self,
        reason: str = "",
        *,
        variables: Mapping[str, Json] | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Run the failed instance again from the task that failed it; that task's pointer."""
        return await self._client.operator.retry(
            self.id, reason, variables=variables, timeout_s=timeout_s
        )

    async def reset(
        self, task: str, reason: str = "", *, timeout_s: float | None = None
    ) -> WorkflowStatus:
        """Take the instance back to the top-level `task` (e.g. `/do/1/charge`) and run it on
        from there; the status it had before (see OperatorClient.reset)."""
        return await self._client.operator.reset(self.id, task, reason, timeout_s=timeout_s)

    async def delete(self, *, timeout_s: float | None = None) -> None:
        """Delete the finished instance with its history (see OperatorClient.delete)."""
        await self._client.operator.delete(self.id, timeout_s=timeout_s)

    async def history(self, *, page_size: int | None = None) -> AsyncIterator[HistoryEvent]:
        """Every lifecycle event, oldest first, page by page."""
        async for event in self._client.history(self.id, page_size=page_size):
            yield event
