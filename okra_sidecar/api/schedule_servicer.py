"""ScheduleHostServicer: the schedule rpcs, from protobuf to the scheduler and back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc

from okra_sidecar.api.convert import (
    CATCH_UP_FROM_PB,
    OVERLAP_FROM_PB,
    optional_time_ms,
    schedule_to_pb,
    value_to_python,
)
from okra_sidecar.api.resource_gates import ScheduleGate
from okra_sidecar.config import HostSettings
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.engine.runtime.scheduler import FiringAuthorizer, Scheduler
from okra_sidecar.engine.runtime.timing import CronExpression, TimingError, parse_time_zone
from okra_sidecar.errors import InvalidInputError
from okra_sidecar.policy import rules
from okra_sidecar.schedules import (
    FIRE_TIME_TAG,
    SCHEDULE_ID_RE,
    SCHEDULE_TAG,
    ScheduleRecord,
    ScheduleSpec,
)

Context = grpc.aio.ServicerContext[Any, Any]
MAX_TAGS = 62  # the instance's own two make the 64 Run allows
MAX_TEXT = 256
MAX_NEXT_FIRE_COUNT = 50
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000


def _check_text(value: str, field: str, limit: int = MAX_TEXT) -> None:
    if len(value) > limit:
        raise InvalidInputError.for_field(field, f"is {len(value)} characters; at most {limit}")


def _check_schedule_id(schedule_id: str) -> None:
    if not SCHEDULE_ID_RE.fullmatch(schedule_id):
        raise InvalidInputError.for_field(
            "schedule_id",
            f"'{schedule_id[:80]}' is not a schedule id (a UUID from TriggerWorkflow, or "
            "workflow:<namespace>.<name>)",
        )


def _next_fire_count(value: int, default: int, field: str = "next_fire_count") -> int:
    if value < 0 or value > MAX_NEXT_FIRE_COUNT:
        raise InvalidInputError.for_field(field, f"must be 0 to {MAX_NEXT_FIRE_COUNT}")
    return value or default


def _check_tags(tags: dict[str, str]) -> None:
    if len(tags) > MAX_TAGS:
        raise InvalidInputError.for_field("tags", f"has {len(tags)} tags; at most {MAX_TAGS}")
    for name, value in tags.items():
        if not name:
            raise InvalidInputError.for_field("tags", "a tag name may not be empty")
        if name in (SCHEDULE_TAG, FIRE_TIME_TAG):
            raise InvalidInputError.for_field(f"tags.{name}", "is set by the schedule itself")
        _check_text(name, f"tags.{name}")
        _check_text(value, f"tags.{name}")


def no_owner() -> Mapping[str, Any]:
    return {}


class ScheduleHostServicer(spb_grpc.ScheduleHostAPIServicer):
    """Checks each request, then hands it to the scheduler.

    `owner` returns the verified claims of the caller (empty without a bearer token): the
    schedule is checked by the run policies as a Run by that caller now, and so is each firing.
    """

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        registry: WorkflowRegistry,
        settings: HostSettings,
        gate: ScheduleGate,
        owner: Callable[[], Mapping[str, Any]] = no_owner,
        authorize: FiringAuthorizer | None = None,
    ) -> None:
        self._authorize = authorize
        self._gate = gate
        self._scheduler = scheduler
        self._registry = registry
        self._settings = settings
        self._owner = owner

    def _to_pb(self, record: ScheduleRecord, count: int) -> spb.Schedule:
        return schedule_to_pb(record, self._scheduler.upcoming(record, count))

    async def TriggerWorkflow(
        self, request: spb.TriggerWorkflowRequest, context: Context
    ) -> spb.TriggerWorkflowResponse:
        rules.check_workflow_id(request.workflow_id)
        await self._gate.trigger(context, request.workflow_id)
        rules.check_input_size(request.input.ByteSize(), self._settings.max_input_bytes)
        _check_text(request.request_id, "request_id")
        _check_text(request.cron_expression, "cron_expression")
        _check_text(request.time_zone, "time_zone", 64)
        tags = dict(request.tags)
        _check_tags(tags)
        try:
            parse_time_zone(request.time_zone)
        except TimingError as exc:
            raise InvalidInputError.for_field("time_zone", str(exc)) from None
        try:
            cron = CronExpression.parse(request.cron_expression, request.time_zone)
        except TimingError as exc:
            raise InvalidInputError.for_field("cron_expression", str(exc)) from None
        if request.overlap_policy not in OVERLAP_FROM_PB:
            raise InvalidInputError.for_field("overlap_policy", "is not an OverlapPolicy")
        if request.catch_up_policy not in CATCH_UP_FROM_PB:
            raise InvalidInputError.for_field("catch_up_policy", "is not a CatchUpPolicy")
        start = optional_time_ms(request, "start_time")
        end = optional_time_ms(request, "end_time")
        if start is not None and end is not None and start >= end:
            raise InvalidInputError.for_field("start_time", "must be earlier than end_time")
        registered = await self._registry.resolve(request.workflow_id)
        data = value_to_python(request.input, "input") if request.HasField("input") else {}
        rules.check_input_depth(data, self._settings.max_input_depth)
        rules.check_input_schema(data, registered.input_validator)
        owner = self._owner()
        if self._authorize is not None:
            await self._authorize(
                owner=owner, workflow_id=registered.definition.id, workflow_input=data
            )
        spec = ScheduleSpec(
            workflow_id=request.workflow_id,
            input=data,
            cron=cron.expression,
            time_zone=request.time_zone if request.time_zone != "UTC" else "",
            start_ms=start,
            end_ms=end,
            overlap=OVERLAP_FROM_PB[request.overlap_policy],
            catch_up=CATCH_UP_FROM_PB[request.catch_up_policy],
            tags=tags,
        )
        record = await self._scheduler.create(spec, owner=owner, request_id=request.request_id)
        return spb.TriggerWorkflowResponse(schedule_id=record.schedule_id)

    async def ListSchedules(
        self, request: spb.ListSchedulesRequest, context: Context
    ) -> spb.ListSchedulesResponse:
        visible = await self._gate.listing(context, request.workflow_id)
        if request.limit < 0 or request.limit > MAX_LIST_LIMIT:
            raise InvalidInputError.for_field("limit", f"must be 0 to {MAX_LIST_LIMIT}")
        if request.workflow_id:
            rules.check_workflow_id(request.workflow_id)
        count = _next_fire_count(request.next_fire_count, 1)
        page = await self._scheduler.list_page(
            workflow_id=request.workflow_id,
            limit=request.limit or DEFAULT_LIST_LIMIT,
            cursor=request.cursor,
        )
        return spb.ListSchedulesResponse(
            schedules=[self._to_pb(r, count) for r in visible.shown(page.schedules)],
            cursor=page.cursor,
        )

    async def GetSchedule(
        self, request: spb.GetScheduleRequest, context: Context
    ) -> spb.GetScheduleResponse:
        await self._gate.one(context, "GetSchedule", request.schedule_id)
        _check_schedule_id(request.schedule_id)
        count = _next_fire_count(request.next_fire_count, 5)
        record = await self._scheduler.get(request.schedule_id)
        return spb.GetScheduleResponse(schedule=self._to_pb(record, count))

    async def PauseSchedule(
        self, request: spb.PauseScheduleRequest, context: Context
    ) -> spb.PauseScheduleResponse:
        await self._gate.one(context, "PauseSchedule", request.schedule_id)
        _check_schedule_id(request.schedule_id)
        record = await self._scheduler.pause(request.schedule_id)
        return spb.PauseScheduleResponse(schedule=self._to_pb(record, 5))

    async def ResumeSchedule(
        self, request: spb.ResumeScheduleRequest, context: Context
    ) -> spb.ResumeScheduleResponse:
        await self._gate.one(context, "ResumeSchedule", request.schedule_id)
        _check_schedule_id(request.schedule_id)
        record = await self._scheduler.resume(request.schedule_id)
        return spb.ResumeScheduleResponse(schedule=self._to_pb(record, 5))

    async def DeleteSchedule(
        self, request: spb.DeleteScheduleRequest, context: Context
    ) -> spb.DeleteScheduleResponse:
        await self._gate.one(context, "DeleteSchedule", request.schedule_id)
        _check_schedule_id(request.schedule_id)
        await self._scheduler.delete(request.schedule_id)
        return spb.DeleteScheduleResponse()


__all__ = ["ScheduleHostServicer"]
