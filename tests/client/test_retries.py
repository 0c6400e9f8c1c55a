"""Retries, deadlines and error details, against a scripted gRPC server that fails on purpose."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from okra_client import (
    DeadlineExceededError,
    OkraClient,
    PermissionDeniedError,
    RetryPolicy,
    UnavailableError,
)
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

INSTANCE_ID = "0b7a4b8e-4a8e-4b8e-8a8e-4a8e4b8e4a8e"
FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.02)


def _packed(*details: Any) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return packed


class FlakyServicer(pb_grpc.WorkflowHostAPIServicer):
    """Fails each rpc `failures` times with UNAVAILABLE (and a RetryInfo), then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: Counter[str] = Counter()
        self.request_ids: list[str] = []

    async def _fail_first(self, name: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.calls[name] += 1
        if self.calls[name] <= self.failures:
            rich = status_pb2.Status(
                code=grpc.StatusCode.UNAVAILABLE.value[0],
                message="redis is unreachable",
                details=_packed(
                    error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=10**7))
                ),
            )
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                rich.message,
                (("grpc-status-details-bin", rich.SerializeToString()),),
            )

    async def GetStatus(self, request: Any, context: Any) -> pb.WorkflowInstance:  # noqa: N802
        await self._fail_first("GetStatus", context)
        return pb.WorkflowInstance(
            instance_id=request.instance_id, status=pb.WORKFLOW_STATUS_RUNNING
        )

    async def Run(self, request: Any, context: Any) -> pb.RunResponse:  # noqa: N802
        self.request_ids.append(request.request_id)
        await self._fail_first("Run", context)
        return pb.RunResponse(instance_id=INSTANCE_ID)

    async def Cancel(self, request: Any, context: Any) -> pb.CancelResponse:  # noqa: N802
        await self._fail_first("Cancel", context)
        return pb.CancelResponse()

    async def Signal(self, request: Any, context: Any) -> pb.SignalResponse:  # noqa: N802
        await self._fail_first("Signal", context)
        return pb.SignalResponse(signal_id=request.signal_id or "new")

    async def ListWorkflows(self, request: Any, context: Any) -> pb.ListWorkflowsResponse:  # noqa: N802
        await asyncio.Event().wait()  # never answers: only the client's deadline ends the call
        raise AssertionError("unreachable")

    async def Query(self, request: Any, context: Any) -> pb.QueryResponse:  # noqa: N802
        self.calls["Query"] += 1
        rich = status_pb2.Status(
            code=grpc.StatusCode.PERMISSION_DENIED.value[0],
            message="denied by policy.workflow.query.condition",
            details=_packed(
                error_details_pb2.ErrorInfo(
                    reason="POLICY_DENIED",
                    domain="okra.dev",
                    metadata={"policy": "policy.workflow.query.condition"},
                )
            ),
        )
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            rich.message,
            (("grpc-status-details-bin", rich.SerializeToString()),),
        )
        raise AssertionError("abort returns never")


@pytest_asyncio.fixture
async def flaky() -> AsyncIterator[tuple[FlakyServicer, str]]:
    servicer = FlakyServicer(failures=2)  # type: ignore[abstract]  # rpcs it does not serve
    server = grpc.aio.server()
    pb_grpc.add_WorkflowHostAPIServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_idempotent_reads_are_retried(flaky: tuple[FlakyServicer, str]) -> None:
    servicer, target = flaky
    async with OkraClient(target, retry=FAST) as client:
        instance = await client.get_status(INSTANCE_ID)
    assert instance.instance_id == INSTANCE_ID
    assert servicer.calls["GetStatus"] == 3


async def test_every_run_gets_a_request_id_and_its_retries_keep_it(
    flaky: tuple[FlakyServicer, str],
) -> None:
    servicer, target = flaky
    async with OkraClient(target, retry=FAST) as client:
        assert await client.run("tests.forever.1.0.0", {}) == INSTANCE_ID
        assert servicer.calls["Run"] == 3
        generated = servicer.request_ids
        assert generated[0] and generated == [generated[0]] * 3
        servicer.calls.clear()
        assert await client.run("tests.forever.1.0.0", {}, request_id="r-1") == INSTANCE_ID
        assert servicer.request_ids[3:] == ["r-1"] * 3
        servicer.calls.clear()
        assert await client.run("tests.forever.1.0.0", {}) == INSTANCE_ID
        assert servicer.request_ids[6] not in (generated[0], "r-1")


async def test_run_gives_up_after_the_retry_budget(flaky: tuple[FlakyServicer, str]) -> None:
    servicer, target = flaky
    servicer.failures = 100
    async with OkraClient(target, retry=FAST) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.run("tests.forever.1.0.0", {})
    assert caught.value.retry_delay_s == pytest.approx(0.01)
    assert len(set(servicer.request_ids)) == 1


async def test_cancel_and_plain_signal_are_never_retried(
    flaky: tuple[FlakyServicer, str],
) -> None:
    servicer, target = flaky
    async with OkraClient(target, retry=FAST) as client:
        with pytest.raises(UnavailableError):
            await client.cancel(INSTANCE_ID)
        assert servicer.calls["Cancel"] == 1
        with pytest.raises(UnavailableError):
            await client.signal(INSTANCE_ID, "approve")
        assert servicer.calls["Signal"] == 1
        sent = await client.signal(INSTANCE_ID, "approve", signal_id="s-1")
        assert (sent.signal_id, servicer.calls["Signal"]) == ("s-1", 3)


async def test_retries_stop_after_max_attempts(flaky: tuple[FlakyServicer, str]) -> None:
    servicer, target = flaky
    servicer.failures = 10
    async with OkraClient(target, retry=FAST) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.get_status(INSTANCE_ID)
    assert servicer.calls["GetStatus"] == FAST.max_attempts
    assert caught.value.message == "redis is unreachable"


async def test_deadline_covers_the_whole_call(flaky: tuple[FlakyServicer, str]) -> None:
    _, target = flaky
    async with OkraClient(target, retry=FAST, timeout_s=0.2) as client:
        # The server never answers: without the client's deadline, wait_for's 20 s would end it.
        with pytest.raises(DeadlineExceededError) as caught:
            await asyncio.wait_for(client.list_workflows(), 20)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(DeadlineExceededError):
            await asyncio.wait_for(client.list_workflows(timeout_s=0.05), 20)


async def test_policy_denial_carries_error_info(flaky: tuple[FlakyServicer, str]) -> None:
    servicer, target = flaky
    async with OkraClient(target, retry=FAST) as client:
        with pytest.raises(PermissionDeniedError) as caught:
            await client.query()
    info = caught.value.error_info
    assert info is not None
    assert (info.reason, info.domain) == ("POLICY_DENIED", "okra.dev")
    assert info.metadata == {"policy": "policy.workflow.query.condition"}
    assert servicer.calls["Query"] == 1, "PERMISSION_DENIED is not retried"


async def test_no_server_is_unavailable_after_retries() -> None:
    async with OkraClient("127.0.0.1:1", retry=FAST, timeout_s=5.0) as client:
        with pytest.raises(UnavailableError):
            await client.list_workflows()


def test_backoff_grows_and_honours_retry_info() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=0.3)
    unavailable = UnavailableError(grpc.StatusCode.UNAVAILABLE, "down")
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)):
        delay = policy.delay_s(attempt, unavailable)
        assert delay is not None and 0 <= delay <= ceiling
    assert policy.delay_s(5, unavailable) is None
    told = UnavailableError(grpc.StatusCode.UNAVAILABLE, "down", retry_delay_s=1.5)
    assert policy.delay_s(1, told) == 1.5
    denied = PermissionDeniedError(grpc.StatusCode.PERMISSION_DENIED, "no")
    assert policy.delay_s(1, denied) is None
