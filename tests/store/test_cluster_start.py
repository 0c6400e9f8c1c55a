"""A Redis Cluster as the store: a sidecar starts on any of its nodes, and waits for slots."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.errors import StartupError
from okra_sidecar.store.cluster_client import cluster_redis
from okra_sidecar.store.embedded import find_redis_server
from okra_sidecar.store.keys import LAYOUT_VERSION
from okra_sidecar.store.local_cluster import LocalCluster
from tests.helpers import make_settings, running_sidecar, value, wait_for_status


def _free_port() -> int:
    # The cluster bus takes the port 10000 above, so stay below 55536.
    for _ in range(50):
        with closing(socket.socket()) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < 55536:
            return port
    raise AssertionError("no free port below 55536")


@pytest_asyncio.fixture
async def cluster_node(tmp_path: Path) -> AsyncIterator[str]:
    """A redis-server in cluster mode (one node, no slots assigned), on loopback."""
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        find_redis_server(),
        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)),
        *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
        *("--save", "", "--appendonly", "no"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    try:
        client = Redis.from_url(url)
        for _ in range(100):
            try:
                await client.ping()
                break
            except Exception:  # not accepting connections yet
                await asyncio.sleep(0.05)
        await client.aclose()
        yield url
    finally:
        process.terminate()
        await process.wait()


async def test_a_sidecar_starts_on_any_node_of_a_cluster(tmp_path: Path) -> None:
    async with LocalCluster(data_dir=tmp_path, masters=3) as cluster:
        for url in (cluster.url, cluster.masters()[1].url):
            async with running_sidecar(make_settings(url)) as (_, stub):
                run = await stub.Run(
                    pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1}))
                )
                done = await wait_for_status(stub, run.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
                assert done.status == pb.WORKFLOW_STATUS_COMPLETED
        # The layout was recorded once, by the first sidecar.
        client = cluster_redis(cluster.url, max_connections=4, socket_timeout=5, connect_timeout=2)
        try:
            recorded = await client.hgetall("okra:layout")
        finally:
            await client.aclose()
        assert recorded == {b"version": str(LAYOUT_VERSION).encode(), b"partitions": b"8"}


async def test_a_cluster_that_serves_no_slots_is_waited_for_then_named(cluster_node: str) -> None:
    settings = make_settings(cluster_node)
    settings = replace(settings, redis=replace(settings.redis, wait_s=0.5))
    with pytest.raises(
        StartupError, match="cannot reach Redis at .*slots are not covered"
    ) as refused:
        async with running_sidecar(settings):
            pass
    assert "\n" not in str(refused.value)
    client = Redis.from_url(cluster_node)
    try:
        assert await client.dbsize() == 0
    finally:
        await client.aclose()
