"""Shared fixtures: one redis-server for the whole run and a clean client for each test."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from okra_sidecar.server import Sidecar
from okra_sidecar.store.cluster_client import cluster_redis
from okra_sidecar.store.embedded import EmbeddedRedis
from okra_sidecar.store.local_cluster import LocalCluster
from tests.helpers import Stub, make_settings, running_sidecar

TEST_REDIS_URL_ENV = "OKRA_TEST_REDIS_URL"
# pytest-timeout (60 s) shows threads, not coroutines: a test whose loop waits this long
# prints what each of its tasks is waiting on first.
STUCK_AFTER_S = 45.0


def _print_stuck_tasks(loop: asyncio.AbstractEventLoop) -> None:
    out = io.StringIO()
    tasks = asyncio.all_tasks(loop)
    print(f"\n+++ {len(tasks)} tasks still waiting after {STUCK_AFTER_S:.0f}s +++", file=out)
    for task in tasks:
        print(f"{task!r}", file=out)
        # Task.print_stack shows only the task's own frame: follow what each coroutine awaits.
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is not None:
                print(
                    f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}",
                    file=out,
                )
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    sys.stderr.write(out.getvalue())


@pytest_asyncio.fixture(autouse=True)
async def report_stuck_tasks() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    handle = loop.call_later(STUCK_AFTER_S, _print_stuck_tasks, loop)
    try:
        yield
    finally:
        handle.cancel()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def single_redis_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The run's Redis: `OKRA_TEST_REDIS_URL` if set, else one embedded redis-server."""
    configured = os.environ.get(TEST_REDIS_URL_ENV)
    if configured:
        yield configured
        return
    # The server's subprocess belongs to the session loop, which outlives every test's loop.
    server = EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis"), appendfsync="no")
    try:
        yield await server.start()
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def redis_url(single_redis_url: str) -> str:
    """The Redis of a test: the single one, unless its module moves it onto both."""
    return single_redis_url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    """The run's Redis Cluster, 3 masters on loopback, started when a test first asks."""
    async with LocalCluster(data_dir=tmp_path_factory.mktemp("cluster"), masters=3) as cluster:
        yield cluster


@pytest_asyncio.fixture
async def cluster_url(redis_cluster: LocalCluster) -> AsyncIterator[str]:
    """The run's Redis Cluster, every master flushed before the test: its seed URL."""
    for node in redis_cluster.masters():
        client = redis_cluster.client(node)
        try:
            await client.execute("FLUSHALL")
        finally:
            await client.aclose()
    yield redis_cluster.url


@pytest.fixture(params=["single", "cluster"])
def either_redis_url(request: pytest.FixtureRequest) -> str:
    """A test's Redis: once a single primary, once the run's 3-master Redis Cluster (flushed).

    A test module moves onto both by overriding `redis_url` and `redis` with these two.
    """
    name = "single_redis_url" if request.param == "single" else "cluster_url"
    return str(request.getfixturevalue(name))


@pytest_asyncio.fixture
async def either_redis(either_redis_url: str) -> AsyncIterator[Redis]:
    """A client of `either_redis_url` (redis-py's RedisCluster on the Cluster), flushed."""
    if "," not in either_redis_url:
        client = Redis.from_url(either_redis_url, decode_responses=False)
        await client.flushall()
    else:
        # RedisCluster answers the commands tests send, as server.parts.redis_client relies on.
        client = cast(
            Redis,
            cluster_redis(
                either_redis_url, max_connections=32, socket_timeout=10, connect_timeout=2
            ),
        )
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client (bytes in, bytes out) on a database flushed before the test."""
    client = Redis.from_url(redis_url, decode_responses=False)
    try:
        await client.flushall()
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def sidecar(
    redis: Redis,
    redis_url: str,
) -> AsyncIterator[tuple[Sidecar, Stub]]:
    """A sidecar with the test workflows, on a flushed Redis, and a stub to call it."""
    async with running_sidecar(make_settings(redis_url)) as running:
        yield running


@pytest.fixture
def stub(sidecar: tuple[Sidecar, Stub]) -> Stub:
    return sidecar[1]
