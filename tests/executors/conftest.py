"""Executor test fixtures: a gRPC Greeter built from the test proto."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
from google.protobuf import message_factory

from okra_sidecar.executors.grpc_call import compile_proto

PROTOS = Path(__file__).parent / "protos"


@pytest_asyncio.fixture
async def greeter() -> AsyncIterator[int]:
    """A Greeter server whose messages come from the same proto, compiled the same way."""
    pool = compile_proto(PROTOS / "greet.proto")
    method = pool.FindServiceByName("greet.v1.Greeter").methods_by_name["SayHello"]
    request_class = message_factory.GetMessageClass(method.input_type)
    # A class made at run time: its fields are unknown to the type checker.
    reply_class: Any = message_factory.GetMessageClass(method.output_type)

    async def say_hello(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.name == "nobody":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such person")
        if request.name == "whoami":  # echoes the credentials the call carried
            seen = dict(context.invocation_metadata() or ())
            return reply_class(message=str(seen.get("authorization", "")))
        return reply_class(message=" ".join([f"hello {request.name}"] * request.times))

    handler = grpc.method_handlers_generic_handler(
        "greet.v1.Greeter",
        {
            "SayHello": grpc.unary_unary_rpc_method_handler(
                say_hello,
                request_deserializer=request_class.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)
