"""The interceptor chain builds each method's handler once and keeps per-call behaviour."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.api.chain import InterceptorChain
from okra_sidecar.server import Sidecar
from tests.helpers import Stub, expect_rpc_error


class CountingLayer(grpc.aio.ServerInterceptor):
    def __init__(self, name: str, trail: list[str]) -> None:
        self.name = name
        self.trail = trail
        self.builds = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        self.builds += 1
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def layered(request: Any, context: Any) -> Any:
            self.trail.append(self.name)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(layered)


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def test_layers_build_once_per_method_and_run_in_order_per_call() -> None:
    trail: list[str] = []
    outer, inner = CountingLayer("outer", trail), CountingLayer("inner", trail)
    chain = InterceptorChain([outer, inner])

    async def servicer(request: Any, context: Any) -> Any:
        trail.append("servicer")
        return request

    async def lookup(details: grpc.HandlerCallDetails) -> Handler | None:
        if details.method == "/svc/Known":
            return grpc.unary_unary_rpc_method_handler(servicer)
        return None

    for _ in range(3):
        handler = await chain.intercept_service(lookup, Details("/svc/Known"))
        assert handler is not None
        assert await handler.unary_unary(1, None) == 1  # type: ignore[arg-type,misc]
    assert (outer.builds, inner.builds) == (1, 1)
    assert trail == ["outer", "inner", "servicer"] * 3
    # Unknown names come from callers: composed every time, never cached.
    assert await chain.intercept_service(lookup, Details("/svc/Nope")) is None
    assert await chain.intercept_service(lookup, Details("/svc/Nope2")) is None
    assert outer.builds == 3


async def test_per_call_errors_still_map_through_the_cached_chain(stub: Stub) -> None:
    for _ in range(2):
        await expect_rpc_error(
            stub.GetStatus(pb.GetStatusRequest(instance_id="x")), grpc.StatusCode.INVALID_ARGUMENT
        )


async def test_unimplemented_health_list(sidecar: tuple[Sidecar, Stub]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar[0].port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        error = await expect_rpc_error(
            health.List(health_pb2.HealthListRequest()), grpc.StatusCode.UNIMPLEMENTED
        )
        assert "not implemented" in (error.details() or "")
