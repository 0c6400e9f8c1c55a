"""GrpcCaller: a unary call built from a proto file at run time, against a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import message_factory

from okra_sidecar.executors.grpc_call import GrpcCaller, compile_proto
from okra_sidecar.executors.hosts import HostMap
from okra_sidecar.executors.problems import EffectFailedError

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


def request(port: int, **arguments: Any) -> dict[str, Any]:
    return {
        "proto": {"endpoint": "file://greet.proto"},
        "service": {"name": "greet.v1.Greeter", "host": "greeter.internal", "port": port},
        "method": "SayHello",
        "arguments": arguments,
    }


async def test_a_call_from_the_proto_file(greeter: int) -> None:
    hosts = HostMap([("greeter.internal", f"127.0.0.1:{greeter}")])
    caller = GrpcCaller(hosts=hosts, base_dir=PROTOS)
    try:
        reply = await caller.call(request(greeter, name="ada", times=2))
        assert reply == {"message": "hello ada hello ada"}
        with pytest.raises(EffectFailedError) as caught:
            await caller.call(request(greeter, name="nobody", times=1))
        assert caught.value.error["status"] == 404
        assert caught.value.error["type"].endswith("/errors/communication")
        assert "no such person" in caught.value.error["detail"]
        with pytest.raises(EffectFailedError) as caught:
            await caller.call({**request(greeter), "method": "SayGoodbye"})
        assert caught.value.error["status"] == 400
        with pytest.raises(EffectFailedError) as caught:
            await caller.call(request(greeter, nickname="x"))
        assert caught.value.error["type"].endswith("/errors/validation")
        with pytest.raises(EffectFailedError) as caught:
            await caller.call({**request(greeter), "proto": "file://missing.proto"})
        assert "not found" in caught.value.error["detail"]
    finally:
        await caller.aclose()
