"""Instance records, statuses and query filters shared by the api, engine and store."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# A Run's id with a request_id: the same request computes the same id (see run_instance_id).
REQUEST_ID_NAMESPACE = uuid.UUID("6f6b7261-7369-6465-6361-722d72756e21")
INSTANCE_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class InstanceStatus(StrEnum):
    """Lifecycle of an instance; values are what Redis stores."""

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
    {InstanceStatus.COMPLETED, InstanceStatus.FAILED, InstanceStatus.CANCELLED}
)


def run_instance_id(workflow_id: str, request_id: str) -> str:
    """A Run's instance id: a UUIDv5 of the workflow and the request id, else a random UUID."""
    if request_id:
        return str(uuid.uuid5(REQUEST_ID_NAMESPACE, f"{workflow_id}\0{request_id}"))
    return random_uuid()


def random_uuid() -> str:
    """str(uuid.uuid4()) without building a UUID object (a Run's id, made per call)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class InstanceRecord:
    """What GetStatus and Query return: the instance snapshot without engine state."""

    instance_id: str
    workflow_id: str
    status: InstanceStatus
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    correlation_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    current_step: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    created_ms: int = 0
    started_ms: int = 0
    updated_ms: int = 0
    completed_ms: int = 0
    cancel_reason: str = ""
    # Bumped by every commit that changes the instance (the hash's `rev`).
    revision: int = 0


@dataclass(frozen=True)
class ParentLink:
    """A child run's parent: the instance awaiting it, the effect it awaits it as, and the
    workflow ids of every ancestor (the recursion check walks them)."""

    instance_id: str
    effect_id: str
    ancestors: tuple[str, ...]


@dataclass(frozen=True)
class NewInstance:
    """Everything Run persists for a new instance."""

    instance_id: str
    workflow_id: str
    input: Any
    correlation_id: str
    tags: dict[str, str]
    state: dict[str, Any]
    # Microseconds order the Query index finely enough that one caller's runs keep their order.
    created_us: int
    # The Run's W3C trace context (JSON), so engine turns join the caller's trace.
    trace_context: str = ""
    # Policy timeouts fixed at creation (timeoutAction applies when one passes).
    deadline_ms: int | None = None
    step_timeout_ms: int | None = None
    timeout_action: str = ""
    # What set deadline_ms when it was not the policy: `maxInstanceDuration` (the config).
    deadline_source: str = ""
    # What set step_timeout_ms when it was not the policy: `defaultTimeout` (the config).
    step_timeout_source: str = ""
    parent: ParentLink | None = None
    # The verified claims of whoever started it (a Run's caller, a schedule's creator, a
    # parent's owner): its child runs go through the run policies as that caller.
    owner: dict[str, Any] = field(default_factory=dict)
    # The workflows of the chain that caused a top-level instance (an event it was triggered
    # by, a gRPC call that ran it); a child's come with its ParentLink.
    ancestors: tuple[str, ...] = ()

    @property
    def created_ms(self) -> int:
        return self.created_us // 1000


@dataclass(frozen=True)
class QueryFilter:
    """Query's filters; every given one must match."""

    workflow_id: str = ""
    statuses: frozenset[InstanceStatus] = frozenset()
    tags: dict[str, str] = field(default_factory=dict)
    correlation_id: str = ""
    started_after_ms: int | None = None
    started_before_ms: int | None = None
    limit: int = 100
    cursor: str = ""


@dataclass(frozen=True)
class QueryPage:
    instances: list[InstanceRecord]
    cursor: str
