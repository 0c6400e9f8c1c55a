"""Schedule records and policies shared by the api, engine and store."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from okra_sidecar.errors import FailedPreconditionError, PreconditionViolation, Reason

# Instances a schedule starts carry these tags, so Query finds them by schedule and firing.
SCHEDULE_TAG = "okra.schedule"
FIRE_TIME_TAG = "okra.fireTime"
# Definition schedules are named after their workflow, so every sidecar loading the same
# definitions finds the same schedule.
DEFINITION_PREFIX = "workflow:"
SCHEDULE_ID_RE = re.compile(
    r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|workflow:[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)$"
)
# Instance ids of firings: uuid5 of schedule, generation and fire time, so every sidecar that
# fires the same time computes the same id and Redis creates that instance only once.
FIRING_NAMESPACE = uuid.UUID("6f6b7261-7363-6865-6475-6c652d666972")
# Schedule ids derived from a request_id are stable, so a retried TriggerWorkflow is harmless.
REQUEST_ID_NAMESPACE = uuid.UUID("6f6b7261-7363-6865-6475-6c652d726571")
# What datetime, croniter and protobuf's Timestamp can represent (years 1 to 9999), in ms.
EARLIEST_STORED_MS = -62135596800_000
LATEST_STORED_MS = 253402300799_999


class OverlapPolicy(StrEnum):
    """What a firing does while the previous instance is unfinished."""

    ALLOW = "allow"
    SKIP = "skip"
    BUFFER_ONE = "buffer-one"


class CatchUpPolicy(StrEnum):
    """What happens to fire times missed while no sidecar was up."""

    SKIP_MISSED = "skip-missed"
    FIRE_ONCE = "fire-once"


class ScheduleSource(StrEnum):
    API = "api"
    DEFINITION = "definition"


@dataclass(frozen=True)
class ScheduleSpec:
    """When and what a schedule runs; exactly one of cron, every_ms and after_ms is set."""

    workflow_id: str
    input: Any = None
    cron: str = ""
    time_zone: str = ""  # '' is UTC
    every_ms: int | None = None
    after_ms: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    overlap: OverlapPolicy = OverlapPolicy.ALLOW
    catch_up: CatchUpPolicy = CatchUpPolicy.FIRE_ONCE
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow_id,
            "input": self.input,
            "cron": self.cron,
            "tz": self.time_zone,
            "every": self.every_ms,
            "after": self.after_ms,
            "start": self.start_ms,
            "end": self.end_ms,
            "overlap": self.overlap.value,
            "catchUp": self.catch_up.value,
            "tags": self.tags,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScheduleSpec:
        return cls(
            workflow_id=data["workflow"],
            input=data.get("input"),
            cron=data.get("cron", ""),
            time_zone=data.get("tz", ""),
            every_ms=data.get("every"),
            after_ms=data.get("after"),
            start_ms=data.get("start"),
            end_ms=data.get("end"),
            overlap=OverlapPolicy(data.get("overlap", "allow")),
            catch_up=CatchUpPolicy(data.get("catchUp", "fire-once")),
            tags=dict(data.get("tags") or {}),
        )


@dataclass(frozen=True)
class ScheduleRecord:
    """A stored schedule: its spec and where it stands.

    `generation` changes whenever the spec does, so a firing of the new spec never shares an
    instance id with one of the old. `anchor_ms` is when the spec took effect: `every` counts
    from it and an `after` schedule's first run is due then. `revision` is Redis's, bumped by
    every write; a write that expected another revision is refused.
    """

    schedule_id: str
    spec: ScheduleSpec
    source: ScheduleSource
    generation: str
    anchor_ms: int
    created_ms: int
    updated_ms: int
    definition_version: str = ""
    paused: bool = False
    next_fire_ms: int | None = None
    buffered_ms: int | None = None
    last_fire_ms: int | None = None
    last_instance_id: str = ""
    fired: int = 0
    skipped: int = 0
    last_error: str = ""
    # The claims of whoever created it: firings go through the run policies as that caller.
    owner: dict[str, Any] = field(default_factory=dict)
    revision: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.schedule_id,
            "spec": self.spec.to_json(),
            "source": self.source.value,
            "gen": self.generation,
            "anchor": self.anchor_ms,
            "created": self.created_ms,
            "updated": self.updated_ms,
            "version": self.definition_version,
            "paused": self.paused,
            "next": self.next_fire_ms,
            "buffered": self.buffered_ms,
            "lastFire": self.last_fire_ms,
            "lastInstance": self.last_instance_id,
            "fired": self.fired,
            "skipped": self.skipped,
            "lastError": self.last_error,
            "owner": self.owner,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], *, revision: int) -> ScheduleRecord:
        return cls(
            schedule_id=data["id"],
            spec=ScheduleSpec.from_json(data["spec"]),
            source=ScheduleSource(data["source"]),
            generation=data["gen"],
            anchor_ms=data["anchor"],
            created_ms=data["created"],
            updated_ms=data["updated"],
            definition_version=data.get("version", ""),
            paused=bool(data.get("paused")),
            next_fire_ms=data.get("next"),
            buffered_ms=data.get("buffered"),
            last_fire_ms=data.get("lastFire"),
            last_instance_id=data.get("lastInstance", ""),
            fired=data.get("fired", 0),
            skipped=data.get("skipped", 0),
            last_error=data.get("lastError", ""),
            owner=dict(data.get("owner") or {}),
            revision=revision,
        )

    def evolve(self, **changes: Any) -> ScheduleRecord:
        return replace(self, **changes)


@dataclass(frozen=True)
class PreviousRun:
    """A schedule's latest instance: whether it finished, and when."""

    finished: bool
    finished_ms: int | None = None


@dataclass(frozen=True)
class SchedulePage:
    schedules: list[ScheduleRecord]
    cursor: str


def definition_schedule_id(workflow_key: str) -> str:
    """The schedule id of a definition's `schedule`: `workflow:<namespace>.<name>`."""
    return DEFINITION_PREFIX + workflow_key


def firing_instance_id(record: ScheduleRecord, fire_ms: int) -> str:
    name = f"{record.schedule_id}/{record.generation}/{fire_ms}"
    return str(uuid.uuid5(FIRING_NAMESPACE, name))


def format_fire_time(fire_ms: int) -> str:
    """The `okra.fireTime` tag: ISO 8601 in UTC, to the millisecond."""
    moment = datetime.fromtimestamp(fire_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{fire_ms % 1000:03d}Z"


__all__ = [
    "DEFINITION_PREFIX",
    "FIRE_TIME_TAG",
    "SCHEDULE_ID_RE",
    "SCHEDULE_TAG",
    "CatchUpPolicy",
    "OverlapPolicy",
    "PreviousRun",
    "SchedulePage",
    "ScheduleRecord",
    "ScheduleSource",
    "ScheduleSpec",
    "definition_schedule_id",
    "firing_instance_id",
    "format_fire_time",
]


def decode_record(schedule_id: str, raw: str | bytes, revision: int) -> ScheduleRecord:
    """A stored schedule, checked as far as reading, listing and firing it need.

    A record written outside the sidecar (or by a version that did not check its times) can
    hold anything; refusing it here keeps one such record from failing every listing.

    Raises:
        FailedPreconditionError: the record cannot be read (reason SCHEDULE_UNREADABLE).
    """
    try:
        record = ScheduleRecord.from_json(json.loads(raw), revision=revision)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise schedule_unreadable(schedule_id, f"not a schedule record ({exc!r:.120})") from None
    spec = record.spec
    times = {
        "start": spec.start_ms,
        "end": spec.end_ms,
        "anchor": record.anchor_ms,
        "created": record.created_ms,
        "updated": record.updated_ms,
        "next": record.next_fire_ms,
        "buffered": record.buffered_ms,
        "lastFire": record.last_fire_ms,
    }
    durations = {"every": spec.every_ms, "after": spec.after_ms}
    for name, ms in times.items():
        if ms is not None and not _is_time(ms):
            raise schedule_unreadable(schedule_id, f"its {name} time {ms!r:.40} is out of range")
    for name, ms in durations.items():
        if ms is not None and not (_is_int(ms) and 0 < ms <= LATEST_STORED_MS):
            raise schedule_unreadable(schedule_id, f"its {name} {ms!r:.40} is out of range")
    return record


def schedule_unreadable(schedule_id: str, problem: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"stored schedule {schedule_id} cannot be read: {problem}; DeleteSchedule removes it",
        reason=Reason.SCHEDULE_UNREADABLE,
        violation=PreconditionViolation(
            "SCHEDULE_RECORD", f"schedule/{schedule_id}", "the stored schedule must be readable"
        ),
        metadata={"schedule": schedule_id},
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value: object) -> bool:
    return _is_int(value) and EARLIEST_STORED_MS <= value <= LATEST_STORED_MS  # type: ignore[operator]
