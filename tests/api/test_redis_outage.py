"""Redis going away: UNAVAILABLE with RetryInfo, readiness NOT_SERVING, then recovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from okra_client import OkraClient, RetryPolicy
from okra_client.errors import error_from_rpc
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.api.status import RETRY_AFTER_UNAVAILABLE_S
from okra_sidecar.server import SERVICE_NAME
from okra_sidecar.store.embedded import EmbeddedRedis
from tests.helpers import (
    Stub,
    eventually,
    expect_rpc_error,
    make_settings,
    running_sidecar,
    value,
    wait_for_status,
)


@asynccontextmanager
async def sidecar_on_own_redis(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedRedis, int, Stub]]:
    """A sidecar on a redis-server of its own, which the test may stop and start again."""
    server = EmbeddedRedis(data_dir=tmp_path / "redis")
    url = await server.start()
    try:
        async with running_sidecar(make_settings(url)) as (sidecar, stub):
            yield server, sidecar.port, stub
    finally:
        await server.stop()


async def test_unavailable_while_redis_is_down_and_recovery(tmp_path: Path) -> None:
    async with sidecar_on_own_redis(tmp_path) as (server, port, stub):
        before = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
        await server.stop()
        error = await expect_rpc_error(
            stub.GetStatus(pb.GetStatusRequest(instance_id=before.instance_id)),
            grpc.StatusCode.UNAVAILABLE,
        )
        assert "Redis is unreachable" in (error.details() or "")
        # RetryInfo tells the caller when to retry.
        assert error_from_rpc(error).retry_delay_s == RETRY_AFTER_UNAVAILABLE_S
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            ready = health_pb2.HealthCheckRequest(service=SERVICE_NAME)

            def reports(status: int) -> Callable[[], Any]:
                async def check() -> bool:
                    return bool((await health.Check(ready)).status == status)

                return check

            await eventually(reports(health_pb2.HealthCheckResponse.NOT_SERVING))
            # Liveness stays SERVING: a Redis outage is no reason to restart the sidecar.
            live = await health.Check(health_pb2.HealthCheckRequest())
            assert live.status == health_pb2.HealthCheckResponse.SERVING
            await server.start()
            await eventually(reports(health_pb2.HealthCheckResponse.SERVING))
        status = await stub.GetStatus(pb.GetStatusRequest(instance_id=before.instance_id))
        assert status.workflow_id == "tests.forever.1.0.0"
        after = await stub.Run(
            pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 0}))
        )
        await wait_for_status(stub, after.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})


@dataclass
class Attempt:
    """One attempt the client made: when it started, how it ended, the delay it was told."""

    started: float
    code: grpc.StatusCode
    retry_delay_s: float | None


class AttemptRecorder(grpc.aio.UnaryUnaryClientInterceptor):
    """Records every attempt the client makes on the channel, retries included."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        started = asyncio.get_running_loop().time()
        call = await continuation(client_call_details, request)
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            told = error_from_rpc(exc).retry_delay_s
            self.attempts.append(Attempt(started, exc.code(), told))
        else:
            self.attempts.append(Attempt(started, grpc.StatusCode.OK, None))
        return call


async def test_the_client_waits_out_a_redis_outage(tmp_path: Path) -> None:
    # The policy alone would retry after at most 10 ms: the longer gaps below are the
    # server's RetryInfo being honoured.
    policy = RetryPolicy(max_attempts=50, initial_backoff_s=0.01, max_backoff_s=0.01)
    recorder = AttemptRecorder()
    async with sidecar_on_own_redis(tmp_path) as (server, port, stub):
        started = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
        await server.stop()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=[recorder])
        async with OkraClient(channel=channel, retry=policy, timeout_s=60.0) as client:
            reading = asyncio.create_task(client.get_status(started.instance_id))

            async def refused_twice() -> bool:
                return len(recorder.attempts) >= 2

            await eventually(refused_twice, timeout_s=30, what="two refused attempts")
            await server.start()
            instance = await asyncio.wait_for(reading, 60)
        await channel.close()
    assert instance.workflow_id == "tests.forever.1.0.0"
    *refused, last = recorder.attempts
    assert last.code == grpc.StatusCode.OK
    assert len(refused) >= 2
    for attempt, following in zip(refused, recorder.attempts[1:], strict=True):
        assert attempt.code == grpc.StatusCode.UNAVAILABLE
        assert attempt.retry_delay_s == RETRY_AFTER_UNAVAILABLE_S
        assert following.started - attempt.started >= attempt.retry_delay_s


async def test_a_task_stream_ends_unavailable_when_redis_goes(tmp_path: Path) -> None:
    async with sidecar_on_own_redis(tmp_path) as (server, port, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = wpb_grpc.TaskWorkerStub(channel).PollTasks(
                wpb.PollTasksRequest(service="outage", worker_id="w1", max_in_flight=1)
            )
            await asyncio.sleep(0.5)  # the poll now blocks on the task stream
            await server.stop()
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                async with asyncio.timeout(30):
                    async for _ in stream:
                        pass
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Redis is unreachable" in (failed.value.details() or "")
