"""Bulk operations: what one does to many instances and how far it got, shared by api, engine
and store."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "BULK_OPERATION_FIELD",
    "BulkAction",
    "BulkRecord",
    "BulkSpec",
    "BulkState",
    "ItemOutcome",
    "verb_event",
]

# The history event field naming the bulk operation that cancelled, suspended, resumed or
# retried it.
BULK_OPERATION_FIELD = "bulkOperation"


def verb_event(event_type: str, now_ms: int, reason: str, operation: str) -> dict[str, Any]:
    """An operator verb's history event, with its reason when one was given; a bulk
    operation's names it, so that the holder after a crash can tell an instance it acted on
    from one it did not (engine/runtime/bulk.py)."""
    event: dict[str, Any] = {"type": event_type, "time": now_ms}
    if reason:
        event["reason"] = reason
    if operation:
        event[BULK_OPERATION_FIELD] = operation
    return event


class BulkAction(StrEnum):
    """What a bulk operation does to each instance; values are what Redis stores."""

    CANCEL = "cancel"
    SUSPEND = "suspend"
    RESUME = "resume"
    RETRY = "retry"
    DELETE = "delete"
    SIGNAL = "signal"


class BulkState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class ItemOutcome(StrEnum):
    """What became of one instance; also the name of the operation's counter."""

    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class BulkSpec:
    """The action and its arguments, fixed when the operation starts."""

    action: BulkAction
    reason: str = ""
    signal: str = ""
    payload: Any = None
    max_per_second: int = 0
    # Whoever started it (verified claims, client certificate): each instance it acts on is
    # decided as that caller's own call would be.
    owner: dict[str, Any] = field(default_factory=dict)
    owner_peer: str = ""
    # False for an operation an earlier version started: it kept no caller (no `owner`).
    caller_kept: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "reason": self.reason,
            "signal": self.signal,
            "payload": self.payload,
            "maxPerSecond": self.max_per_second,
            "owner": self.owner,
            "ownerPeer": self.owner_peer,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BulkSpec:
        return cls(
            action=BulkAction(data["action"]),
            reason=str(data.get("reason", "")),
            signal=str(data.get("signal", "")),
            payload=data.get("payload"),
            max_per_second=int(data.get("maxPerSecond", 0)),
            owner=dict(data.get("owner") or {}),
            owner_peer=str(data.get("ownerPeer", "")),
            caller_kept="owner" in data,
        )


@dataclass(frozen=True)
class BulkRecord:
    """A bulk operation as GetBulkOperation reports it."""

    operation_id: str
    spec: BulkSpec
    state: BulkState
    matched: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    # Why instances were skipped or failed -> how many.
    reasons: dict[str, int] = field(default_factory=dict)
    created_ms: int = 0
    updated_ms: int = 0
    cursor: int = 0
