"""maxInstanceDuration: instances that run too long end with the spec's timeout error."""

from __future__ import annotations

import asyncio
import time

import grpc
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.schedules import SCHEDULE_TAG
from tests.helpers import make_settings, running_sidecar, wait_for_status, with_host

TIMEOUT_TYPE = "https://serverlessworkflow.io/spec/1.0.0/errors/timeout"


async def test_a_run_past_max_instance_duration_fails_with_a_timeout(
    redis: Redis, redis_url: str
) -> None:
    settings = with_host(make_settings(redis_url), max_instance_duration_s=0.3)
    async with running_sidecar(settings) as (_, stub):
        started = time.monotonic()
        held = (await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))).instance_id
        quick = (await stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0"))).instance_id
        failed = await wait_for_status(stub, held, {pb.WORKFLOW_STATUS_FAILED}, timeout_s=5)
        assert time.monotonic() - started >= 0.3
        assert failed.error.type == TIMEOUT_TYPE
        assert failed.error.status == 408
        assert failed.error.title == "Timed out"
        assert failed.error.detail == "the instance ran longer than 0.3 s (maxInstanceDuration)"
        await wait_for_status(stub, quick, {pb.WORKFLOW_STATUS_COMPLETED})


async def test_scheduled_instances_get_the_same_limit(redis: Redis, redis_url: str) -> None:
    settings = with_host(make_settings(redis_url), max_instance_duration_s=0.3)
    async with (
        running_sidecar(settings) as (sidecar, stub),
        grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel,
    ):
        schedules = spb_grpc.ScheduleHostAPIStub(channel)
        created = await schedules.TriggerWorkflow(
            spb.TriggerWorkflowRequest(
                workflow_id="tests.forever.1.0.0",
                cron_expression="* * * * * *",
                overlap_policy=spb.OVERLAP_POLICY_SKIP,
            )
        )
        for _ in range(300):
            page = await stub.Query(pb.QueryRequest(tags={SCHEDULE_TAG: created.schedule_id}))
            if page.instances:
                break
            await asyncio.sleep(0.01)
        first = page.instances[-1]
        failed = await wait_for_status(
            stub, first.instance_id, {pb.WORKFLOW_STATUS_FAILED}, timeout_s=5
        )
        assert failed.error.type == TIMEOUT_TYPE
        await schedules.DeleteSchedule(spb.DeleteScheduleRequest(schedule_id=created.schedule_id))
