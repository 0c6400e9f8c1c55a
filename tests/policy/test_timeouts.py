"""Policy timeouts enforced by the engine on the real clock: fail, cancel and continue."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from tests.helpers import KEYS, eventually_held, wait_for_status
from tests.policy.support import ADMIN, APP_KEYS, Policed, policed_sidecar, policy_settings, run

WAITING = {pb.WORKFLOW_STATUS_WAITING}


async def set_policies(policed: Policed, text: str) -> None:
    await policed.admin.SetPolicies(admin_pb.SetPoliciesRequest(text=text), metadata=ADMIN)


async def history_types(redis: Redis, instance_id: str) -> list[str]:
    entries: Any = await redis.xrange(KEYS.history(instance_id))
    return [json.loads(fields[b"e"])["type"] for _, fields in entries]


async def test_cancel_when_the_instance_outlives_max_duration(redis: Redis, redis_url: str) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        await set_policies(
            policed,
            '{"policy.workflow.maxDurationMinutes": 0.01, "policy.workflow.timeoutAction": '
            '"cancel"}',
        )
        instance_id = await run(policed.stub, "app.orders.1.0.0")
        done = await wait_for_status(
            policed.stub, instance_id, {pb.WORKFLOW_STATUS_CANCELLED}, timeout_s=5
        )
        assert done.cancel_reason == (
            "cancelled by policy: the instance ran longer than 0.6 s "
            "(policy.workflow.maxDurationMinutes)"
        )
        assert 600 <= done.end_time.ToMilliseconds() - done.start_time.ToMilliseconds() < 3000
        await eventually_held(redis, 0, keys=APP_KEYS)
        await eventually_held(redis, 0, "app.orders", keys=APP_KEYS)
        assert "workflow.timeoutExceeded" in await history_types(redis, instance_id)


async def test_fail_a_step_without_its_own_timeout(redis: Redis, redis_url: str) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        await set_policies(policed, '{"policy.workflow.defaultTimeoutMs": 300}')
        plain = await run(policed.stub, "app.orders.1.0.0")
        patient = await run(policed.stub, "app.patient.1.0.0")
        failed = await wait_for_status(
            policed.stub, plain, {pb.WORKFLOW_STATUS_FAILED}, timeout_s=5
        )
        assert failed.error.type == "https://serverlessworkflow.io/spec/1.0.0/errors/timeout"
        assert failed.error.instance == "/do/0/awaitDecision"
        # The step that sets its own timeout (an hour) keeps waiting.
        status = await policed.stub.GetStatus(pb.GetStatusRequest(instance_id=patient))
        assert status.status == pb.WORKFLOW_STATUS_WAITING


async def test_continue_records_the_timeout_and_carries_on(redis: Redis, redis_url: str) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        await set_policies(
            policed,
            '{"policy.workflow.defaultTimeoutMs": 200, "policy.workflow.maxDurationMinutes": '
            '0.005, "policy.workflow.timeoutAction": "continue"}',
        )
        instance_id = await run(policed.stub, "app.orders.1.0.0")
        await wait_for_status(policed.stub, instance_id, WAITING)
        for _ in range(200):
            types = await history_types(redis, instance_id)
            if types.count("workflow.timeoutExceeded") >= 2:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"no timeout events in {types}")
        fields = await redis.hmget(KEYS.instance(instance_id), ["status", "deadline"])
        # Still waiting; the spent deadline is cleared so it does not fire again.
        assert fields == [b"waiting", b""]
        await policed.stub.Signal(pb.SignalRequest(instance_id=instance_id, signal="approved"))
        await wait_for_status(policed.stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})


async def test_the_sidecars_default_timeout_applies_unless_a_policy_sets_one(
    redis: Redis, redis_url: str
) -> None:
    settings = policy_settings(redis_url)
    settings = replace(settings, host=replace(settings.host, default_timeout_s=0.3))
    async with policed_sidecar(settings) as policed:
        plain = await run(policed.stub, "app.orders.1.0.0")
        failed = await wait_for_status(
            policed.stub, plain, {pb.WORKFLOW_STATUS_FAILED}, timeout_s=5
        )
        assert failed.error.type == "https://serverlessworkflow.io/spec/1.0.0/errors/timeout"
        assert failed.error.title == "Timed out"
        assert failed.error.detail == "a step took longer than 300 ms (defaultTimeout)"
        # A policy's defaultTimeoutMs overrides the sidecar's default.
        await set_policies(policed, '{"policy.workflow.defaultTimeoutMs": 3600000}')
        patient = await run(policed.stub, "app.orders.1.0.0")
        await wait_for_status(policed.stub, patient, WAITING)
        record = await redis.hmget(KEYS.instance(patient), ["steptmo", "stsrc"])
        assert record == [b"3600000", None]
