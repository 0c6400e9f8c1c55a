"""The seed's policy snippets 1 to 6 verbatim (7 to 12: test_seed_snippets_operations.py).

Every denial is checked for its status, its message, the policy key in its ErrorInfo and that
nothing was written to Redis; the audit stream is the one exception, by design (with audit on,
a denial is recorded).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.admission import MAX_INSTANCES_PER_WORKFLOW
from okra_sidecar.policy import document as keys
from tests.helpers import (
    KEYS,
    held,
    to_python,
    wait_for_status,
)
from tests.policy import seed
from tests.policy.support import (
    APP_KEYS,
    WAITING,
    Policed,
    bearer,
    denied_by,
    expect_denied,
    policed_sidecar,
    policy_settings,
    recording_writes,
    retry_delay_s,
    run,
    write_policies,
    writes_during,
)

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
THROTTLE_TRIES = 20


async def expect_throttled(
    redis: Redis, call: Callable[[], Awaitable[object]], *, policy: str, message: str
) -> grpc.aio.AioRpcError:
    """expect_denied for a rate limit, called right after the limit is spent.

    A rate limit's slots come back on their own (one every 60 ms for 1000/minute), so on a
    slow machine one may come back before the call and let it through. That call spent the
    slot, so the next one is tried at once; the refused one must write nothing.
    """
    async with recording_writes(redis) as recorder:
        for _ in range(THROTTLE_TRIES):
            refused: list[grpc.aio.AioRpcError] = []

            async def attempt(refused: list[grpc.aio.AioRpcError] = refused) -> None:
                try:
                    await call()
                except grpc.aio.AioRpcError as exc:
                    refused.append(exc)

            written = await recorder.keys_written_by(attempt)
            if refused:
                error = refused[0]
                assert error.code() == EXHAUSTED, f"{error.code().name}: {error.details()}"
                assert written == set()
                assert denied_by(error) == policy
                assert message in (error.details() or "")
                return error
    raise AssertionError(f"{THROTTLE_TRIES} calls in a row went through a spent rate limit")


@pytest_asyncio.fixture
async def permissions(tmp_path: Path, redis: Redis, redis_url: str) -> AsyncIterator[Policed]:
    path = write_policies(tmp_path, seed.document(seed.EXECUTION_PERMISSIONS))
    async with policed_sidecar(policy_settings(redis_url, path)) as running:
        yield running


async def test_1_allowed_workflows_run(permissions: Policed) -> None:
    assert await run(permissions.stub, "user.onboarding.1.0.0")
    assert await run(permissions.stub, "report.generation.1.0.0")  # by the glob report.*
    assert await run(permissions.stub, "order.processing")  # namespace.name: newest version


async def test_1_blocked_or_unlisted_workflows_are_denied(
    permissions: Policed, redis: Redis
) -> None:
    stub = permissions.stub
    await expect_denied(
        redis,
        lambda: stub.Run(pb.RunRequest(workflow_id="legacy.export.1.0.0")),
        policy=keys.RUN_BLOCKED,
        message="policy.workflow.run.blocked lists 'legacy.*'; remove it from that list",
    )
    # Blocked wins even where nothing else would refuse.
    await expect_denied(
        redis,
        lambda: stub.Run(pb.RunRequest(workflow_id="admin.dangerous.1.0.0")),
        policy=keys.RUN_BLOCKED,
        message="lists 'admin.dangerous'",
    )
    await expect_denied(
        redis,
        lambda: stub.Run(pb.RunRequest(workflow_id="billing.invoice.1.0.0")),
        policy=keys.RUN_ALLOWED,
        message="billing.invoice is not in policy.workflow.run.allowed (user.onboarding, "
        "order.processing, report.*); add it to that list to run it",
    )


async def test_expect_denied_counts_the_writes_of_a_call_that_writes(
    permissions: Policed, redis: Redis
) -> None:
    # The control for every expect_denied here: a call's writes land in its window.
    created: list[str] = []

    async def run_one() -> None:
        created.append(await run(permissions.stub, "user.onboarding.1.0.0"))

    changed = await writes_during(redis, run_one)
    assert KEYS.instance(created[0]).encode() in changed

    # A policy check that let a Run write and then denied it would fail expect_denied.
    async def writes_then_denied() -> object:
        await run(permissions.stub, "user.onboarding.1.0.0")
        return await permissions.stub.Run(pb.RunRequest(workflow_id="legacy.export.1.0.0"))

    with pytest.raises(AssertionError, match="okra:"):
        await expect_denied(
            redis, writes_then_denied, policy=keys.RUN_BLOCKED, message="lists 'legacy.*'"
        )


async def test_1_list_workflows_shows_only_what_may_run(permissions: Policed) -> None:
    listed = await permissions.stub.ListWorkflows(pb.ListWorkflowsRequest())
    assert sorted(w.workflow_id for w in listed.workflows) == [
        "order.processing.1.0.0",
        "report.generation.1.0.0",
        "user.onboarding.1.0.0",
    ]


@pytest_asyncio.fixture
async def conditional(tmp_path: Path, redis: Redis, redis_url: str) -> AsyncIterator[Policed]:
    path = write_policies(tmp_path, seed.document(seed.CONDITIONAL_EXECUTION))
    async with policed_sidecar(policy_settings(redis_url, path)) as running:
        yield running


async def test_2_payment_admins_run_payments_and_anyone_runs_the_rest(
    conditional: Policed,
) -> None:
    admin = bearer(sub="pat", role="payment_admin")
    assert await run(conditional.stub, "payment.process.1.0.0", metadata=admin)
    assert await run(conditional.stub, "user.onboarding.1.0.0")  # no token needed


async def test_2_others_may_not_run_payments(conditional: Policed, redis: Redis) -> None:
    await expect_denied(
        redis,
        lambda: conditional.stub.Run(
            pb.RunRequest(workflow_id="payment.process.1.0.0"),
            metadata=bearer(sub="cle", role="clerk"),
        ),
        policy=keys.RUN_CONDITION,
        message="is false for this call by cle; change the condition or call with what it requires",
    )
    # No role claim at all: the condition cannot be evaluated, and that denies (fail closed).
    await expect_denied(
        redis,
        lambda: conditional.stub.Run(pb.RunRequest(workflow_id="payment.process.1.0.0")),
        policy=keys.RUN_CONDITION,
        message="policy.workflow.run.condition could not be evaluated (no such member in "
        "mapping: 'role'), and a policy that cannot be evaluated denies",
    )


@pytest_asyncio.fixture
async def signals(tmp_path: Path, redis: Redis, redis_url: str) -> AsyncIterator[Policed]:
    path = write_policies(tmp_path, seed.document(seed.SIGNAL_PERMISSIONS))
    async with policed_sidecar(policy_settings(redis_url, path)) as running:
        yield running


async def test_3_listed_signal_to_a_waiting_instance_by_a_signaller(signals: Policed) -> None:
    instance_id = await run(signals.stub, "user.onboarding.1.0.0")
    await wait_for_status(signals.stub, instance_id, WAITING)
    await signals.stub.Signal(
        pb.SignalRequest(instance_id=instance_id, signal="approved"),
        metadata=bearer(sub="sig", canSignal=True),
    )
    done = await wait_for_status(signals.stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
    assert to_python(done.output) == {"decision": "approved"}


async def test_3_unlisted_signal_or_caller_or_status_is_denied(
    signals: Policed, redis: Redis
) -> None:
    stub = signals.stub
    instance_id = await run(stub, "user.onboarding.1.0.0")
    await wait_for_status(stub, instance_id, WAITING)
    signaller = bearer(sub="sig", canSignal=True)
    await expect_denied(
        redis,
        lambda: stub.Signal(
            pb.SignalRequest(instance_id=instance_id, signal="escalate"), metadata=signaller
        ),
        policy=keys.SIGNAL_ALLOWED_SIGNALS,
        message="signal 'escalate' is not in policy.workflow.signal.allowedSignals (approved, "
        "rejected, timeout)",
    )
    await expect_denied(
        redis,
        lambda: stub.Signal(
            pb.SignalRequest(instance_id=instance_id, signal="approved"),
            metadata=bearer(sub="viewer", canSignal=False),
        ),
        policy=keys.SIGNAL_CONDITION,
        message="is false for this call by viewer",
    )
    await stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="done"))
    await expect_denied(
        redis,
        lambda: stub.Signal(
            pb.SignalRequest(instance_id=instance_id, signal="approved"), metadata=signaller
        ),
        policy=keys.SIGNAL_CONDITION,
        message="`instance.status == 'waiting' && request.auth.claims.canSignal` is false",
    )


@pytest_asyncio.fixture
async def queries(tmp_path: Path, redis: Redis, redis_url: str) -> AsyncIterator[Policed]:
    path = write_policies(tmp_path, seed.document(seed.QUERY_RESTRICTIONS))
    async with policed_sidecar(policy_settings(redis_url, path)) as running:
        yield running


async def test_4_operators_see_finished_instances_only(queries: Policed) -> None:
    stub = queries.stub
    done = await run(stub, "billing.quick.1.0.0")
    await wait_for_status(stub, done, {pb.WORKFLOW_STATUS_COMPLETED})
    waiting = await run(stub, "user.onboarding.1.0.0")
    await wait_for_status(stub, waiting, WAITING)
    operator = bearer(sub="op", role="operator")
    # No status filter: narrowed to the allowed statuses, and the page to maxResults.
    page = await stub.Query(pb.QueryRequest(), metadata=operator)
    assert [i.instance_id for i in page.instances] == [done]
    page = await stub.Query(
        pb.QueryRequest(status=[pb.WORKFLOW_STATUS_COMPLETED], limit=100),
        metadata=bearer(sub="ad", role="admin"),
    )
    assert [i.instance_id for i in page.instances] == [done]
    status = await stub.GetStatus(pb.GetStatusRequest(instance_id=waiting), metadata=operator)
    assert status.status == pb.WORKFLOW_STATUS_WAITING


async def test_4_other_roles_statuses_and_page_sizes_are_denied(
    queries: Policed, redis: Redis
) -> None:
    stub = queries.stub
    operator = bearer(sub="op", role="operator")
    await expect_denied(
        redis,
        lambda: stub.Query(pb.QueryRequest(), metadata=bearer(sub="v", role="viewer")),
        policy=keys.QUERY_CONDITION,
        message="`request.auth.claims.role in ['admin', 'operator']` is false for this call by v",
    )
    await expect_denied(
        redis,
        lambda: stub.Query(pb.QueryRequest(status=[pb.WORKFLOW_STATUS_WAITING]), metadata=operator),
        policy=keys.QUERY_ALLOWED_STATUSES,
        message="status waiting may not be queried; policy.workflow.query.allowedStatuses "
        "allows completed, failed",
    )
    await expect_denied(
        redis,
        lambda: stub.Query(pb.QueryRequest(limit=500), metadata=operator),
        policy=keys.QUERY_MAX_RESULTS,
        message="limit 500 is above policy.workflow.query.maxResults (100); ask for at most "
        "100 per page and follow the cursor",
    )


@pytest_asyncio.fixture
async def rates(tmp_path: Path, redis: Redis, redis_url: str) -> AsyncIterator[Policed]:
    path = write_policies(tmp_path, seed.document(seed.RATE_LIMITING))
    async with policed_sidecar(policy_settings(redis_url, path)) as running:
        yield running


async def exhaust(call: Callable[[], Awaitable[object]], *, margin_s: float) -> int:
    """Call until the rate limit refuses with at least `margin_s` to wait; returns how many
    calls went through. (A slot comes back every period/limit, so a slow run sees more.)"""
    allowed = 0
    while True:
        try:
            await call()
            allowed += 1
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == EXHAUSTED, exc.details()
            delay = retry_delay_s(exc)
            assert delay is not None
            if delay >= margin_s:
                return allowed
            await asyncio.sleep(delay)


async def test_5_calls_within_the_rate_go_through_and_the_next_waits(
    rates: Policed, redis: Redis
) -> None:
    stub = rates.stub
    # The engine is paused so that nothing but these calls writes to Redis.
    await rates.sidecar.runner.stop()
    started = time.monotonic()
    allowed = await exhaust(lambda: run(stub, "billing.quick.1.0.0"), margin_s=0.3)
    # 100 at once, then one more per 600 ms while the burst was being spent.
    assert 100 <= allowed <= 100 + int((time.monotonic() - started) / 0.6) + 1
    error = await expect_throttled(
        redis,
        lambda: stub.Run(pb.RunRequest(workflow_id="billing.quick.1.0.0")),
        policy=keys.RUN_RATE_LIMIT,
        message="Run is rate limited by policy.workflow.run.rateLimit (100/minute, shared by "
        "every sidecar of service orders); retry in",
    )
    delay = retry_delay_s(error)
    assert delay is not None and 0 < delay <= 0.6
    allowed = await exhaust(lambda: stub.Query(pb.QueryRequest()), margin_s=0.3)
    assert allowed >= 100
    await expect_throttled(
        redis,
        lambda: stub.Query(pb.QueryRequest()),
        policy=keys.QUERY_RATE_LIMIT,
        message="Query is rate limited by policy.workflow.query.rateLimit (100/minute",
    )


async def test_5_signal_rate(rates: Policed, redis: Redis) -> None:
    stub = rates.stub
    instance_id = await run(stub, "user.onboarding.1.0.0")
    await wait_for_status(stub, instance_id, WAITING)
    await rates.sidecar.runner.stop()

    async def noise() -> None:
        await stub.Signal(pb.SignalRequest(instance_id=instance_id, signal="noise"))

    started = time.monotonic()
    allowed = await exhaust(noise, margin_s=0.04)
    assert 1000 <= allowed <= 1000 + int((time.monotonic() - started) / 0.06) + 1
    await expect_throttled(
        redis,
        lambda: stub.Signal(pb.SignalRequest(instance_id=instance_id, signal="approved")),
        policy=keys.SIGNAL_RATE_LIMIT,
        message="Signal is rate limited by policy.workflow.signal.rateLimit (1000/minute",
    )


@pytest_asyncio.fixture
async def limits(tmp_path: Path, redis: Redis, redis_url: str) -> AsyncIterator[Policed]:
    path = write_policies(tmp_path, seed.document(seed.INSTANCE_LIMITS))
    async with policed_sidecar(policy_settings(redis_url, path)) as running:
        yield running


async def test_6_runs_within_the_per_workflow_limit(limits: Policed, redis: Redis) -> None:
    started = {await run(limits.stub, "report.generation.1.0.0") for _ in range(10)}
    assert len(started) == 10
    # All ten are still running and counted against the limit of 10.
    assert await held(redis, "report.generation", keys=APP_KEYS) == 10


async def test_6_a_workflow_over_its_limit_is_refused(limits: Policed, redis: Redis) -> None:
    for _ in range(10):
        await run(limits.stub, "report.generation.1.0.0")
    error = await expect_denied(
        redis,
        lambda: limits.stub.Run(pb.RunRequest(workflow_id="report.generation.1.0.0")),
        policy=MAX_INSTANCES_PER_WORKFLOW,
        message="the limit of 10 concurrent instances of report.generation "
        "(policy.workflow.maxInstancesPerWorkflow) is reached; retry when some have finished",
        code=EXHAUSTED,
    )
    assert retry_delay_s(error) is None
    assert await run(limits.stub, "user.onboarding.1.0.0")  # another workflow's count
