"""Outbound guards: where workflows' HTTP, OpenAPI and gRPC calls may go, checked after DNS."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.config import EffectSettings, RedisSettings
from okra_sidecar.executors.grpc_call import GrpcCaller
from okra_sidecar.executors.hosts import HostMap
from okra_sidecar.executors.http import HttpCaller
from okra_sidecar.executors.openapi import OpenApiCaller
from okra_sidecar.executors.outbound import REFUSED_TITLE, OutboundGuard
from okra_sidecar.executors.problems import EffectFailedError
from okra_sidecar.store.embedded import find_redis_server
from tests.helpers import make_settings, running_sidecar, to_python, value, wait_for_status

from .conftest import PROTOS
from .stand_in import http_stand_in
from .test_grpc import request

AUTHORIZATION = "https://serverlessworkflow.io/spec/1.0.0/errors/authorization"
WORKFLOWS = Path(__file__).parent / "workflows_outbound"


async def refused(call: asyncio.Future[object] | object) -> dict[str, object]:
    with pytest.raises(EffectFailedError) as caught:
        await call  # type: ignore[misc]  # a coroutine
    error = caught.value.error
    assert error["type"] == AUTHORIZATION and error["status"] == 403, error
    assert error["title"] == REFUSED_TITLE
    return error


async def test_the_own_redis_is_refused_by_address_name_and_alias() -> None:
    with http_stand_in() as (base, recorder), http_stand_in() as (other, _):
        port = int(base.rsplit(":", 1)[1])
        guard = OutboundGuard(private_endpoints=[("localhost", port)])
        http = HttpCaller(hosts=HostMap(), guard=guard)
        try:
            for uri in (
                f"http://127.0.0.1:{port}/pets/1",
                f"http://localhost:{port}/pets/1",  # a name, resolved before the check
                f"http://0.0.0.0:{port}/pets/1",  # reaches this machine too
                f"http://[::ffff:127.0.0.1]:{port}/pets/1",
            ):
                error = await refused(http.call({"method": "get", "uri": uri}))
                assert "the sidecar's own Redis" in str(error["detail"])
            # Another port of the same machine is not Redis.
            assert await http.call({"method": "get", "uri": f"{other}/pets/2"}) == {
                "id": 2,
                "name": "Rex",
            }
        finally:
            await http.aclose()
        assert recorder.requests == []  # nothing reached the stand-in for Redis


async def test_link_local_and_metadata_addresses_are_refused_by_default() -> None:
    http = HttpCaller(hosts=HostMap())
    try:
        for uri in (
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/",
        ):
            error = await refused(http.call({"method": "get", "uri": uri}))
            assert "denied pattern" in str(error["detail"])
    finally:
        await http.aclose()


async def test_allowed_and_denied_patterns() -> None:
    with http_stand_in() as (base, _):
        port = base.rsplit(":", 1)[1]
        allowed = HttpCaller(hosts=HostMap(), guard=OutboundGuard(allow=["127.0.0.0/8"]))
        elsewhere = HttpCaller(hosts=HostMap(), guard=OutboundGuard(allow=["*.example.com"]))
        denied = HttpCaller(hosts=HostMap(), guard=OutboundGuard(deny=["localhost"]))
        try:
            assert await allowed.call({"method": "get", "uri": f"{base}/pets/1"})
            error = await refused(elsewhere.call({"method": "get", "uri": f"{base}/pets/1"}))
            assert "matches no allowed pattern (*.example.com)" in str(error["detail"])
            await refused(denied.call({"method": "get", "uri": f"http://localhost:{port}/"}))
        finally:
            for caller in (allowed, elsewhere, denied):
                await caller.aclose()


async def test_openapi_documents_do_not_follow_redirects() -> None:
    with http_stand_in() as (base, recorder):
        http = HttpCaller(hosts=HostMap())
        openapi = OpenApiCaller(http=http, hosts=HostMap())
        try:
            with pytest.raises(EffectFailedError) as caught:
                await openapi.call({"document": f"{base}/moved", "operationId": "x"})
            assert caught.value.error["status"] == 503
            assert "302" in caught.value.error["detail"]
        finally:
            await openapi.aclose()
            await http.aclose()
        assert [r["path"] for r in recorder.requests] == ["/moved"]  # /pets/7 never fetched


async def test_proto_files_only_from_the_workflows_folder(tmp_path: Path) -> None:
    caller = GrpcCaller(hosts=HostMap(), base_dir=PROTOS)
    outside = tmp_path / "greet.proto"
    outside.write_text((PROTOS / "greet.proto").read_text())
    try:
        for endpoint in (f"file://{outside}", "file://../test_grpc.py", "/etc/hostname"):
            call = request(1, name="x")
            call["proto"] = {"endpoint": endpoint}
            error = await refused(caller.call(call))
            assert "workflows folder" in str(error["detail"])
    finally:
        await caller.aclose()


async def test_grpc_targets_are_checked_and_carry_the_authentication(greeter: int) -> None:
    guard = OutboundGuard(private_endpoints=[("127.0.0.1", greeter)], file_roots=[PROTOS])
    caller = GrpcCaller(hosts=HostMap(), base_dir=PROTOS, guard=guard)
    open_caller = GrpcCaller(hosts=HostMap(), base_dir=PROTOS)
    try:
        call = request(greeter, name="whoami", times=1)
        call["service"]["host"] = "localhost"
        await refused(caller.call(call))
        call["authentication"] = {"scheme": "Bearer", "parameter": "token-1"}
        assert await open_caller.call(call) == {"message": "Bearer token-1"}
    finally:
        await caller.aclose()
        await open_caller.aclose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest_asyncio.fixture
async def tcp_redis(tmp_path: Path) -> AsyncIterator[str]:
    """A redis-server on a loopback TCP port (the suite's own listens on a unix socket)."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        find_redis_server(),
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        *("--dir", str(tmp_path)),
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        await process.wait()


async def test_a_workflow_cannot_reach_the_sidecars_redis(tcp_redis: str) -> None:
    settings = make_settings(tcp_redis, workflows=WORKFLOWS)
    settings = replace(settings, redis=RedisSettings(url=tcp_redis), effects=EffectSettings())
    port = tcp_redis.rsplit(":", 1)[1].split("/")[0]
    with http_stand_in() as (base, _):
        async with running_sidecar(settings) as (_, stub):
            bad = await stub.Run(
                pb.RunRequest(
                    workflow_id="tests.fetch.1.0.0",
                    input=value({"url": f"http://localhost:{port}/"}),
                )
            )
            good = await stub.Run(
                pb.RunRequest(
                    workflow_id="tests.fetch.1.0.0", input=value({"url": f"{base}/pets/5"})
                )
            )
            failed = await wait_for_status(stub, bad.instance_id, {pb.WORKFLOW_STATUS_FAILED})
            assert failed.error.title == REFUSED_TITLE and failed.error.status == 403
            assert "the sidecar's own Redis" in failed.error.detail
            served = await wait_for_status(stub, good.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
            assert to_python(served.output) == {"id": 5, "name": "Rex"}
