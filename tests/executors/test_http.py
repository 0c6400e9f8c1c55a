"""HttpCaller against a local server: output modes, errors as problems, redirects, overrides."""

from __future__ import annotations

import base64

import pytest

from okra_sidecar.executors.hosts import HostMap, normalize_target
from okra_sidecar.executors.http import HttpCaller
from okra_sidecar.executors.problems import EffectFailedError

from .stand_in import http_stand_in

COMMUNICATION = "https://serverlessworkflow.io/spec/1.0.0/errors/communication"


async def test_output_modes_and_request_parts() -> None:
    with http_stand_in() as (base, recorder):
        http = HttpCaller(hosts=HostMap())
        try:
            assert await http.call({"method": "get", "uri": f"{base}/pets/3"}) == {
                "id": 3,
                "name": "Rex",
            }
            response = await http.call(
                {"method": "get", "uri": f"{base}/pets/4", "output": "response"}
            )
            assert response["statusCode"] == 200
            assert response["content"] == {"id": 4, "name": "Rex"}
            assert response["request"]["method"] == "GET"
            raw = await http.call({"method": "get", "uri": f"{base}/text", "output": "raw"})
            assert base64.b64decode(raw) == b"plain words"
            echoed = await http.call(
                {
                    "method": "post",
                    "uri": f"{base}/echo",
                    "query": {"a": 1, "b": "x y"},
                    "body": {"k": [1, 2]},
                }
            )
            assert echoed["path"] == "/echo?a=1&b=x+y"
            assert echoed["body"] == '{"k": [1, 2]}'
        finally:
            await http.aclose()
    assert [r["method"] for r in recorder.requests] == ["GET", "GET", "GET", "POST"]


async def test_errors_are_communication_problems_with_the_status() -> None:
    with http_stand_in() as (base, _):
        http = HttpCaller(hosts=HostMap())
        try:
            with pytest.raises(EffectFailedError) as caught:
                await http.call({"method": "get", "uri": f"{base}/missing"})
            assert caught.value.error["type"] == COMMUNICATION
            assert caught.value.error["status"] == 404
            assert "no such thing" in caught.value.error["detail"]
            # Redirects are errors unless `redirect: true`, which follows them.
            with pytest.raises(EffectFailedError) as caught:
                await http.call({"method": "get", "uri": f"{base}/moved"})
            assert caught.value.error["status"] == 302
            moved = await http.call({"method": "get", "uri": f"{base}/moved", "redirect": True})
            assert moved == {"id": 7, "name": "Rex"}
        finally:
            await http.aclose()
    http = HttpCaller(hosts=HostMap())
    try:
        with pytest.raises(EffectFailedError) as caught:
            await http.call({"method": "get", "uri": "http://127.0.0.1:9/nothing-listens"})
        assert caught.value.error["type"] == COMMUNICATION
        assert caught.value.error["status"] == 503
    finally:
        await http.aclose()


async def test_timeout_is_the_spec_timeout_error() -> None:
    with http_stand_in() as (base, recorder):
        recorder.delay_s = 1.0
        http = HttpCaller(hosts=HostMap())
        try:
            with pytest.raises(EffectFailedError) as caught:
                await http.call({"method": "get", "uri": f"{base}/slow"}, timeout_ms=100)
        finally:
            await http.aclose()
    assert caught.value.error["status"] == 408
    assert caught.value.error["type"].endswith("/errors/timeout")


async def test_host_override_sends_a_public_name_to_the_stand_in() -> None:
    with http_stand_in() as (base, recorder):
        hosts = HostMap([("petstore.example.com", base.removeprefix("http://"))])
        http = HttpCaller(hosts=hosts)
        try:
            pet = await http.call({"method": "get", "uri": "https://petstore.example.com/pets/9"})
        finally:
            await http.aclose()
    assert pet == {"id": 9, "name": "Rex"}
    assert recorder.requests[0]["path"] == "/pets/9"


def test_host_map_targets() -> None:
    assert normalize_target("127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert normalize_target("https://internal:8443/ignored") == "https://internal:8443"
    hosts = HostMap([("Api.Example.com", "127.0.0.1:1")])
    assert hosts.url("https://api.example.com/x?y=1") == "http://127.0.0.1:1/x?y=1"
    assert hosts.url("https://other.example.com/x") == "https://other.example.com/x"
    assert hosts.target("api.example.com", 443) == "127.0.0.1:1"
    assert hosts.target("grpc.example.com", 5011) == "grpc.example.com:5011"
    with pytest.raises(ValueError, match="names no host"):
        normalize_target("http://")
