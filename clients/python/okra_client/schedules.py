"""ScheduleClient: the ScheduleHostAPI's rpcs (`OkraClient.schedules`), with plain dataclasses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.models import Json, from_value, to_timestamp, to_value

if TYPE_CHECKING:
    from okra_client.gen.schedule.v1.schedule_pb2_grpc import ScheduleHostAPIAsyncStub

__all__ = ["CatchUpPolicy", "OverlapPolicy", "Schedule", "ScheduleClient", "ScheduleSource"]


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
    """Who made a schedule: the ScheduleHostAPI, or a definition's `schedule`."""

    API = "api"
    DEFINITION = "definition"


R = TypeVar("R")


_OVERLAP_TO_PB = {
    OverlapPolicy.ALLOW: spb.OVERLAP_POLICY_ALLOW,
    OverlapPolicy.SKIP: spb.OVERLAP_POLICY_SKIP,
    OverlapPolicy.BUFFER_ONE: spb.OVERLAP_POLICY_BUFFER_ONE,
}
_CATCH_UP_TO_PB = {
    CatchUpPolicy.SKIP_MISSED: spb.CATCH_UP_POLICY_SKIP_MISSED,
    CatchUpPolicy.FIRE_ONCE: spb.CATCH_UP_POLICY_FIRE_ONCE,
}
_SOURCE_FROM_PB = {
    spb.SCHEDULE_SOURCE_API: ScheduleSource.API,
    spb.SCHEDULE_SOURCE_DEFINITION: ScheduleSource.DEFINITION,
}


@dataclass(frozen=True)
class Schedule:
    """One schedule and where it stands, as GetSchedule and ListSchedules report it."""

    schedule_id: str
    workflow_id: str
    source: ScheduleSource | None
    paused: bool
    input: Json = None
    cron_expression: str = ""
    time_zone: str = ""
    every: timedelta | None = None
    after: timedelta | None = None
    next_fire_times: list[datetime] = field(default_factory=list)
    last_fire_time: datetime | None = None
    last_instance_id: str = ""
    fired_count: int = 0
    skipped_count: int = 0
    last_error: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Json]:
        """camelCase keys and ISO 8601 times, as grpcurl prints the message."""
        data: dict[str, Json] = {
            "scheduleId": self.schedule_id,
            "workflowId": self.workflow_id,
            "source": self.source.value if self.source else None,
            "paused": self.paused,
            "input": self.input,
            "cronExpression": self.cron_expression or None,
            "timeZone": self.time_zone or None,
            "every": _seconds(self.every),
            "after": _seconds(self.after),
            "nextFireTimes": [_iso(t) for t in self.next_fire_times],
            "lastFireTime": _iso(self.last_fire_time),
            "lastInstanceId": self.last_instance_id or None,
            "firedCount": self.fired_count,
            "skippedCount": self.skipped_count,
            "lastError": self.last_error or None,
            "tags": self.tags or None,
        }
        return {key: item for key, item in data.items() if item is not None}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def _seconds(span: timedelta | None) -> str | None:
    return f"{span.total_seconds():g}s" if span is not None else None


def _time(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def schedule_from_pb(message: spb.Schedule) -> Schedule:
    return Schedule(
        schedule_id=message.schedule_id,
        workflow_id=message.workflow_id,
        source=_SOURCE_FROM_PB.get(message.source),
        paused=message.paused,
        input=from_value(message.input),
        cron_expression=message.cron_expression,
        time_zone=message.time_zone,
        every=message.every.ToTimedelta() if message.HasField("every") else None,
        after=message.after.ToTimedelta() if message.HasField("after") else None,
        next_fire_times=[_time(t) for t in message.next_fire_times],
        last_fire_time=_time(message.last_fire_time)
        if message.HasField("last_fire_time")
        else None,
        last_instance_id=message.last_instance_id,
        fired_count=message.fired_count,
        skipped_count=message.skipped_count,
        last_error=message.last_error,
        tags=dict(message.tags),
    )


class CallRunner(Protocol):
    """`OkraClient._call`: one call within the client's deadline, retried if idempotent."""

    def __call__(
        self,
        attempt_call: Callable[[float | None], Awaitable[R]],
        *,
        timeout_s: float | None,
        idempotent: bool,
    ) -> Awaitable[R]: ...


class ScheduleClient:
    """Creates, reads, pauses, resumes and deletes schedules; get it as `OkraClient.schedules`.

    It shares its client's channel, metadata, deadline and retries: reads are retried on
    UNAVAILABLE, and so is `trigger` with a `request_id`.
    """

    def __init__(
        self, channel: grpc.aio.Channel, *, call: CallRunner, metadata: Sequence[tuple[str, str]]
    ) -> None:
        self._stub: ScheduleHostAPIAsyncStub = spb_grpc.ScheduleHostAPIStub(channel)
        self._call = call
        self._metadata = tuple(metadata)

    async def trigger(
        self,
        workflow_id: str,
        input: Json,
        cron_expression: str,
        *,
        time_zone: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        overlap: OverlapPolicy | None = None,
        catch_up: CatchUpPolicy | None = None,
        tags: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Create a cron schedule that runs `workflow_id` with `input`; returns its id."""
        request = spb.TriggerWorkflowRequest(
            workflow_id=workflow_id,
            input=to_value(input),
            cron_expression=cron_expression,
            time_zone=time_zone or "",
            overlap_policy=_OVERLAP_TO_PB[overlap] if overlap else spb.OVERLAP_POLICY_UNSPECIFIED,
            catch_up_policy=_CATCH_UP_TO_PB[catch_up]
            if catch_up
            else spb.CATCH_UP_POLICY_UNSPECIFIED,
            tags=dict(tags or {}),
            request_id=request_id or "",
        )
        if start_time is not None:
            request.start_time.CopyFrom(to_timestamp(start_time))
        if end_time is not None:
            request.end_time.CopyFrom(to_timestamp(end_time))
        response = await self._call(
            lambda t: self._stub.TriggerWorkflow(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=bool(request_id),
        )
        return response.schedule_id

    async def get(
        self, schedule_id: str, *, next_fire_count: int = 0, timeout_s: float | None = None
    ) -> Schedule:
        """One schedule, with its next `next_fire_count` fire times (the sidecar's default: 5)."""
        request = spb.GetScheduleRequest(schedule_id=schedule_id, next_fire_count=next_fire_count)
        response = await self._call(
            lambda t: self._stub.GetSchedule(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,
        )
        return schedule_from_pb(response.schedule)

    async def list(
        self,
        *,
        workflow_id: str | None = None,
        page_size: int | None = None,
        next_fire_count: int = 0,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Schedule]:
        """Every schedule (of `workflow_id` if given), ordered by id, page after page."""
        cursor = ""
        while True:
            request = spb.ListSchedulesRequest(
                workflow_id=workflow_id or "",
                limit=page_size or 0,
                cursor=cursor,
                next_fire_count=next_fire_count,
            )
            response = await self._list_page(request, timeout_s)
            for message in response.schedules:
                yield schedule_from_pb(message)
            if not response.cursor:
                return
            cursor = response.cursor

    async def _list_page(
        self, request: spb.ListSchedulesRequest, timeout_s: float | None
    ) -> spb.ListSchedulesResponse:
        return await self._call(
            lambda t: self._stub.ListSchedules(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,
        )

    async def pause(self, schedule_id: str, *, timeout_s: float | None = None) -> Schedule:
        """Stop firing until `resume`; pausing a paused schedule changes nothing."""
        request = spb.PauseScheduleRequest(schedule_id=schedule_id)
        response = await self._call(
            lambda t: self._stub.PauseSchedule(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,
        )
        return schedule_from_pb(response.schedule)

    async def resume(self, schedule_id: str, *, timeout_s: float | None = None) -> Schedule:
        """Fire again from the next fire time on."""
        request = spb.ResumeScheduleRequest(schedule_id=schedule_id)
        response = await self._call(
            lambda t: self._stub.ResumeSchedule(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=True,
        )
        return schedule_from_pb(response.schedule)

    async def delete(self, schedule_id: str, *, timeout_s: float | None = None) -> None:
        """Remove a schedule created by `trigger` (a definition's cannot be deleted)."""
        request = spb.DeleteScheduleRequest(schedule_id=schedule_id)
        await self._call(
            lambda t: self._stub.DeleteSchedule(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout_s,
            idempotent=False,
        )
