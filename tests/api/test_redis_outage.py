"""Redis going away: UNAVAILABLE with RetryInfo, readiness NOT_SERVING, then recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from okra_sidecar.gen.worker.v1 import worker_pb2 as wpb
from okra_sidecar.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_sidecar.gen.workflow.v1 import workflow_pb2 as pb
from okra_sidecar.server import SERVICE_NAME
from okra_sidecar.store.embedded import EmbeddedRedis
from tests.helpers import (
    expect_rpc_error,
    make_settings,
    rich_status,
    running_sidecar,
    value,
    wait_for_status,
)


async def test_unavailable_while_redis_is_down_and_recovery(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis")
    url = await server.start()
    try:
        async with running_sidecar(make_settings(url)) as (sidecar, stub):
            before = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
            await server.stop()
            error = await expect_rpc_error(
                stub.GetStatus(pb.GetStatusRequest(instance_id=before.instance_id)),
                grpc.StatusCode.UNAVAILABLE,
            )
            assert "Redis is unreachable" in (error.details() or "")
            assert rich_status(error).details, "RetryInfo tells the caller when to retry"
            async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                ready = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
                for _ in range(50):
                    reply = await health.Check(ready)
                    if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    await asyncio.sleep(0.1)
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
                live = await health.Check(health_pb2.HealthCheckRequest())
                assert live.status == health_pb2.HealthCheckResponse.SERVING

                await server.start()
                for _ in range(50):
                    reply = await health.Check(ready)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                    await asyncio.sleep(0.1)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            status = await stub.GetStatus(pb.GetStatusRequest(instance_id=before.instance_id))
            assert status.workflow_id == "tests.forever.1.0.0"
            after = await stub.Run(
                pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 0}))
            )
            await wait_for_status(stub, after.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
    finally:
        await server.stop()


async def test_a_task_stream_ends_unavailable_when_redis_goes(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis")
    url = await server.start()
    try:
        async with running_sidecar(make_settings(url)) as (sidecar, _):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
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
    finally:
        await server.stop()
