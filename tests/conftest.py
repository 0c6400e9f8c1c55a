"""Shared fixtures: one redis-server for the whole run and a clean client for each test."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from okra_sidecar.server import Sidecar
from okra_sidecar.store.embedded import EmbeddedRedis
from okra_sidecar.store.local_cluster import LocalCluster
from tests.helpers import Stub, make_settings, redis_for, running_sidecar

TEST_REDIS_URL_ENV = "OKRA_TEST_REDIS_URL"
# `--stores` (or this variable): which Redis the tests that take one run on.
STORES_OPTION = "--stores"
TEST_STORES_ENV = "OKRA_TEST_STORES"
STORES = {"single": ("single",), "cluster": ("cluster",), "both": ("single", "cluster")}
# Tests (node id prefixes) that run on both stores even in a plain `pytest` (which takes
# single by default, for a quick run while developing): the store's and the engine's tests,
# where the Cluster differs most (slots, redirects, per-master pipelines, outboxes between
# partitions), and the API's core. CI (`make test`, `make test-both`) runs every test that
# takes a Redis on both (`--stores both`).
ON_BOTH_STORES = (
    "tests/store/",
    "tests/engine/",
    "tests/api/test_rpcs.py",
    "tests/api/test_waiting.py",
    "tests/api/test_signal_with_start.py",
    "tests/api/test_signal_duplicates.py",
    "tests/api/test_operator.py",
    "tests/api/test_bulk.py",
    "tests/api/test_schedules.py",
    "tests/api/test_process.py",
    "tests/api/test_family_crash.py",
    "tests/test_readme.py::test_readme_walkthrough",
    "tests/docs/test_grpcurl_cookbook.py::test_cookbook_commands_print_what_it_shows",
)
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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        STORES_OPTION,
        choices=sorted(STORES),
        default=os.environ.get(TEST_STORES_ENV, "single"),
        help="the Redis of every test that takes one: a single primary, the run's 3-master "
        f"Redis Cluster, or both (default: ${TEST_STORES_ENV}, else single); the tests "
        "conftest.ON_BOTH_STORES names run on both whatever this says",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test that takes `redis_url` (directly, or through `redis`, `sidecar`...) runs once
    per chosen store: a parameter of the same test, never a copy of it."""
    if "redis_url" not in metafunc.fixturenames:
        return
    chosen = str(metafunc.config.getoption(STORES_OPTION))
    if metafunc.definition.nodeid.startswith(ON_BOTH_STORES):
        chosen = "both"
    if metafunc.definition.get_closest_marker("single_store") is not None:
        chosen = "single"
    if STORES[chosen] != ("single",):
        metafunc.parametrize("redis_url", STORES[chosen], indirect=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked not_on_cluster_yet is skipped on the Cluster (or whole, if it runs only
    there), saying why."""
    pending = item.get_closest_marker("not_on_cluster_yet")
    if pending is None:
        return
    callspec = getattr(item, "callspec", None)
    store = callspec.params.get("redis_url") if callspec is not None else None
    if store == "cluster" or "redis_url" not in getattr(item, "fixturenames", ()):
        pytest.skip(f"not on a Redis Cluster yet: {pending.kwargs['reason']}")


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """The Redis of a test: the single primary, or the run's Redis Cluster (flushed) as a
    parameter (see pytest_generate_tests)."""
    store = getattr(request, "param", "single")
    name = "single_redis_url" if store == "single" else "cluster_url"
    return str(request.getfixturevalue(name))


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client (bytes in, bytes out) on a store flushed before the test: redis-py's
    RedisCluster on the Cluster, whose masters `cluster_url` flushed."""
    client = redis_for(redis_url)
    if "," not in redis_url:
        await client.flushall()
    try:
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
