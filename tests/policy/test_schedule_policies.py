"""Schedules go through the run policies as whoever created them, at creation and each firing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc
from redis.asyncio import Redis

from okra_sidecar.schedules import SCHEDULE_TAG
from okra_sidecar.server import start_sidecar
from tests.helpers import FakeClock, expect_rpc_error
from tests.policy.support import bearer, policy_settings, write_policies

START = 1_711_324_800_000  # 2024-03-25T00:00:00Z


async def test_schedules_run_as_their_creator(redis: Redis, redis_url: str, tmp_path: Path) -> None:
    policies = write_policies(
        tmp_path,
        json.dumps({"policy.workflow.run.condition": "request.auth.claims.role == 'reporter'"}),
    )
    clock = FakeClock(START)
    sidecar = await start_sidecar(policy_settings(redis_url, policies), clock=clock)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    try:
        schedules = spb_grpc.ScheduleHostAPIStub(channel)
        request = spb.TriggerWorkflowRequest(
            workflow_id="report.generation.1.0.0", cron_expression="0 * * * *"
        )
        error = await expect_rpc_error(
            schedules.TriggerWorkflow(request, metadata=bearer(sub="guest", role="guest")),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert "policy.workflow.run.condition" in (error.details() or "")
        created = await schedules.TriggerWorkflow(
            request, metadata=bearer(sub="reports", role="reporter")
        )
        scheduler = sidecar.scheduler
        assert scheduler is not None
        clock.now += 3_600_000
        # The firing has no caller: it runs with the creator's claims, so the condition holds.
        assert await scheduler.run_once() == 1

        write_policies(tmp_path, json.dumps({"policy.workflow.run.blocked": ["report.generation"]}))
        for _ in range(100):  # the sidecar watches the policy file, by the wall clock
            await asyncio.sleep(0.05)
            clock.now += 3_600_000
            await scheduler.run_once()
            record = await scheduler.get(created.schedule_id)
            if record.skipped:
                break
        assert "policy.workflow.run.blocked" in record.last_error
        assert record.fired >= 1

        workflows = pb_grpc.WorkflowHostAPIStub(channel)
        page = await workflows.Query(
            pb.QueryRequest(tags={SCHEDULE_TAG: created.schedule_id}),
            metadata=bearer(sub="reports", role="reporter"),
        )
        assert len(page.instances) == record.fired
    finally:
        await channel.close()
        await sidecar.stop(None)
