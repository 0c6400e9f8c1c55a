"""The client's errors by reason: typed against a real sidecar, retried only when retryable."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from okra_client import (
    ChangedConcurrentlyError,
    FailedPreconditionError,
    InputSchemaMismatchError,
    InstanceAlreadyFinishedError,
    InstanceLimitReachedError,
    InstanceNotFoundError,
    NotFoundError,
    OkraClient,
    PreconditionViolation,
    RateLimitedError,
    RetryPolicy,
    WorkflowNotFoundError,
)
from okra_client.errors import ERROR_BY_CODE, ERROR_BY_REASON
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from okra_sidecar.errors import ERROR_DOMAIN, REASONS, Reason
from okra_sidecar.server import Sidecar
from tests.helpers import WORKFLOWS_DIR, Stub, running_sidecar
from tests.policy.support import policy_settings, write_policies

INSTANCE_ID = "0b7a4b8e-4a8e-4b8e-8a8e-4a8e4b8e4a8e"
FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
# Reasons whose status code class says all there is: no class of their own.
BY_CODE_ONLY = {Reason.INVALID_FIELD, Reason.UNIMPLEMENTED, Reason.INTERNAL}


def test_every_sent_reason_has_a_class_under_its_code() -> None:
    for reason, spec in REASONS.items():
        if not spec.sent or reason in BY_CODE_ONLY:
            continue
        code_class = ERROR_BY_CODE[grpc.StatusCode[spec.code]]
        assert issubclass(ERROR_BY_REASON[reason], code_class), reason


@pytest_asyncio.fixture
async def client(sidecar: tuple[Sidecar, Stub]) -> AsyncIterator[OkraClient]:
    async with OkraClient(f"127.0.0.1:{sidecar[0].port}", timeout_s=5.0) as made:
        yield made


async def test_errors_from_a_sidecar_are_typed_by_reason(client: OkraClient) -> None:
    with pytest.raises(InstanceNotFoundError) as missing:
        await client.get_status(INSTANCE_ID)
    assert isinstance(missing.value, NotFoundError)
    assert (missing.value.reason, missing.value.metadata) == (
        "INSTANCE_NOT_FOUND",
        {"instance": INSTANCE_ID},
    )
    assert not missing.value.retryable
    with pytest.raises(WorkflowNotFoundError):
        await client.run("tests.nope.1.0.0", {})
    with pytest.raises(InputSchemaMismatchError) as mismatch:
        await client.run("tests.approval.1.0.0", {"amount": -1})
    assert [v.field for v in mismatch.value.field_violations] == ["input.amount"]


async def test_finished_instance_names_the_precondition(client: OkraClient) -> None:
    instance_id = await client.run("tests.forever.1.0.0", {})
    await client.cancel(instance_id)
    with pytest.raises(InstanceAlreadyFinishedError) as finished:
        await client.signal(instance_id, "never")
    assert isinstance(finished.value, FailedPreconditionError)
    assert finished.value.metadata == {"instance": instance_id, "status": "cancelled"}
    assert finished.value.precondition_violations == (
        PreconditionViolation(
            "INSTANCE_STATUS",
            f"instance/{instance_id}",
            "the instance must be pending, running, waiting or suspended",
        ),
    )


def _packed(*details: Any) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return packed


class ScriptedServicer(pb_grpc.WorkflowHostAPIServicer):
    """GetStatus fails with `reason` (and a short RetryInfo) until `failures` calls were made."""

    def __init__(self) -> None:
        self.reason = Reason.RATE_LIMITED
        self.failures = 1
        self.calls: Counter[str] = Counter()

    async def GetStatus(self, request: Any, context: Any) -> pb.WorkflowInstance:  # noqa: N802
        self.calls[self.reason] += 1
        if self.calls[self.reason] <= self.failures:
            code = grpc.StatusCode[REASONS[self.reason].code]
            rich = status_pb2.Status(
                code=code.value[0],
                message=f"scripted {self.reason}",
                details=_packed(
                    error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN),
                    error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=10**7)),
                ),
            )
            await context.abort(
                code, rich.message, (("grpc-status-details-bin", rich.SerializeToString()),)
            )
        return pb.WorkflowInstance(
            instance_id=request.instance_id, status=pb.WORKFLOW_STATUS_RUNNING
        )


@pytest_asyncio.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedServicer, str]]:
    servicer = ScriptedServicer()  # type: ignore[abstract]  # rpcs it does not serve
    server = grpc.aio.server()
    pb_grpc.add_WorkflowHostAPIServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.mark.parametrize("reason", [Reason.RATE_LIMITED, Reason.CHANGED_CONCURRENTLY])
async def test_retryable_reasons_are_retried(
    scripted: tuple[ScriptedServicer, str], reason: Reason
) -> None:
    servicer, target = scripted
    servicer.reason = reason
    async with OkraClient(target, retry=FAST) as client:
        instance = await client.get_status(INSTANCE_ID)
    assert instance.instance_id == INSTANCE_ID
    assert servicer.calls[reason] == 2


async def test_a_reason_that_is_not_retryable_is_not_retried_despite_retry_info(
    scripted: tuple[ScriptedServicer, str],
) -> None:
    servicer, target = scripted
    servicer.reason = Reason.INSTANCE_LIMIT_REACHED
    async with OkraClient(target, retry=FAST) as client:
        with pytest.raises(InstanceLimitReachedError) as caught:
            await client.get_status(INSTANCE_ID)
    assert servicer.calls[Reason.INSTANCE_LIMIT_REACHED] == 1
    assert caught.value.retry_delay_s == pytest.approx(0.01)
    assert not caught.value.retryable


async def test_retries_give_up_typed(scripted: tuple[ScriptedServicer, str]) -> None:
    servicer, target = scripted
    servicer.reason, servicer.failures = Reason.CHANGED_CONCURRENTLY, 10
    async with OkraClient(target, retry=FAST) as client:
        with pytest.raises(ChangedConcurrentlyError) as caught:
            await client.get_status(INSTANCE_ID)
    assert servicer.calls[Reason.CHANGED_CONCURRENTLY] == FAST.max_attempts
    assert caught.value.retryable
    with pytest.raises(RateLimitedError):
        servicer.reason, servicer.failures = Reason.RATE_LIMITED, 10
        async with OkraClient(target, retry=FAST) as client:
            await client.get_status(INSTANCE_ID)


async def test_against_a_rate_limited_sidecar_only_idempotent_calls_are_retried(
    redis_url: str, tmp_path: Path
) -> None:
    policies = write_policies(
        tmp_path,
        '{"policy.workflow.run.rateLimit": "1/second", '
        '"policy.workflow.signal.rateLimit": "1/second"}',
    )
    settings = replace(policy_settings(redis_url, policies), workflows_dir=WORKFLOWS_DIR)
    async with (
        running_sidecar(settings) as (server, stub),
        OkraClient(f"127.0.0.1:{server.port}", timeout_s=5.0) as client,
    ):
        # Every Run carries a request_id: the second within the second is RATE_LIMITED, retried
        # after the RetryInfo delay, and de-duplicated, so two Runs make two instances.
        tags = {"test": str(uuid.uuid4())}
        first = await client.run("tests.forever.1.0.0", {}, tags=tags)
        second = await client.run("tests.forever.1.0.0", {}, tags=tags)
        started = await stub.Query(pb.QueryRequest(tags=tags))
        assert {i.instance_id for i in started.instances} == {first, second}
        # A Signal without a signal_id is not idempotent: refused, not retried.
        await client.signal(first, "nudge")
        with pytest.raises(RateLimitedError) as limited:
            await client.signal(first, "nudge")
        assert limited.value.retryable and limited.value.retry_delay_s
        # With one it is.
        await client.signal(first, "nudge", signal_id="python-1")
