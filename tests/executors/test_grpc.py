"""GrpcCaller: a unary call built from a proto file at run time, against a real server."""

from __future__ import annotations

import sys
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


async def test_without_grpcio_tools_the_call_fails_naming_the_extra(
    greeter: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import grpc_tools` raise ImportError, as on a sidecar
    # installed without the grpc-proto extra.
    monkeypatch.setitem(sys.modules, "grpc_tools", None)
    hosts = HostMap([("greeter.internal", f"127.0.0.1:{greeter}")])
    caller = GrpcCaller(hosts=hosts, base_dir=PROTOS)
    try:
        with pytest.raises(EffectFailedError) as caught:
            await caller.call(request(greeter, name="ada", times=1))
    finally:
        await caller.aclose()
    assert caught.value.error["type"].endswith("/errors/configuration")
    assert "okra-sidecar[grpc-proto]" in caught.value.error["detail"]
