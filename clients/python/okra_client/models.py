"""What the client returns: plain dataclasses with JSON values, converted from the messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeAlias

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from okra_client.gen.workflow.v1 import workflow_pb2 as pb

__all__ = [
    "HistoryEvent",
    "HistoryPage",
    "Json",
    "QueryPage",
    "SignalResult",
    "SignalWithStartResult",
    "WorkflowError",
    "WorkflowInfo",
    "WorkflowInstance",
    "WorkflowStatus",
]


class WorkflowStatus(StrEnum):
    """Where an instance is in its lifecycle (README, "Instance lifecycle")."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUSPENDED = "suspended"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset(
    {WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED}
)

# A JSON value as json.loads returns it; typed shims (`okra-sidecar codegen`) narrow it.
Json: TypeAlias = Any

STATUS_FROM_PB = {
    pb.WORKFLOW_STATUS_PENDING: WorkflowStatus.PENDING,
    pb.WORKFLOW_STATUS_RUNNING: WorkflowStatus.RUNNING,
    pb.WORKFLOW_STATUS_WAITING: WorkflowStatus.WAITING,
    pb.WORKFLOW_STATUS_COMPLETED: WorkflowStatus.COMPLETED,
    pb.WORKFLOW_STATUS_FAILED: WorkflowStatus.FAILED,
    pb.WORKFLOW_STATUS_CANCELLED: WorkflowStatus.CANCELLED,
    pb.WORKFLOW_STATUS_SUSPENDED: WorkflowStatus.SUSPENDED,
}
STATUS_TO_PB = {v: k for k, v in STATUS_FROM_PB.items()}
# Above 2**53 a double no longer holds every whole number exactly.
MAX_SAFE_INTEGER = 2**53


@dataclass(frozen=True)
class WorkflowError:
    """The RFC 7807 problem a failed instance carries."""

    type: str
    status: int
    title: str
    detail: str
    instance: str


@dataclass(frozen=True)
class WorkflowInstance:
    """One instance's snapshot: the Host API specification's WorkflowInstance, with Python names."""

    instance_id: str
    workflow_id: str
    version: str
    status: WorkflowStatus
    input: Json
    start_time: datetime | None
    output: Json = None
    error: WorkflowError | None = None
    current_step: str | None = None
    end_time: datetime | None = None
    updated_at: datetime | None = None
    variables: dict[str, Json] = field(default_factory=dict)
    correlation_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    cancel_reason: str | None = None
    # Grows with every change the sidecar commits; `OkraClient.await_instance(revision=...)`
    # waits for the next one.
    revision: int = 0

    @property
    def finished(self) -> bool:
        """Completed, failed or cancelled: nothing will change any more."""
        return self.status in FINISHED_STATUSES

    def to_json(self) -> dict[str, Json]:
        """The specification's JSON shape: camelCase keys, ISO 8601 times, no unset fields."""
        data: dict[str, Json] = {
            "instanceId": self.instance_id,
            "workflowId": self.workflow_id,
            "version": self.version,
            "status": self.status.value,
            "currentStep": self.current_step,
            "startTime": _iso(self.start_time),
            "endTime": _iso(self.end_time),
            "input": self.input,
            "output": self.output,
            "error": self.error.detail or self.error.title if self.error else None,
            "variables": self.variables,
            "correlationId": self.correlation_id,
            "tags": self.tags or None,
        }
        return {key: item for key, item in data.items() if item is not None}


@dataclass(frozen=True)
class QueryPage:
    """One page of Query; pass `cursor` back for the next one (None when there is none)."""

    instances: list[WorkflowInstance]
    cursor: str | None


@dataclass(frozen=True)
class WorkflowInfo:
    """A registered workflow version, as ListWorkflows reports it."""

    workflow_id: str
    version: str
    triggers: list[str]
    namespace: str
    name: str
    title: str = ""
    summary: str = ""


@dataclass(frozen=True)
class HistoryEvent:
    """One lifecycle event of an instance (`workflow.created`, `task.completed`, ...)."""

    id: str
    type: str
    time: datetime | None
    task: str | None = None
    details: dict[str, Json] = field(default_factory=dict)


@dataclass(frozen=True)
class HistoryPage:
    """One page of GetHistory, oldest first; `cursor` is None after the last page."""

    events: list[HistoryEvent]
    cursor: str | None


@dataclass(frozen=True)
class SignalWithStartResult:
    """What SignalWithStart did: the instance, whether it started it, and the signal's id."""

    instance_id: str
    started: bool
    signal_id: str
    duplicate: bool


@dataclass(frozen=True)
class SignalResult:
    """Under which id a signal was stored, and whether that id had been delivered before."""

    signal_id: str
    duplicate: bool


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def to_value(data: Json) -> struct_pb2.Value:
    """A JSON value as google.protobuf.Value.

    Raises:
        TypeError: `data` is not JSON (e.g. a set, bytes or a datetime).
    """
    message = struct_pb2.Value()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        raise TypeError(f"not a JSON value: {exc}") from exc
    return message


def _integral(data: Json) -> Json:
    """JSON numbers travel as doubles; give back whole ones as int, as json.loads would."""
    if isinstance(data, float) and data.is_integer() and abs(data) <= MAX_SAFE_INTEGER:
        return int(data)
    if isinstance(data, dict):
        return {key: _integral(item) for key, item in data.items()}
    if isinstance(data, list):
        return [_integral(item) for item in data]
    return data


def from_value(message: struct_pb2.Value) -> Json:
    """A google.protobuf.Value as plain JSON data; an unset Value is None."""
    if message.WhichOneof("kind") is None:
        return None
    return _integral(json_format.MessageToDict(message))


def to_timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _time(message: pb.WorkflowInstance, name: str) -> datetime | None:
    if not message.HasField(name):  # type: ignore[arg-type]  # name is a Timestamp field
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def instance_from_pb(message: pb.WorkflowInstance) -> WorkflowInstance:
    error = None
    if message.HasField("error"):
        e = message.error
        error = WorkflowError(e.type, e.status, e.title, e.detail, e.instance)
    return WorkflowInstance(
        instance_id=message.instance_id,
        workflow_id=message.workflow_id,
        version=message.version,
        status=STATUS_FROM_PB[message.status],
        input=from_value(message.input),
        output=from_value(message.output) if message.HasField("output") else None,
        error=error,
        current_step=message.current_step or None,
        start_time=_time(message, "start_time"),
        end_time=_time(message, "end_time"),
        updated_at=_time(message, "updated_at"),
        variables=_integral(json_format.MessageToDict(message.variables)),
        correlation_id=message.correlation_id or None,
        tags=dict(message.tags),
        cancel_reason=message.cancel_reason or None,
        revision=message.revision,
    )


def event_from_pb(message: pb.HistoryEvent) -> HistoryEvent:
    return HistoryEvent(
        id=message.id,
        type=message.type,
        time=message.time.ToDatetime(tzinfo=UTC) if message.HasField("time") else None,
        task=message.task or None,
        details=_integral(json_format.MessageToDict(message.details)),
    )


def info_from_pb(message: pb.WorkflowInfo) -> WorkflowInfo:
    return WorkflowInfo(
        workflow_id=message.workflow_id,
        version=message.version,
        triggers=list(message.triggers),
        namespace=message.namespace,
        name=message.name,
        title=message.title,
        summary=message.summary,
    )


def set_filters(
    request: pb.QueryRequest | pb.CountRequest,
    *,
    workflow_id: str | None,
    status: Iterable[WorkflowStatus | str],
    tags: Mapping[str, str] | None,
    correlation_id: str | None,
    started_after: datetime | None,
    started_before: datetime | None,
) -> None:
    """Query's filters, which Count shares, on either request."""
    request.workflow_id = workflow_id or ""
    request.status.extend(STATUS_TO_PB[WorkflowStatus(s)] for s in status)
    request.tags.update(tags or {})
    request.correlation_id = correlation_id or ""
    if started_after is not None:
        request.started_after.CopyFrom(to_timestamp(started_after))
    if started_before is not None:
        request.started_before.CopyFrom(to_timestamp(started_before))
