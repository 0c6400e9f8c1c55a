"""OkraClient: the async Python client of the WorkflowHostAPI, by the specification's method names.

This is a gRPC edge like `api/`, so it imports grpc and the generated stubs; nothing in the
sidecar imports it.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import grpc

from okra_client.errors import REASONS, OkraRpcError, error_from_rpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc
from okra_client.handle import StatusUnreachableError, WorkflowHandle, join_statuses
from okra_client.models import (
    FINISHED_STATUSES,
    STATUS_TO_PB,
    HistoryEvent,
    HistoryPage,
    Json,
    QueryPage,
    SignalResult,
    SignalWithStartResult,
    WorkflowInfo,
    WorkflowInstance,
    WorkflowStatus,
    event_from_pb,
    info_from_pb,
    instance_from_pb,
    set_filters,
    to_timestamp,
    to_value,
)
from okra_client.operator import OperatorClient
from okra_client.schedules import ScheduleClient
from okra_client.tls import ClientTls, open_channel

if TYPE_CHECKING:
    # Only the type stubs know the async flavour of the generated stub.
    from okra_client.gen.workflow.v1.workflow_pb2_grpc import WorkflowHostAPIAsyncStub

__all__ = ["DEFAULT_TARGET", "OkraClient", "RetryPolicy"]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 10.0
# wait() asks AwaitInstance for at most this long per call, then asks again (no deadline on
# the wait itself means calls of this length, one after the other).
AWAIT_CALL_S = 30.0
# A wait with less time than this left gives up instead of making a call that cannot wait.
MIN_AWAIT_S = 0.1
R = TypeVar("R")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls: exponential backoff with full jitter.

    A failed attempt is retried when its reason says a retry can succeed (docs/errors.md), or,
    for an error without a reason this client knows (the sidecar is unreachable), when its code
    is in `codes`; after at least the google.rpc.RetryInfo delay when the server sent one, as
    long as attempts remain and the retry can start before the call's deadline.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

    def delay_s(self, attempt: int, error: OkraRpcError) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up."""
        if attempt >= self.max_attempts:
            return None
        if not self.should_retry(error):
            return None
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return max(error.retry_delay_s or 0.0, random.uniform(0, ceiling))

    def should_retry(self, error: OkraRpcError) -> bool:
        if error.reason in REASONS:
            return error.retryable
        return error.code in self.codes


NO_RETRY = RetryPolicy(max_attempts=1)


class OkraClient:
    """Runs, signals, reads, queries and cancels workflow instances through a sidecar.

    Use it as an async context manager, or call `close()`:

        async with OkraClient("127.0.0.1:50051") as client:
            instance_id = await client.run("examples.approval.1.0.0", {"requester": "ada"})

    Every method takes `timeout_s` (seconds, for the whole call including retries; the client's
    default when None). GetStatus, Query and ListWorkflows are retried on UNAVAILABLE; so are
    Run (always sent with a `request_id`) and Signal with a `signal_id`, which the sidecar
    de-duplicates.
    Failures raise `OkraRpcError` subclasses (see `okra_client.errors`).

    Args:
        target: The sidecar's `host:port` (or any gRPC target, e.g. `unix:///run/okra.sock`).
        channel: A channel to use instead of opening one on `target`; it is not closed here.
        timeout_s: Default deadline of each call in seconds; None means no deadline.
        retry: How idempotent calls are retried.
        metadata: Sent with every call, e.g. `[("authorization", "Bearer ...")]`.
        tls: Dial `target` with TLS (and a client certificate for mutual TLS); plaintext
            when None.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        tls: ClientTls | None = None,
    ) -> None:
        self._owns_channel = channel is None
        self._channel = channel or open_channel(target, tls)
        self._stub: WorkflowHostAPIAsyncStub = pb_grpc.WorkflowHostAPIStub(self._channel)
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self._metadata = tuple(metadata)

    @property
    def operator(self) -> OperatorClient:
        """The WorkflowOperatorAPI on the same channel, with the same deadline and retries."""
        return OperatorClient(self._channel, call=self._call, metadata=self._metadata)

    @property
    def schedules(self) -> ScheduleClient:
        """The ScheduleHostAPI on the same channel, with the same deadline and retries."""
        return ScheduleClient(self._channel, call=self._call, metadata=self._metadata)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> OkraClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def run(
        self,
        workflow_id: str,
        input: Json,
        *,
        correlation_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Start an instance of `workflow_id` (`namespace.name.version`); returns its id.

        Every Run carries a `request_id` (a new UUID unless the caller gives one), so that a
        repeated call returns the instance the first one created: a Run answered UNAVAILABLE
        may already be stored, and is retried with the same id rather than run twice. Pass
        your own `request_id` to make your own retries (after a restart, say) safe too.
        """
        request = pb.RunRequest(
            workflow_id=workflow_id,
            input=to_value(input),
            correlation_id=correlation_id or "",
            tags=dict(tags or {}),
            request_id=request_id or str(uuid.uuid4()),
        )
        response = await self._call(
            lambda t: self._stub.Run(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,
        )
        return response.instance_id

    async def signal(
        self,
        instance_id: str,
        signal: str,
        payload: Json = None,
        *,
        signal_id: str | None = None,
        timeout_s: float | None = None,
    ) -> SignalResult:
        """Deliver signal `signal` with `payload` to an instance.

        With a `signal_id` the sidecar delivers it at most once, so the call is retried.
        """
        request = pb.SignalRequest(
            instance_id=instance_id,
            signal=signal,
            payload=to_value(payload),
            signal_id=signal_id or "",
        )
        response = await self._call(
            lambda t: self._stub.Signal(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=bool(signal_id),
        )
        return SignalResult(response.signal_id, response.duplicate)

    async def get_status(
        self, instance_id: str, *, timeout_s: float | None = None
    ) -> WorkflowInstance:
        """The current snapshot of one instance."""
        request = pb.GetStatusRequest(instance_id=instance_id)
        message = await self._call(
            lambda t: self._stub.GetStatus(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,
        )
        return instance_from_pb(message)

    async def query(
        self,
        *,
        workflow_id: str | None = None,
        status: Iterable[WorkflowStatus | str] = (),
        tags: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        timeout_s: float | None = None,
    ) -> QueryPage:
        """One page of the instances matching every filter given, newest first."""
        request = pb.QueryRequest(limit=limit or 0, cursor=cursor or "")
        set_filters(
            request,
            workflow_id=workflow_id,
            status=status,
            tags=tags,
            correlation_id=correlation_id,
            started_after=started_after,
            started_before=started_before,
        )
        response = await self._call(
            lambda t: self._stub.Query(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,
        )
        return QueryPage(
            instances=[instance_from_pb(m) for m in response.instances],
            cursor=response.cursor or None,
        )

    async def query_all(
        self,
        *,
        workflow_id: str | None = None,
        status: Iterable[WorkflowStatus | str] = (),
        tags: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        page_size: int | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[WorkflowInstance]:
        """Every matching instance, newest first, fetching pages of `page_size` as needed.

        `timeout_s` applies to each page's call.
        """
        statuses = list(status)
        cursor: str | None = None
        while True:
            page = await self.query(
                workflow_id=workflow_id,
                status=statuses,
                tags=tags,
                correlation_id=correlation_id,
                started_after=started_after,
                started_before=started_before,
                limit=page_size,
                cursor=cursor,
                timeout_s=timeout_s,
            )
            for instance in page.instances:
                yield instance
            if page.cursor is None:
                return
            cursor = page.cursor

    async def cancel(
        self, instance_id: str, reason: str | None = None, *, timeout_s: float | None = None
    ) -> None:
        """Cancel a pending, running, waiting or suspended instance (never retried)."""
        request = pb.CancelRequest(instance_id=instance_id, reason=reason or "")
        await self._call(
            lambda t: self._stub.Cancel(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=False,
        )

    async def emit(
        self,
        event_type: str,
        *,
        source: str,
        data: Json = None,
        event_id: str | None = None,
        subject: str | None = None,
        extensions: Mapping[str, str] | None = None,
        event_time: datetime | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Publish a CloudEvent to every instance whose `listen` matches it; returns its id.

        With an `event_id` the sidecar delivers the event to each instance once, so the call
        is retried on UNAVAILABLE; without one it is never retried.
        """
        request = pb.EmitRequest(
            type=event_type,
            source=source,
            id=event_id or "",
            subject=subject or "",
            data=to_value(data),
            extensions=dict(extensions or {}),
        )
        if event_time is not None:
            request.time.CopyFrom(to_timestamp(event_time))
        response = await self._call(
            lambda t: self._stub.Emit(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=bool(event_id),
        )
        return response.id

    async def get_history(
        self,
        instance_id: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        timeout_s: float | None = None,
    ) -> HistoryPage:
        """One page of an instance's lifecycle events, oldest first."""
        request = pb.GetHistoryRequest(
            instance_id=instance_id, limit=limit or 0, cursor=cursor or ""
        )
        response = await self._call(
            lambda t: self._stub.GetHistory(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,
        )
        return HistoryPage(
            events=[event_from_pb(m) for m in response.events], cursor=response.cursor or None
        )

    async def history(
        self, instance_id: str, *, page_size: int | None = None, timeout_s: float | None = None
    ) -> AsyncIterator[HistoryEvent]:
        """Every lifecycle event of an instance, oldest first, page after page."""
        cursor: str | None = None
        while True:
            page = await self.get_history(
                instance_id, limit=page_size, cursor=cursor, timeout_s=timeout_s
            )
            for event in page.events:
                yield event
            if page.cursor is None:
                return
            cursor = page.cursor

    async def list_workflows(self, *, timeout_s: float | None = None) -> list[WorkflowInfo]:
        """Every registered workflow version this caller may run."""
        response = await self._call(
            lambda t: self._stub.ListWorkflows(
                pb.ListWorkflowsRequest(), timeout=t, metadata=self._metadata
            ),
            timeout_s=timeout_s,
            idempotent=True,
        )
        return [info_from_pb(m) for m in response.workflows]

    async def wait(
        self,
        instance_id: str,
        *,
        until: Iterable[WorkflowStatus | str] = FINISHED_STATUSES,
        timeout_s: float | None = 30.0,
    ) -> WorkflowInstance:
        """The instance once its status is in `until` (finished by default).

        Nothing polls: each AwaitInstance call returns when the instance changes to a status
        in `until` or to a final one, or just before its deadline, and then the next call
        waits on. A finished instance takes another status only if an operator resets or
        retries it, so one found finished in a status not in `until` raises at once instead
        of waiting for ever (the check reads the sidecar's answer, one snapshot: no race).

        Raises:
            StatusUnreachableError: it has finished in a status not in `until`.
            TimeoutError: it did not within `timeout_s` seconds (None: wait for ever).
        """
        wanted = frozenset(WorkflowStatus(s) for s in until)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left < MIN_AWAIT_S:
                raise TimeoutError(
                    f"instance {instance_id} was not {join_statuses(wanted)} within {timeout_s} s"
                )
            instance = await self.await_instance(
                instance_id,
                statuses=wanted | FINISHED_STATUSES,
                timeout_s=AWAIT_CALL_S if left is None else min(AWAIT_CALL_S, left),
            )
            if instance.status in wanted:
                return instance
            if instance.status in FINISHED_STATUSES:
                raise StatusUnreachableError(instance, wanted)

    async def await_instance(
        self,
        instance_id: str,
        *,
        statuses: Iterable[WorkflowStatus | str] = (),
        revision: int | None = None,
        timeout_s: float | None = None,
    ) -> WorkflowInstance:
        """One AwaitInstance call: the instance once its status is in `statuses` (finished
        when empty) or its revision is not `revision`; just before `timeout_s` (the client's
        default when None), the instance as it is."""
        request = pb.AwaitInstanceRequest(
            instance_id=instance_id, statuses=[STATUS_TO_PB[WorkflowStatus(s)] for s in statuses]
        )
        if revision is not None:
            request.revision = revision
        response = await self._call(
            lambda t: self._stub.AwaitInstance(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,
        )
        return instance_from_pb(response.instance)

    async def watch(
        self, instance_id: str, *, timeout_s: float | None = None
    ) -> AsyncIterator[WorkflowInstance]:
        """The instance now, then at each change, until it has finished (WatchInstance).

        The client's default deadline does not apply: `timeout_s` bounds the whole stream
        (None: none). A stream that fails is not resumed; watch again to go on.
        """
        call = self._stub.WatchInstance(
            pb.WatchInstanceRequest(instance_id=instance_id),
            timeout=timeout_s,
            metadata=self._metadata,
        )
        try:
            async for message in call:
                yield instance_from_pb(message.instance)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()

    async def start(
        self,
        workflow_id: str,
        input: Json,
        *,
        correlation_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> WorkflowHandle:
        """Run (see `run`), returning a handle on the instance."""
        instance_id = await self.run(
            workflow_id,
            input,
            correlation_id=correlation_id,
            tags=tags,
            request_id=request_id,
            timeout_s=timeout_s,
        )
        return WorkflowHandle(self, instance_id)

    def get_handle(self, instance_id: str) -> WorkflowHandle:
        """A handle on an instance that exists (nothing is called until it is used)."""
        return WorkflowHandle(self, instance_id)

    async def signal_with_start(
        self,
        workflow_id: str,
        input: Json,
        signal: str,
        payload: Json = None,
        *,
        request_id: str,
        correlation_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        signal_id: str | None = None,
        timeout_s: float | None = None,
    ) -> SignalWithStartResult:
        """Start the instance `request_id` names unless it exists, then signal it, atomically.

        Retried on UNAVAILABLE only with a `signal_id` (the request id already finds the same
        instance; the signal id keeps the signal from being delivered twice).
        """
        request = pb.SignalWithStartRequest(
            run=pb.RunRequest(
                workflow_id=workflow_id,
                input=to_value(input),
                correlation_id=correlation_id or "",
                tags=dict(tags or {}),
                request_id=request_id,
            ),
            signal=signal,
            payload=to_value(payload),
            signal_id=signal_id or "",
        )
        response = await self._call(
            lambda t: self._stub.SignalWithStart(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=bool(signal_id),
        )
        return SignalWithStartResult(
            response.instance_id, response.started, response.signal_id, response.duplicate
        )

    async def count(
        self,
        *,
        workflow_id: str | None = None,
        status: Iterable[WorkflowStatus | str] = (),
        tags: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        timeout_s: float | None = None,
    ) -> int:
        """How many instances match every filter given (Query's filters), exactly."""
        request = pb.CountRequest()
        set_filters(
            request,
            workflow_id=workflow_id,
            status=status,
            tags=tags,
            correlation_id=correlation_id,
            started_after=started_after,
            started_before=started_before,
        )
        response = await self._call(
            lambda t: self._stub.Count(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,
        )
        return response.count

    async def _call(
        self,
        attempt_call: Callable[[float | None], Awaitable[R]],
        *,
        timeout_s: float | None,
        idempotent: bool,
    ) -> R:
        """One call, retried per the policy if idempotent, within one overall deadline."""
        loop = asyncio.get_running_loop()
        budget = self._timeout_s if timeout_s is None else timeout_s
        deadline = None if budget is None else loop.time() + budget
        policy = self._retry if idempotent else NO_RETRY
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                return await attempt_call(remaining)
            except grpc.aio.AioRpcError as exc:
                error = error_from_rpc(exc)
                delay = policy.delay_s(attempt, error)
                if delay is None or (deadline is not None and loop.time() + delay >= deadline):
                    raise error from None
            await asyncio.sleep(delay)
