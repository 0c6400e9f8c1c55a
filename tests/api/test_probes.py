"""Probes: liveness stays SERVING through a Redis outage, readiness follows Redis, and a
sidecar started before its Redis waits for it instead of exiting."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from okra_sidecar.config import Settings
from okra_sidecar.errors import StartupError
from okra_sidecar.server import SERVICE_NAME, Sidecar, start_sidecar
from okra_sidecar.store.embedded import EmbeddedRedis
from tests.helpers import expect_rpc_error, make_settings, value, wait_for_status
from tests.store.test_durability import start_server, stop_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# How long Redis stays down: long enough for many probe rounds (the 90 s shows the
# same behaviour; the health watcher looks once a second).
OUTAGE_S = 5.0
PROBE_INTERVAL_S = 0.2
MAX_PROBES = 200
# Probes while Redis hangs: 8 s at most, less than the Redis client's 10 s socket timeout.
HUNG_PROBES = 40


def with_admin(settings: Settings) -> Settings:
    telemetry = replace(settings.telemetry, admin_listen="127.0.0.1:0")
    return replace(settings, telemetry=telemetry)


@asynccontextmanager
async def health_of(port: int) -> AsyncIterator[health_pb2_grpc.HealthStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield health_pb2_grpc.HealthStub(channel)


async def statuses(health: health_pb2_grpc.HealthStub) -> tuple[int, int]:
    """(liveness, readiness) as the kubelet's probes would read them."""
    live = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    ready = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
    return live.status, ready.status


async def http_probes(sidecar: Sidecar) -> tuple[int, int]:
    assert sidecar.admin is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sidecar.admin.port}") as client:
        healthz = await client.get("/healthz", timeout=5)
        readyz = await client.get("/readyz", timeout=5)
    return healthz.status_code, readyz.status_code


async def probe_until(
    health: health_pb2_grpc.HealthStub, ready: int, seen: list[tuple[int, int]]
) -> None:
    """Probe until readiness is `ready`, recording every (liveness, readiness) seen."""
    for _ in range(MAX_PROBES):
        seen.append(await statuses(health))
        if seen[-1][1] == ready:
            return
        await asyncio.sleep(PROBE_INTERVAL_S)
    raise AssertionError(f"readiness never became {ready}: {seen[-5:]}")


async def test_a_redis_outage_takes_readiness_away_and_leaves_liveness_serving(
    tmp_path: Path,
) -> None:
    redis_server = EmbeddedRedis(data_dir=tmp_path / "redis")
    url = await redis_server.start()
    sidecar = await start_sidecar(with_admin(make_settings(url)))
    seen: list[tuple[int, int]] = []
    try:
        async with health_of(sidecar.port) as health:
            assert await statuses(health) == (SERVING, SERVING)
            assert await http_probes(sidecar) == (200, 200)
            await redis_server.stop()
            await probe_until(health, NOT_SERVING, seen)
            loop = asyncio.get_running_loop()
            down_until = loop.time() + OUTAGE_S
            while loop.time() < down_until:
                seen.append(await statuses(health))
                assert seen[-1] == (SERVING, NOT_SERVING)
                await asyncio.sleep(PROBE_INTERVAL_S)
            assert await http_probes(sidecar) == (200, 503)
            await redis_server.start()
            await probe_until(health, SERVING, seen)
            assert await http_probes(sidecar) == (200, 200)
        assert all(live == SERVING for live, _ in seen), "liveness never left SERVING"
        assert len(seen) > OUTAGE_S / PROBE_INTERVAL_S / 2
    finally:
        await sidecar.stop(None)
        await redis_server.stop()


async def test_a_sidecar_started_before_its_redis_serves_once_redis_appears(
    tmp_path: Path,
) -> None:
    redis_server = EmbeddedRedis(data_dir=tmp_path / "redis")
    settings = with_admin(make_settings(redis_server.url))
    starting = asyncio.create_task(start_sidecar(settings))
    try:
        # The start waits: nothing listens on the socket yet.
        await asyncio.sleep(1.0)
        assert not starting.done()
        await redis_server.start()
        sidecar = await asyncio.wait_for(starting, 30)
    except BaseException:
        starting.cancel()
        await redis_server.stop()
        raise
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            assert await statuses(health_pb2_grpc.HealthStub(channel)) == (SERVING, SERVING)
            stub = pb_grpc.WorkflowHostAPIStub(channel)
            run = await stub.Run(
                pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 0}))
            )
            await wait_for_status(stub, run.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
    finally:
        await sidecar.stop(None)
        await redis_server.stop()


async def test_while_it_waits_for_redis_the_sidecar_is_alive_not_ready_and_refuses_calls(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> None:
    redis_server = EmbeddedRedis(data_dir=tmp_path / "redis")
    settings = make_settings(redis_server.url)
    unused_tcp_port, admin_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    settings = replace(
        settings,
        server=replace(settings.server, listen=f"127.0.0.1:{unused_tcp_port}"),
        telemetry=replace(settings.telemetry, admin_listen=f"127.0.0.1:{admin_port}"),
    )
    starting = asyncio.create_task(start_sidecar(settings))
    try:
        async with health_of(unused_tcp_port) as health:
            seen: list[tuple[int, int]] = []
            for _ in range(MAX_PROBES):
                try:
                    seen.append(await statuses(health))
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(PROBE_INTERVAL_S)  # not bound yet
            assert seen == [(SERVING, NOT_SERVING)]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}") as http:
                assert (await http.get("/healthz", timeout=5)).status_code == 200
                assert (await http.get("/readyz", timeout=5)).status_code == 503
                console = await http.get("/console", timeout=5)
                assert console.status_code == 503 and "starting" in console.text
            async with grpc.aio.insecure_channel(f"127.0.0.1:{unused_tcp_port}") as channel:
                stub = pb_grpc.WorkflowHostAPIStub(channel)
                error = await expect_rpc_error(
                    stub.ListWorkflows(pb.ListWorkflowsRequest()), grpc.StatusCode.UNAVAILABLE
                )
                assert "starting and waits for Redis" in (error.details() or "")
                # A response stream is refused the same way.
                poll = wpb_grpc.TaskWorkerStub(channel).PollTasks(
                    wpb.PollTasksRequest(service="orders", worker_id="w1")
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await poll.read()
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "starting and waits for Redis" in (refused.value.details() or "")
            await redis_server.start()
            sidecar = await asyncio.wait_for(starting, 30)
            try:
                await probe_until(health, SERVING, seen)
                # The real servers took the same ports over.
                assert sidecar.port == unused_tcp_port
                assert sidecar.admin is not None and sidecar.admin.port == admin_port
                assert await http_probes(sidecar) == (200, 200)
                async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
                    stub = pb_grpc.WorkflowHostAPIStub(channel)
                    assert (await stub.ListWorkflows(pb.ListWorkflowsRequest())).workflows
            finally:
                await sidecar.stop(None)
    finally:
        starting.cancel()
        await redis_server.stop()


async def test_redis_wait_bounds_the_start(tmp_path: Path) -> None:
    redis_server = EmbeddedRedis(data_dir=tmp_path / "redis")
    settings = make_settings(redis_server.url)
    settings = replace(settings, redis=replace(settings.redis, wait_s=0.5))
    with pytest.raises(StartupError, match=r"waited 0.5s: --redis-wait \(OKRA_REDIS_WAIT\)"):
        await start_sidecar(settings)


async def test_a_hung_redis_takes_readiness_away_before_the_socket_timeout(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    redis_server = await start_server(tmp_path / "redis", unused_tcp_port)
    url = f"redis://127.0.0.1:{unused_tcp_port}"
    try:
        sidecar = await start_sidecar(make_settings(url))
        try:
            async with health_of(sidecar.port) as health:
                assert await statuses(health) == (SERVING, SERVING)
                os.kill(redis_server.pid, signal.SIGSTOP)  # a hung Redis: connected, silent
                seen: list[tuple[int, int]] = []
                try:
                    # Well inside the client's 10 s socket timeout, which a PING without a
                    # timeout of its own would wait out while readiness still said SERVING.
                    for _ in range(HUNG_PROBES):
                        seen.append(await statuses(health))
                        if seen[-1][1] == NOT_SERVING:
                            break
                        await asyncio.sleep(PROBE_INTERVAL_S)
                    assert seen[-1] == (SERVING, NOT_SERVING), seen
                finally:
                    os.kill(redis_server.pid, signal.SIGCONT)
                await probe_until(health, SERVING, seen)
        finally:
            await sidecar.stop(None)
    finally:
        await stop_server(redis_server)
