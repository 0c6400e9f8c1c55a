"""The WorkflowOperatorAPI's policy keys: each verb's switch and condition, and the one for all."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.errors import Reason
from okra_sidecar.policy import document as keys
from tests.helpers import (
    assert_reason,
    detail_types,
    expect_rpc_error,
    redis_fingerprint,
    wait_for_status,
)
from tests.policy.support import (
    Policed,
    bearer,
    denied_by,
    operated,
    run,
    settle,
)

OPS = bearer(sub="oncall", role="ops")
GUEST = bearer(sub="guest", role="guest")
DENIED = grpc.StatusCode.PERMISSION_DENIED


async def waiting_instance(policed: Policed) -> str:
    instance_id = await run(policed.stub, "test.smoke.1.0.0")
    await wait_for_status(policed.stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
    return instance_id


async def status_of(policed: Policed, instance_id: str) -> int:
    request = pb.GetStatusRequest(instance_id=instance_id)
    return (await policed.stub.GetStatus(request)).status


@pytest.mark.parametrize("verb", ["suspend", "resume", "retry", "reset", "delete"])
async def test_a_verb_that_is_switched_off_is_denied_and_writes_nothing(
    redis: Redis, redis_url: str, tmp_path: Path, verb: str
) -> None:
    async with operated(redis_url, tmp_path, {keys.OPERATOR_ALLOWED[verb]: False}) as (
        policed,
        operator,
    ):
        instance_id = await waiting_instance(policed)
        if verb == "resume":
            await operator.Suspend(opb.SuspendRequest(instance_id=instance_id))
        if verb == "delete":
            await policed.stub.Cancel(pb.CancelRequest(instance_id=instance_id))
        before = await settle(redis)
        if verb == "suspend":
            call: Awaitable[object] = operator.Suspend(opb.SuspendRequest(instance_id=instance_id))
        elif verb == "resume":
            call = operator.Resume(opb.ResumeRequest(instance_id=instance_id))
        elif verb == "retry":
            call = operator.Retry(opb.RetryRequest(instance_id=instance_id))
        elif verb == "reset":
            call = operator.Reset(opb.ResetRequest(instance_id=instance_id, task="/do/0/x"))
        else:
            call = operator.Delete(opb.DeleteRequest(instance_id=instance_id))
        error = await expect_rpc_error(call, DENIED)
        assert denied_by(error) == keys.OPERATOR_ALLOWED[verb]
        assert f"({keys.OPERATOR_ALLOWED[verb]} is false); set it to true" in (
            error.details() or ""
        )
        # No condition reads the instance, so the workflow is not known: the id alone.
        assert (error.details() or "").startswith(f"{verb.title()} of {instance_id} denied: ")
        assert await redis_fingerprint(redis) == before


async def test_the_verbs_condition_reads_the_instance_and_the_caller(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    policies = {
        keys.OPERATOR_CONDITIONS["suspend"]: (
            "request.auth.claims.role == 'ops' && instance.status == 'waiting'"
        )
    }
    async with operated(redis_url, tmp_path, policies) as (policed, operator):
        instance_id = await waiting_instance(policed)
        before = await settle(redis)
        error = await expect_rpc_error(
            operator.Suspend(opb.SuspendRequest(instance_id=instance_id), metadata=GUEST), DENIED
        )
        assert denied_by(error) == keys.OPERATOR_CONDITIONS["suspend"]
        assert "is false for this call by" in (error.details() or "")
        assert await redis_fingerprint(redis) == before
        await operator.Suspend(opb.SuspendRequest(instance_id=instance_id), metadata=OPS)
        assert await status_of(policed, instance_id) == pb.WORKFLOW_STATUS_SUSPENDED
        # Resume has its own keys: the suspend condition does not decide it.
        await operator.Resume(opb.ResumeRequest(instance_id=instance_id), metadata=GUEST)
        assert await status_of(policed, instance_id) == pb.WORKFLOW_STATUS_WAITING


async def test_the_operator_condition_decides_every_operator_rpc(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    policies = {keys.OPERATOR_CONDITION: "request.auth.claims.role == 'ops'"}
    async with operated(redis_url, tmp_path, policies) as (policed, operator):
        instance_id = await waiting_instance(policed)
        before = await settle(redis)
        for call in (
            operator.Suspend(opb.SuspendRequest(instance_id=instance_id), metadata=GUEST),
            operator.Resume(opb.ResumeRequest(instance_id=instance_id), metadata=GUEST),
            operator.Retry(opb.RetryRequest(instance_id=instance_id), metadata=GUEST),
            operator.Reset(opb.ResetRequest(instance_id=instance_id), metadata=GUEST),
            operator.Delete(opb.DeleteRequest(instance_id=instance_id), metadata=GUEST),
        ):
            error = await expect_rpc_error(call, DENIED)
            assert denied_by(error) == keys.OPERATOR_CONDITION
        assert await redis_fingerprint(redis) == before
        # The host rpcs are not operator rpcs: a guest may still cancel.
        await policed.stub.Cancel(pb.CancelRequest(instance_id=instance_id), metadata=GUEST)
        await operator.Delete(opb.DeleteRequest(instance_id=instance_id), metadata=OPS)
        await expect_rpc_error(
            policed.stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id)),
            grpc.StatusCode.NOT_FOUND,
        )


async def test_a_delete_condition_on_the_status_keeps_cancelled_instances(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    policies = {keys.OPERATOR_CONDITIONS["delete"]: "instance.status != 'cancelled'"}
    async with operated(redis_url, tmp_path, policies) as (policed, operator):
        cancelled = await waiting_instance(policed)
        await policed.stub.Cancel(pb.CancelRequest(instance_id=cancelled))
        completed = await waiting_instance(policed)
        await policed.stub.Signal(pb.SignalRequest(instance_id=completed, signal="approved"))
        await wait_for_status(policed.stub, completed, {pb.WORKFLOW_STATUS_COMPLETED})
        before = await settle(redis)
        error = await expect_rpc_error(
            operator.Delete(opb.DeleteRequest(instance_id=cancelled)), DENIED
        )
        assert denied_by(error) == keys.OPERATOR_CONDITIONS["delete"]
        assert await redis_fingerprint(redis) == before
        await operator.Delete(opb.DeleteRequest(instance_id=completed))
        await expect_rpc_error(
            policed.stub.GetStatus(pb.GetStatusRequest(instance_id=completed)),
            grpc.StatusCode.NOT_FOUND,
        )
        assert await status_of(policed, cancelled) == pb.WORKFLOW_STATUS_CANCELLED


async def test_each_verbs_denial_names_the_verb_the_instance_then_its_workflow(
    redis_url: str, tmp_path: Path
) -> None:
    # Conditions that read `instance`, so the decision knows the instance's workflow.
    condition = "request.auth.claims.role == 'ops' && instance.status != ''"
    policies = {
        keys.OPERATOR_CONDITION: condition,
        keys.SIGNAL_CONDITION: condition,
        keys.CANCEL_CONDITION: condition,
    }
    async with operated(redis_url, tmp_path, policies) as (policed, operator):
        instance_id = await waiting_instance(policed)
        calls: dict[str, tuple[Awaitable[object], str]] = {
            "Suspend": (
                operator.Suspend(opb.SuspendRequest(instance_id=instance_id), metadata=GUEST),
                keys.OPERATOR_CONDITION,
            ),
            "Resume": (
                operator.Resume(opb.ResumeRequest(instance_id=instance_id), metadata=GUEST),
                keys.OPERATOR_CONDITION,
            ),
            "Retry": (
                operator.Retry(opb.RetryRequest(instance_id=instance_id), metadata=GUEST),
                keys.OPERATOR_CONDITION,
            ),
            "Reset": (
                operator.Reset(
                    opb.ResetRequest(instance_id=instance_id, task="/do/0/x"), metadata=GUEST
                ),
                keys.OPERATOR_CONDITION,
            ),
            "Delete": (
                operator.Delete(opb.DeleteRequest(instance_id=instance_id), metadata=GUEST),
                keys.OPERATOR_CONDITION,
            ),
            "Signal": (
                policed.stub.Signal(
                    pb.SignalRequest(instance_id=instance_id, signal="approved"), metadata=GUEST
                ),
                keys.SIGNAL_CONDITION,
            ),
            "Cancel": (
                policed.stub.Cancel(pb.CancelRequest(instance_id=instance_id), metadata=GUEST),
                keys.CANCEL_CONDITION,
            ),
        }
        for verb, (call, policy) in calls.items():
            error = await expect_rpc_error(call, DENIED)
            assert (error.details() or "").startswith(
                f"{verb} of {instance_id} (test.smoke.1.0.0) denied: {policy} `{condition}` "
                "is false for this call by guest;"
            ), error.details()
            assert assert_reason(error, Reason.POLICY_DENIED) == {"policy": policy}
            assert detail_types(error) == {"google.rpc.ErrorInfo"}
