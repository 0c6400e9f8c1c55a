"""OperatorClient: the WorkflowOperatorAPI (`OkraClient.operator`), with plain dataclasses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import grpc
from google.protobuf import struct_pb2

from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from okra_client.models import STATUS_FROM_PB, Json, WorkflowStatus, set_filters, to_value
from okra_client.schedules import CallRunner

if TYPE_CHECKING:
    from okra_client.gen.workflow.v1.operator_pb2_grpc import WorkflowOperatorAPIAsyncStub

__all__ = ["BULK_ACTIONS", "BulkOperation", "BulkStart", "OperatorClient"]

# The actions a bulk operation takes, by the name the client uses.
BULK_ACTIONS = {
    "cancel": opb.BULK_ACTION_CANCEL,
    "suspend": opb.BULK_ACTION_SUSPEND,
    "resume": opb.BULK_ACTION_RESUME,
    "retry": opb.BULK_ACTION_RETRY,
    "delete": opb.BULK_ACTION_DELETE,
    "signal": opb.BULK_ACTION_SIGNAL,
}
_ACTION_NAMES = {number: name for name, number in BULK_ACTIONS.items()}
_STATE_NAMES = {
    opb.BULK_OPERATION_STATE_RUNNING: "running",
    opb.BULK_OPERATION_STATE_COMPLETED: "completed",
    opb.BULK_OPERATION_STATE_CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class BulkStart:
    """What StartBulkOperation answered: the operation id ('' for a dry run), the matches, and
    the most instances a real run may act on (0 from a sidecar that does not say)."""

    operation_id: str
    matched: int
    sample_instance_ids: list[str]
    max_instances: int = 0

    @property
    def over_limit(self) -> bool:
        """True when a real run would be refused: more instances match than it may act on
        (a dry run still answers, to preview)."""
        return 0 < self.max_instances < self.matched


@dataclass(frozen=True)
class BulkOperation:
    """A bulk operation and how far it got."""

    operation_id: str
    action: str
    state: str
    matched: int
    done: int
    skipped: int
    failed: int
    reasons: dict[str, int] = field(default_factory=dict)
    reason: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_json(self) -> dict[str, Json]:
        """camelCase keys and ISO 8601 times, as grpcurl prints the message."""
        data: dict[str, Json] = {
            "operationId": self.operation_id,
            "action": self.action,
            "state": self.state,
            "matched": self.matched,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "reasons": dict(self.reasons),
            "reason": self.reason,
        }
        for key, moment in (("createdAt", self.created_at), ("updatedAt", self.updated_at)):
            if moment is not None:
                data[key] = moment.isoformat().replace("+00:00", "Z")
        return data


def _time(message: opb.BulkOperation, name: str) -> datetime | None:
    """A time of the operation, in UTC as the instances' times are; None when unset."""
    if not message.HasField(name):  # type: ignore[arg-type]  # name is a Timestamp field
        return None
    stamp = getattr(message, name)
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment


def _operation(message: opb.BulkOperation) -> BulkOperation:
    return BulkOperation(
        operation_id=message.operation_id,
        action=_ACTION_NAMES.get(message.action, "unknown"),
        state=_STATE_NAMES.get(message.state, "unknown"),
        matched=message.matched,
        done=message.done,
        skipped=message.skipped,
        failed=message.failed,
        reasons=dict(message.reasons),
        reason=message.reason,
        created_at=_time(message, "created_at"),
        updated_at=_time(message, "updated_at"),
    )


class OperatorClient:
    """Suspends, resumes, retries and deletes instances, and runs bulk operations; get it as
    `OkraClient.operator`. It shares its client's channel, metadata, deadline and retries
    (reads are retried on UNAVAILABLE; the writes are not)."""

    def __init__(
        self, channel: grpc.aio.Channel, *, call: CallRunner, metadata: Sequence[tuple[str, str]]
    ) -> None:
        self._stub: WorkflowOperatorAPIAsyncStub = opb_grpc.WorkflowOperatorAPIStub(channel)
        self._call = call
        self._metadata = tuple(metadata)

    async def suspend(
        self, instance_id: str, reason: str = "", *, timeout_s: float | None = None
    ) -> None:
        request = opb.SuspendRequest(instance_id=instance_id, reason=reason)
        await self._call(
            lambda t: self._stub.Suspend(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=False,
        )

    async def resume(
        self, instance_id: str, reason: str = "", *, timeout_s: float | None = None
    ) -> None:
        request = opb.ResumeRequest(instance_id=instance_id, reason=reason)
        await self._call(
            lambda t: self._stub.Resume(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=False,
        )

    async def retry(
        self,
        instance_id: str,
        reason: str = "",
        *,
        variables: Mapping[str, Json] | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Run a failed instance again; the pointer of the task it runs again from."""
        request = opb.RetryRequest(instance_id=instance_id, reason=reason)
        if variables:
            request.variables.CopyFrom(_struct(variables))
        response = await self._call(
            lambda t: self._stub.Retry(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=False,
        )
        return response.task

    async def reset(
        self, instance_id: str, task: str, reason: str = "", *, timeout_s: float | None = None
    ) -> WorkflowStatus:
        """Take an ended or waiting instance back to the top-level `task` (a JSON pointer such
        as `/do/1/charge`) and run it on from there; the status it had before."""
        request = opb.ResetRequest(instance_id=instance_id, task=task, reason=reason)
        response = await self._call(
            lambda t: self._stub.Reset(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=False,
        )
        return STATUS_FROM_PB[response.previous_status]

    async def delete(self, instance_id: str, *, timeout_s: float | None = None) -> None:
        request = opb.DeleteRequest(instance_id=instance_id)
        await self._call(
            lambda t: self._stub.Delete(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,  # a second Delete finds nothing: NOT_FOUND, never a double
        )

    async def start_bulk(
        self,
        action: str,
        *,
        workflow_id: str | None = None,
        status: Iterable[WorkflowStatus | str] = (),
        tags: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        reason: str = "",
        signal: str = "",
        payload: Json = None,
        dry_run: bool = False,
        max_per_second: int = 0,
        timeout_s: float | None = None,
    ) -> BulkStart:
        """Start a bulk operation (`action` one of BULK_ACTIONS) on every instance that Query's
        filters (the same keywords as `OkraClient.query`) match.

        A `dry_run` changes nothing and answers even when more instances match than a real
        run may act on: `max_instances` is that limit and `over_limit` says whether a real
        run would be refused (BulkTooManyInstancesError).

        Raises:
            ValueError: `action` is not one of BULK_ACTIONS (as a bad status is, in `query`).
        """
        if action not in BULK_ACTIONS:
            raise ValueError(
                f"{action!r} is not a bulk action: use one of {', '.join(BULK_ACTIONS)}"
            )
        request = opb.StartBulkOperationRequest(
            action=BULK_ACTIONS[action],
            reason=reason,
            signal=signal,
            dry_run=dry_run,
            max_per_second=max_per_second,
        )
        set_filters(
            request.filter,
            workflow_id=workflow_id,
            status=status,
            tags=tags,
            correlation_id=correlation_id,
            started_after=started_after,
            started_before=started_before,
        )
        if payload is not None:
            request.payload.CopyFrom(to_value(payload))
        response = await self._call(
            lambda t: self._stub.StartBulkOperation(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=dry_run,
        )
        return BulkStart(
            response.operation_id,
            response.matched,
            list(response.sample_instance_ids),
            response.max_instances,
        )

    async def get_bulk(self, operation_id: str, *, timeout_s: float | None = None) -> BulkOperation:
        request = opb.GetBulkOperationRequest(operation_id=operation_id)
        response = await self._call(
            lambda t: self._stub.GetBulkOperation(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,
        )
        return _operation(response.operation)

    async def cancel_bulk(self, operation_id: str, *, timeout_s: float | None = None) -> None:
        request = opb.CancelBulkOperationRequest(operation_id=operation_id)
        await self._call(
            lambda t: self._stub.CancelBulkOperation(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=False,
        )

    async def list_bulk(self, *, timeout_s: float | None = None) -> list[BulkOperation]:
        request = opb.ListBulkOperationsRequest()
        response = await self._call(
            lambda t: self._stub.ListBulkOperations(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,
        )
        return [_operation(o) for o in response.operations]


def _struct(data: Mapping[str, Json]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    for name, item in data.items():
        message.fields[name].CopyFrom(to_value(item))
    return message
