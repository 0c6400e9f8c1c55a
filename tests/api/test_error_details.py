"""No error leaves the sidecar without an ErrorInfo: every rpc of every service, called bare."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from okra_client.gen.admin.v1 import admin_pb2
from okra_client.gen.schedule.v1 import schedule_pb2
from okra_client.gen.worker.v1 import worker_pb2
from okra_client.gen.workflow.v1 import workflow_pb2
from redis.asyncio import Redis

from okra_sidecar.errors import ERROR_DOMAIN, REASONS, Reason
from tests.helpers import error_info
from tests.policy.support import policed_sidecar, policy_settings

SERVICES = [
    module.DESCRIPTOR.services_by_name[name]
    for module, name in (
        (workflow_pb2, "WorkflowHostAPI"),
        (schedule_pb2, "ScheduleHostAPI"),
        (admin_pb2, "PolicyAdminService"),
        (worker_pb2, "TaskWorker"),
    )
]


async def _call_bare(channel: grpc.aio.Channel, method: descriptor.MethodDescriptor) -> Any:
    """Call `method` with an empty request; returns the AioRpcError, or None on success."""
    request = message_factory.GetMessageClass(method.input_type)()
    reply = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    # Any: the channel's typed callables cannot name a message class chosen at run time.
    options: Any = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": reply.FromString,
    }
    try:
        if method.server_streaming:
            stream: Any = channel.unary_stream(path, **options)(request, timeout=5)
            async for _ in stream:
                break
            stream.cancel()
        else:
            unary: Any = channel.unary_unary(path, **options)
            await unary(request, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def test_every_rpc_error_carries_error_info(redis: Redis, redis_url: str) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{policed.sidecar.port}") as channel:
            failed: dict[str, str] = {}
            for service in SERVICES:
                for method in service.methods:
                    error = await _call_bare(channel, method)
                    if error is None:
                        continue
                    name = f"{service.name}/{method.name}"
                    info = error_info(error)
                    assert info is not None, f"{name}: {error.code().name} without ErrorInfo"
                    assert info.domain == ERROR_DOMAIN
                    reason = Reason(info.reason)
                    assert error.code().name == REASONS[reason].code, name
                    failed[name] = reason
    # Most bare requests are refused: the check above ran on every service.
    assert {name.split("/")[0] for name in failed} == {s.name for s in SERVICES}, failed
