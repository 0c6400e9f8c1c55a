"""The seed's policy snippets 7 to 12, verbatim, on a real sidecar: environments, inputs,
cancels, audit, namespaces and timeouts (1 to 6 are in test_seed_snippets.py)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
from google.protobuf import json_format, struct_pb2
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.clock import now_ms
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.engine.runtime.runner import EngineRunner
from okra_sidecar.policy import document as keys
from tests.helpers import (
    FAST_ENGINE,
    KEYS,
    bad_request_fields,
    eventually,
    expect_rpc_error,
    redis_fingerprint,
    value,
    wait_for_status,
)
from tests.policy import seed
from tests.policy.support import (
    WAITING,
    Policed,
    audit_records,
    bearer,
    expect_denied,
    policed_sidecar,
    policy_settings,
    run,
    write_policies,
)


async def test_7_production_allows_its_workflows(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    path = write_policies(tmp_path, seed.document(seed.ENVIRONMENT_POLICIES))
    settings = policy_settings(redis_url, path, env={"DEPLOYMENT_ENV": "production"})
    async with policed_sidecar(settings) as running:
        assert await run(running.stub, "app.orders.1.0.0")
        # As the seed writes it, `workflow.id != 'test.*'` compares strings: CEL has no globs,
        # so a test workflow is not singled out. docs/policies.md gives the form that is.
        assert await run(running.stub, "test.smoke.1.0.0")


async def test_7_without_the_deployment_env_every_call_is_denied(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    path = write_policies(tmp_path, seed.document(seed.ENVIRONMENT_POLICIES))
    async with policed_sidecar(policy_settings(redis_url, path, env={})) as running:
        await expect_denied(
            redis,
            lambda: running.stub.Run(pb.RunRequest(workflow_id="app.orders.1.0.0")),
            policy=keys.CONDITION,
            message="env.DEPLOYMENT_ENV is not set on this sidecar, set it in its environment), "
            "and a policy that cannot be evaluated denies",
        )


@pytest_asyncio.fixture
async def inputs(tmp_path: Path, redis: Redis, redis_url: str) -> AsyncIterator[Policed]:
    path = write_policies(tmp_path, seed.document(seed.INPUT_VALIDATION))
    async with policed_sidecar(policy_settings(redis_url, path)) as running:
        yield running


INVALID = grpc.StatusCode.INVALID_ARGUMENT
PAYMENT = {"amount": 12.5, "currency": "EUR", "customerId": "c-1"}


async def test_8_complete_small_inputs_run(inputs: Policed) -> None:
    assert await run(inputs.stub, "payment.process.1.0.0", PAYMENT)
    assert await run(inputs.stub, "user.onboarding.1.0.0", {"note": "x" * 50_000})


async def test_8_missing_fields_and_big_inputs_are_denied(inputs: Policed, redis: Redis) -> None:
    partial = pb.RunRequest(workflow_id="payment.process.1.0.0")
    partial.input.CopyFrom(value({"amount": 12.5}))
    await expect_denied(
        redis,
        lambda: inputs.stub.Run(partial),
        policy=keys.RUN_REQUIRED_INPUT_FIELDS,
        message="the input lacks currency, customerId, which "
        "policy.workflow.run.requiredInputFields requires for payment.process; add them",
    )
    big = pb.RunRequest(workflow_id="user.onboarding.1.0.0")
    big.input.CopyFrom(value({"note": "x" * 200_000}))
    await expect_denied(
        redis,
        lambda: inputs.stub.Run(big),
        policy=keys.RUN_MAX_INPUT_SIZE_KB,
        message="and policy.workflow.run.maxInputSizeKb allows 102400 bytes (100 KiB); send a "
        "smaller input or raise the limit",
    )


async def test_8_nan_in_an_input_the_policy_reads_is_refused_at_its_place(
    inputs: Policed, redis: Redis
) -> None:
    """The policy converts the input before the servicer does: its refusal names the field
    as the request does (SignalWithStart's under `run.`), and nothing is written."""
    nan_input = struct_pb2.Value()
    nan_input.struct_value.update({"amount": math.nan, "currency": "EUR", "customerId": "c-1"})
    before = await redis_fingerprint(redis)
    plain = pb.RunRequest(workflow_id="payment.process.1.0.0", input=nan_input)
    error = await expect_rpc_error(inputs.stub.Run(plain), INVALID)
    assert bad_request_fields(error) == ["input.amount"]
    with_start = pb.SignalWithStartRequest(
        run=pb.RunRequest(workflow_id="payment.process.1.0.0", request_id="r1", input=nan_input),
        signal="go",
    )
    error = await expect_rpc_error(inputs.stub.SignalWithStart(with_start), INVALID)
    assert bad_request_fields(error) == ["run.input.amount"]
    assert await redis_fingerprint(redis) == before


@pytest_asyncio.fixture
async def cancels(tmp_path: Path, redis: Redis, redis_url: str) -> AsyncIterator[Policed]:
    path = write_policies(tmp_path, seed.document(seed.CANCELLATION_POLICIES))
    async with policed_sidecar(policy_settings(redis_url, path)) as running:
        yield running


ADMIN_ROLE = bearer(sub="ad", role="admin")


async def test_9_admins_cancel_pending_instances_with_a_reason(cancels: Policed) -> None:
    # With the engine paused the instance stays pending, which the condition allows.
    await cancels.sidecar.runner.stop()
    instance_id = await run(cancels.stub, "user.onboarding.1.0.0")
    await cancels.stub.Cancel(
        pb.CancelRequest(instance_id=instance_id, reason="customer left"), metadata=ADMIN_ROLE
    )
    status = await cancels.stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
    assert status.status == pb.WORKFLOW_STATUS_CANCELLED
    assert status.cancel_reason == "customer left"


async def test_9_no_reason_no_admin_or_a_waiting_instance_is_denied(
    cancels: Policed, redis: Redis
) -> None:
    stub = cancels.stub
    await cancels.sidecar.runner.stop()
    pending = await run(stub, "user.onboarding.1.0.0")
    await expect_denied(
        redis,
        lambda: stub.Cancel(pb.CancelRequest(instance_id=pending), metadata=ADMIN_ROLE),
        policy=keys.CANCEL_REQUIRE_REASON,
        message="policy.workflow.cancel.requireReason is true: say why in the request's `reason`",
    )
    await expect_denied(
        redis,
        lambda: stub.Cancel(
            pb.CancelRequest(instance_id=pending, reason="r"),
            metadata=bearer(sub="u", role="user"),
        ),
        policy=keys.CANCEL_CONDITION,
        message="is false for this call by u",
    )
    await cancels.sidecar.runner.start()
    await wait_for_status(stub, pending, WAITING)
    await expect_denied(
        redis,
        lambda: stub.Cancel(pb.CancelRequest(instance_id=pending, reason="r"), metadata=ADMIN_ROLE),
        policy=keys.CANCEL_CONDITION,
        message="`instance.status in ['pending', 'running'] && request.auth.claims.role == "
        "'admin'` is false for this call by ad",
    )


@pytest_asyncio.fixture
async def audited(tmp_path: Path, redis: Redis, redis_url: str) -> AsyncIterator[Policed]:
    # The audit snippet beside the permissions snippet, so that something is denied.
    text = seed.document(seed.AUDIT_AND_MONITORING + "," + seed.EXECUTION_PERMISSIONS)
    path = write_policies(tmp_path, text)
    async with policed_sidecar(policy_settings(redis_url, path)) as running:
        yield running


async def test_10_allowed_calls_are_recorded_in_full(audited: Policed) -> None:
    instance_id = await run(
        audited.stub,
        "user.onboarding.1.0.0",
        {"a": 1},
        metadata=bearer(sub="ada", team="growth"),
    )
    records = await audit_records(audited.admin)
    decision = next(r for r in records if r.method == "Run")
    assert decision.kind == admin_pb.AUDIT_RECORD_KIND_DECISION
    assert (decision.subject, decision.allowed, decision.workflow_id) == (
        "ada",
        True,
        "user.onboarding.1.0.0",
    )
    details = to_python_struct(decision.details)
    assert details["claims"]["team"] == "growth"
    assert details["request"]["inputBytes"] > 0
    assert instance_id


async def test_10_denials_and_watched_failures_are_recorded(
    audited: Policed, redis: Redis, caplog: Any
) -> None:
    await expect_denied(
        redis,
        lambda: audited.stub.Run(pb.RunRequest(workflow_id="legacy.export.1.0.0")),
        policy=keys.RUN_BLOCKED,
        message="lists 'legacy.*'",
    )
    records = await audit_records(audited.admin)
    denial = next(r for r in records if r.method == "Run")
    assert (denial.allowed, denial.policy, denial.subject) == (False, keys.RUN_BLOCKED, "")
    assert "Run of legacy.export.1.0.0 denied" in denial.message
    await audited.admin.SetPolicies(
        admin_pb.SetPoliciesRequest(
            text=seed.document(seed.AUDIT_AND_MONITORING + ',"policy.workflow.run.allowed": []')
        ),
        metadata=bearer(sub="platform", okra_policy_admin=True),
    )
    failing = await run(audited.stub, "compliance.check.1.0.0")
    await wait_for_status(audited.stub, failing, {pb.WORKFLOW_STATUS_FAILED})
    alerts: list[admin_pb.AuditRecord] = []

    async def alerted() -> bool:
        records = await audit_records(audited.admin)
        alerts[:] = [r for r in records if r.kind == admin_pb.AUDIT_RECORD_KIND_ALERT]
        return bool(alerts)

    await eventually(alerted, what="an alert in the audit stream")
    assert [(a.instance_id, a.policy) for a in alerts] == [
        (failing, "policy.workflow.alertOnFailure")
    ]
    assert "Compliance check failed" in alerts[0].message
    assert any(
        r.levelname == "ERROR" and "alertOnFailure compliance.*" in r.getMessage()
        for r in caplog.records
    )


def to_python_struct(message: Any) -> Any:
    return json_format.MessageToDict(message)


async def test_11_own_and_common_namespaces_run(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    path = write_policies(tmp_path, seed.document(seed.CROSS_SERVICE_RESTRICTIONS))
    async with policed_sidecar(policy_settings(redis_url, path, namespace="app")) as running:
        assert await run(running.stub, "app.orders.1.0.0")
        assert await run(running.stub, "common.notify.1.0.0")


async def test_11_other_namespaces_are_denied(tmp_path: Path, redis: Redis, redis_url: str) -> None:
    path = write_policies(tmp_path, seed.document(seed.CROSS_SERVICE_RESTRICTIONS))
    async with policed_sidecar(policy_settings(redis_url, path, namespace="app")) as running:
        await expect_denied(
            redis,
            lambda: running.stub.Run(pb.RunRequest(workflow_id="payment.process.1.0.0")),
            policy=keys.RUN_ALLOWED_NAMESPACES,
            message="namespace 'payment' is not in policy.workflow.run.allowedNamespaces "
            "(app, common) and is not this service's namespace 'app'",
        )
    # A billing service may reach `app` by the list, but the condition keeps it home.
    async with policed_sidecar(policy_settings(redis_url, path, namespace="billing")) as running:
        assert await run(running.stub, "billing.invoice.1.0.0")
        await expect_denied(
            redis,
            lambda: running.stub.Run(pb.RunRequest(workflow_id="app.orders.1.0.0")),
            policy=keys.RUN_CONDITION,
            message="`workflow.namespace == service.namespace || workflow.namespace == "
            "'common'` is false",
        )


@pytest_asyncio.fixture
async def timeouts(tmp_path: Path, redis: Redis, redis_url: str) -> AsyncIterator[Policed]:
    path = write_policies(tmp_path, seed.document(seed.TIMEOUT_POLICIES))
    async with policed_sidecar(policy_settings(redis_url, path)) as running:
        yield running


async def later_runner(policed: Policed, minutes: float) -> EngineRunner:
    """A second engine on the same Redis whose clock reads `minutes` ahead."""
    store = policed.sidecar.store
    return EngineRunner(
        store=store,
        registry=WorkflowRegistry(store=store),
        settings=FAST_ENGINE,
        consumer="later",
        clock=lambda: now_ms() + int(minutes * 60_000),
    )


async def test_12_instances_within_their_time_carry_on(timeouts: Policed, redis: Redis) -> None:
    instance_id = await run(timeouts.stub, "user.onboarding.1.0.0")
    await wait_for_status(timeouts.stub, instance_id, WAITING)
    fields = await redis.hmget(KEYS.instance(instance_id), ["deadline", "steptmo", "tmoact"])
    created = int(await redis.hget(KEYS.instance(instance_id), "created") or 0)
    assert fields[0] is not None and int(fields[0]) == created + 60 * 60_000
    assert (fields[1], fields[2]) == (b"300000", b"fail")
    # Four minutes on, neither the step (5 minutes) nor the instance (60) has run out.
    await (await later_runner(timeouts, 4)).run_turn(instance_id)
    status = await timeouts.stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
    assert status.status == pb.WORKFLOW_STATUS_WAITING


async def test_12_a_step_or_instance_out_of_time_fails(timeouts: Policed) -> None:
    step = await run(timeouts.stub, "user.onboarding.1.0.0")
    await wait_for_status(timeouts.stub, step, WAITING)
    await (await later_runner(timeouts, 6)).run_turn(step)
    failed = await timeouts.stub.GetStatus(pb.GetStatusRequest(instance_id=step))
    assert failed.status == pb.WORKFLOW_STATUS_FAILED
    assert failed.error.status == 408
    assert "a step took longer than 300000 ms (policy.workflow.defaultTimeoutMs)" in (
        failed.error.detail
    )
    whole = await run(timeouts.stub, "user.onboarding.1.0.0")
    await wait_for_status(timeouts.stub, whole, WAITING)
    await (await later_runner(timeouts, 61)).run_turn(whole)
    failed = await timeouts.stub.GetStatus(pb.GetStatusRequest(instance_id=whole))
    assert failed.status == pb.WORKFLOW_STATUS_FAILED
    assert "ran longer than 60 minutes (policy.workflow.maxDurationMinutes)" in (
        failed.error.detail
    )
