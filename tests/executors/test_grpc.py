"""GrpcCaller: a unary call built from a proto file at run time, against a real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from okra_sidecar.executors.grpc_call import GrpcCaller
from okra_sidecar.executors.hosts import HostMap
from okra_sidecar.executors.problems import EffectFailedError

PROTOS = Path(__file__).parent / "protos"


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
