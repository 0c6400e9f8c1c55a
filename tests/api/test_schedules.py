"""ScheduleHostAPI through a real sidecar: each rpc, its rejections, and firings by the clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest_asyncio
from google.protobuf import timestamp_pb2
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc
from redis.asyncio import Redis

from okra_sidecar.schedules import FIRE_TIME_TAG, SCHEDULE_TAG
from okra_sidecar.server import Sidecar, start_sidecar
from tests.helpers import (
    FakeClock,
    bad_request_fields,
    error_info,
    expect_rpc_error,
    make_settings,
    redis_fingerprint,
    to_python,
    value,
    wait_for_status,
)

if TYPE_CHECKING:
    from okra_client.gen.schedule.v1.schedule_pb2_grpc import (
        ScheduleHostAPIAsyncStub as ScheduleStub,
    )
    from okra_client.gen.workflow.v1.workflow_pb2_grpc import (
        WorkflowHostAPIAsyncStub as WorkflowStub,
    )
else:
    ScheduleStub = spb_grpc.ScheduleHostAPIStub
    WorkflowStub = pb_grpc.WorkflowHostAPIStub

SCHEDULED_DIR = Path(__file__).parent.parent / "workflows_scheduled"
START = 1_711_324_800_000  # 2024-03-25T00:00:00Z


class Running:
    def __init__(self, sidecar: Sidecar, clock: FakeClock, channel: grpc.aio.Channel) -> None:
        self.sidecar = sidecar
        self.clock = clock
        self.schedules = ScheduleStub(channel)
        self.workflows = WorkflowStub(channel)


@pytest_asyncio.fixture
async def running(redis: Redis, redis_url: str) -> AsyncIterator[Running]:
    clock = FakeClock(START)
    sidecar = await start_sidecar(make_settings(redis_url), clock=clock)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    try:
        yield Running(sidecar, clock, channel)
    finally:
        await channel.close()
        await sidecar.stop(None)


def at(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def trigger(**fields: object) -> spb.TriggerWorkflowRequest:
    request = {
        "workflow_id": "tests.steps.1.0.0",
        "input": value({"n": 4}),
        "cron_expression": "0 0 1 * *",
        **fields,
    }
    return spb.TriggerWorkflowRequest(**request)  # type: ignore[arg-type]


async def test_trigger_workflow_as_the_seed_calls_it_and_read_it_back(running: Running) -> None:
    created = await running.schedules.TriggerWorkflow(
        trigger(time_zone="Europe/Berlin", tags={"team": "reports"})
    )
    reply = await running.schedules.GetSchedule(
        spb.GetScheduleRequest(schedule_id=created.schedule_id, next_fire_count=3)
    )
    schedule = reply.schedule
    assert schedule.workflow_id == "tests.steps.1.0.0"
    assert schedule.cron_expression == "0 0 1 * *"
    assert schedule.time_zone == "Europe/Berlin"
    assert to_python(schedule.input) == {"n": 4}
    assert schedule.source == spb.SCHEDULE_SOURCE_API
    assert schedule.overlap_policy == spb.OVERLAP_POLICY_ALLOW
    assert schedule.catch_up_policy == spb.CATCH_UP_POLICY_FIRE_ONCE
    assert [t.ToJsonString() for t in schedule.next_fire_times] == [
        "2024-03-31T22:00:00Z",
        "2024-04-30T22:00:00Z",
        "2024-05-31T22:00:00Z",
    ]
    listed = await running.schedules.ListSchedules(spb.ListSchedulesRequest())
    assert [s.schedule_id for s in listed.schedules] == [created.schedule_id]
    assert len(listed.schedules[0].next_fire_times) == 1


async def test_a_firing_starts_an_instance_tagged_with_schedule_and_time(
    running: Running,
) -> None:
    created = await running.schedules.TriggerWorkflow(
        trigger(cron_expression="*/10 * * * * *", tags={"team": "reports"})
    )
    running.clock.now += 10_000
    scheduler = running.sidecar.scheduler
    assert scheduler is not None
    await scheduler.run_once()
    page = await running.workflows.Query(pb.QueryRequest(tags={SCHEDULE_TAG: created.schedule_id}))
    [instance] = page.instances
    assert dict(instance.tags) == {
        "team": "reports",
        SCHEDULE_TAG: created.schedule_id,
        FIRE_TIME_TAG: "2024-03-25T00:00:10.000Z",
    }
    assert to_python(instance.input) == {"n": 4}
    status = await wait_for_status(
        running.workflows, instance.instance_id, {pb.WORKFLOW_STATUS_COMPLETED}
    )
    assert to_python(status.output) == {"n": 52, "done": True}
    reply = await running.schedules.GetSchedule(
        spb.GetScheduleRequest(schedule_id=created.schedule_id)
    )
    assert reply.schedule.last_instance_id == instance.instance_id
    assert reply.schedule.fired_count == 1
    assert reply.schedule.last_fire_time.ToJsonString() == "2024-03-25T00:00:10Z"


async def test_pause_resume_and_delete(running: Running) -> None:
    created = await running.schedules.TriggerWorkflow(trigger())
    target: dict[str, Any] = {"schedule_id": created.schedule_id}
    paused = await running.schedules.PauseSchedule(spb.PauseScheduleRequest(**target))
    assert paused.schedule.paused
    assert list(paused.schedule.next_fire_times) == []
    resumed = await running.schedules.ResumeSchedule(spb.ResumeScheduleRequest(**target))
    assert not resumed.schedule.paused
    assert resumed.schedule.next_fire_times[0].ToJsonString() == "2024-04-01T00:00:00Z"
    await running.schedules.DeleteSchedule(spb.DeleteScheduleRequest(**target))
    error = await expect_rpc_error(
        running.schedules.GetSchedule(spb.GetScheduleRequest(**target)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert created.schedule_id in (error.details() or "")
    await expect_rpc_error(
        running.schedules.DeleteSchedule(spb.DeleteScheduleRequest(**target)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_list_pages_through_schedules(running: Running) -> None:
    ids = sorted(
        [
            (await running.schedules.TriggerWorkflow(trigger(request_id=f"r{i}"))).schedule_id
            for i in range(5)
        ]
    )
    seen: list[str] = []
    cursor = ""
    while True:
        page = await running.schedules.ListSchedules(
            spb.ListSchedulesRequest(limit=2, cursor=cursor)
        )
        seen += [s.schedule_id for s in page.schedules]
        cursor = page.cursor
        if not cursor:
            break
    assert seen == ids
    other = await running.schedules.ListSchedules(
        spb.ListSchedulesRequest(workflow_id="tests.nap.1.0.0")
    )
    assert list(other.schedules) == []


async def test_bad_requests_are_invalid_argument_and_write_nothing(
    running: Running, redis: Redis
) -> None:
    before = await redis_fingerprint(redis)
    cases = [
        (trigger(cron_expression="61 * * * *"), "cron_expression", "out of range"),
        (trigger(cron_expression="* * * *"), "cron_expression", "has 4 fields"),
        (trigger(cron_expression=""), "cron_expression", "is required"),
        (trigger(time_zone="Mars/Olympus"), "time_zone", "not an IANA time zone"),
        (trigger(workflow_id="not an id"), "workflow_id", ""),
        (
            trigger(workflow_id="tests.approval.1.0.0", input=value({"amount": "four"})),
            "input.amount",
            "",
        ),
        (trigger(tags={SCHEDULE_TAG: "x"}), f"tags.{SCHEDULE_TAG}", "set by the schedule"),
        (trigger(start_time=at(START + 10), end_time=at(START)), "start_time", "earlier"),
        (trigger(end_time=at(START + 1000)), "end_time", "never fires"),
        (trigger(overlap_policy=9), "overlap_policy", ""),
    ]
    for request, field, words in cases:
        error = await expect_rpc_error(
            running.schedules.TriggerWorkflow(request), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert words in (error.details() or ""), (field, error.details())
        assert field in bad_request_fields(error), (field, bad_request_fields(error))
    for call in (
        running.schedules.GetSchedule(spb.GetScheduleRequest(schedule_id="nope")),
        running.schedules.PauseSchedule(spb.PauseScheduleRequest(schedule_id="")),
        running.schedules.ListSchedules(spb.ListSchedulesRequest(cursor="!!")),
        running.schedules.ListSchedules(spb.ListSchedulesRequest(next_fire_count=51)),
    ):
        await expect_rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT)
    await expect_rpc_error(
        running.schedules.TriggerWorkflow(trigger(workflow_id="tests.missing.1.0.0")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await redis_fingerprint(redis) == before


async def test_reflection_lists_the_schedule_service(running: Running) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.sidecar.port}")
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request])):
            names = {s.name for s in reply.list_services_response.service}
            assert "okra.schedule.v1.ScheduleHostAPI" in names
            break
    finally:
        await channel.close()


async def test_definition_schedules_are_listed_and_cannot_be_deleted(
    redis: Redis, redis_url: str
) -> None:
    clock = FakeClock(START)
    sidecar = await start_sidecar(make_settings(redis_url, workflows=SCHEDULED_DIR), clock=clock)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    try:
        schedules = ScheduleStub(channel)
        listed = await schedules.ListSchedules(spb.ListSchedulesRequest(next_fire_count=2))
        by_id = {s.schedule_id: s for s in listed.schedules}
        assert set(by_id) == {
            "workflow:sched.again",
            "workflow:sched.nightly",
            "workflow:sched.tick",
        }
        tick = by_id["workflow:sched.tick"]
        assert tick.source == spb.SCHEDULE_SOURCE_DEFINITION
        assert tick.every.ToMilliseconds() == 1000
        assert tick.definition_version == "1.0.0"
        assert [t.ToMilliseconds() for t in tick.next_fire_times] == [START + 1000, START + 2000]
        assert by_id["workflow:sched.nightly"].next_fire_times[0].ToJsonString() == (
            "2024-03-25T02:00:00Z"
        )
        workflows = WorkflowStub(channel)
        infos = await workflows.ListWorkflows(pb.ListWorkflowsRequest())
        triggers = {w.workflow_id: list(w.triggers) for w in infos.workflows}
        assert triggers == {
            "sched.again.1.0.0": ["manual", "after"],
            "sched.nightly.1.0.0": ["manual", "cron"],
            "sched.tick.1.0.0": ["manual", "every"],
        }
        error = await expect_rpc_error(
            schedules.DeleteSchedule(spb.DeleteScheduleRequest(schedule_id=tick.schedule_id)),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert "pause it" in (error.details() or "")
    finally:
        await channel.close()
        await sidecar.stop(None)


async def test_a_stored_schedule_out_of_range_is_left_out_and_can_be_deleted(
    running: Running, redis: Redis
) -> None:
    keys = running.sidecar.store.keys
    good = await running.schedules.TriggerWorkflow(trigger(tags={"n": "good"}))
    # Records as another writer could leave them: times no datetime or Timestamp holds, a
    # field of the wrong type, and no JSON at all.
    changes: list[tuple[str, object]] = [
        ("start", -(2**62) * 1000),
        ("next", 2**62),
        ("anchor", "x"),
        ("every", -5),
    ]
    bad_ids = []
    for field, bad in changes:
        created = await running.schedules.TriggerWorkflow(trigger(tags={"n": field}))
        key = keys.schedule(created.schedule_id)
        stored = await redis.hget(key, "r")
        assert stored is not None
        record = json.loads(stored)
        target = record["spec"] if field in ("start", "every") else record
        target[field] = bad
        await redis.hset(key, "r", json.dumps(record))
        bad_ids.append(created.schedule_id)
    garbage = await running.schedules.TriggerWorkflow(trigger(tags={"n": "garbage"}))
    await redis.hset(keys.schedule(garbage.schedule_id), "r", "{not json")
    bad_ids.append(garbage.schedule_id)

    listed = await running.schedules.ListSchedules(spb.ListSchedulesRequest(next_fire_count=2))
    assert [s.schedule_id for s in listed.schedules] == [good.schedule_id]
    first = await running.schedules.ListSchedules(spb.ListSchedulesRequest(limit=1))
    assert [s.schedule_id for s in first.schedules] == [good.schedule_id]
    for schedule_id in bad_ids:
        error = await expect_rpc_error(
            running.schedules.GetSchedule(spb.GetScheduleRequest(schedule_id=schedule_id)),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        info = error_info(error)
        assert info is not None and info.reason == "SCHEDULE_UNREADABLE"
        assert f"stored schedule {schedule_id} cannot be read" in (error.details() or "")
        await expect_rpc_error(
            running.schedules.PauseSchedule(spb.PauseScheduleRequest(schedule_id=schedule_id)),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    # The firing clock passes them by instead of failing every tick at the first of them.
    running.clock.now += 40 * 86_400_000
    assert running.sidecar.scheduler is not None
    await running.sidecar.scheduler.run_once()
    assert await redis.zscore(keys.schedules_due, good.schedule_id) is not None
    for schedule_id in bad_ids:
        assert await redis.zscore(keys.schedules_due, schedule_id) is None
        await running.schedules.DeleteSchedule(spb.DeleteScheduleRequest(schedule_id=schedule_id))
        assert not await redis.exists(keys.schedule(schedule_id))
    assert not await redis.zscore(keys.schedules_all, bad_ids[0])
    listed = await running.schedules.ListSchedules(spb.ListSchedulesRequest())
    assert [s.schedule_id for s in listed.schedules] == [good.schedule_id]
