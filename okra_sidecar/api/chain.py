"""InterceptorChain: composes the server's interceptors once per method instead of per call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


class InterceptorChain(grpc.aio.ServerInterceptor):
    """Runs the layered interceptors for a method once and reuses the handler they build.

    grpc.aio awaits every interceptor and rebuilds every wrapped handler on each call, which
    costs about a quarter of a bare server's throughput with three layers. Every layer given
    here wraps by method name alone and reads per-call data (metadata, peer) from the context
    inside the wrapped behavior, so the composed handler is the same for every call of a
    method and can be cached. Unknown methods are not cached: their names come from callers.
    """

    def __init__(self, layers: Sequence[grpc.aio.ServerInterceptor]) -> None:
        self._layers = tuple(layers)
        self._handlers: dict[str, Handler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = self._handlers.get(handler_call_details.method)
        if handler is not None:
            return handler
        built = await self._compose(0, continuation, handler_call_details)
        if built is not None:
            self._handlers[handler_call_details.method] = built
        return built

    async def _compose(
        self, index: int, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        if index == len(self._layers):
            return await continuation(details)

        async def inner(next_details: grpc.HandlerCallDetails) -> Handler | None:
            return await self._compose(index + 1, continuation, next_details)

        return await self._layers[index].intercept_service(inner, details)
