"""Effects: work a turn asks for that the pure interpreter cannot do itself.

A turn that reaches a `call`, a worker task, a child `run.workflow` or an `emit` returns an
Effect instead of doing I/O. The runner commits the effect together with the new state (so a
crash can neither lose it nor run it without the state that asked for it); an executor does
the work at least once and delivers the outcome back to the instance's inbox as a result
event, which the next turn consumes. Effect ids are unique within an instance (task reference
plus attempt), so a result delivered twice or too late is recognised and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from okra_sidecar.errors import ERROR_TYPE_PREFIX

# Result events travel through the inbox like signals, under a type no signal can have
# (signal names may not contain dots), so `listen` never mistakes one for the other.
RESULT_EVENT_TYPE = "io.okra.effect.result"
RESULT_SOURCE = "okra-sidecar/effects"


class EffectKind(StrEnum):
    HTTP = "http"
    GRPC = "grpc"
    OPENAPI = "openapi"
    WORKER = "worker"
    CHILD = "child"
    EMIT = "emit"


@dataclass(frozen=True)
class Effect:
    """One piece of outside work; `request` holds the fully evaluated arguments (JSON)."""

    effect_id: str
    kind: EffectKind
    task: str
    request: dict[str, Any]
    timeout_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.effect_id,
            "kind": self.kind.value,
            "task": self.task,
            "request": self.request,
            "timeoutMs": self.timeout_ms,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Effect:
        return cls(
            effect_id=data["id"],
            kind=EffectKind(data["kind"]),
            task=data["task"],
            request=data["request"],
            timeout_ms=data.get("timeoutMs"),
        )


def result_event(
    effect_id: str,
    *,
    time_iso: str,
    value: Any = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The CloudEvent that carries an effect's outcome into the inbox.

    `error` is an RFC 7807 problem (type, status, title, detail) when the effect failed.
    """
    return {
        "specversion": "1.0",
        "id": f"result:{effect_id}",
        "source": RESULT_SOURCE,
        "type": RESULT_EVENT_TYPE,
        "time": time_iso,
        "datacontenttype": "application/json",
        "data": {"effectId": effect_id, "ok": error is None, "value": value, "error": error},
    }


def is_result_event(event: dict[str, Any]) -> bool:
    return event.get("type") == RESULT_EVENT_TYPE


# The CloudEvent `source` of the signals the Signal rpc and bulk operations deliver.
SIGNAL_SOURCE = "okra-sidecar"


def signal_event(signal: str, payload: Any, *, signal_id: str, sent_ms: int) -> dict[str, Any]:
    """A signal as an instance receives it: a CloudEvent whose type is the signal's name."""
    return {
        "specversion": "1.0",
        "id": signal_id,
        "source": SIGNAL_SOURCE,
        "type": signal,
        "time": datetime.fromtimestamp(sent_ms / 1000, UTC).isoformat(),
        "datacontenttype": "application/json",
        "data": payload,
    }


def iso_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


RUNTIME_ERROR = ERROR_TYPE_PREFIX + "runtime"


def cancelled_result_event(
    effect_id: str, child_id: str, reason: str, now_ms: int
) -> dict[str, Any]:
    """The outcome a cancelled child run hands to its parent: a runtime error."""
    detail = f"child run {child_id} was cancelled" + (f": {reason}" if reason else "")
    error = {"type": RUNTIME_ERROR, "status": 499, "title": "Child run cancelled", "detail": detail}
    return result_event(effect_id, time_iso=iso_time(now_ms), error=error)
