"""durability: aof refuses to start on a Redis whose persistence cannot give it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from okra_sidecar.errors import DurabilityError
from okra_sidecar.server import start_sidecar
from okra_sidecar.store.persistence import (
    ServerPersistence,
    check_durability,
    durability_problem,
    read_persistence,
)
from tests.helpers import make_settings, redis_fingerprint
from tests.store.test_durability import READY_TIMEOUT_S, start_server


@pytest.mark.parametrize(
    ("version", "appendonly", "appendfsync", "problem"),
    [
        ((6, 2), False, "always", "appendonly no: set `appendonly yes`"),
        ((6, 2), True, "everysec", "appendfsync everysec: set it"),
        ((7, 0), True, "no", "needs `appendfsync always`"),
        ((7, 0), True, None, "refuses CONFIG GET"),
        ((6, 2), True, "always", None),
        ((7, 2), False, "always", "appendonly no"),
        ((7, 2), True, "everysec", None),  # WAITAOF waits for the fsync itself
        ((7, 4), True, None, None),
    ],
)
def test_aof_needs_what_each_redis_version_needs(
    version: tuple[int, int], appendonly: bool, appendfsync: str | None, problem: str | None
) -> None:
    server = ServerPersistence(version, appendonly, appendfsync)
    found = durability_problem("aof", server)
    assert found == problem if problem is None else problem in (found or "")
    assert durability_problem("memory", server) is None
    assert durability_problem("replicas", server) is None


@pytest_asyncio.fixture
async def own_redis(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[Redis]:
    """A redis-server of this test's own (appendonly no), free to reconfigure."""
    port = unused_tcp_port_factory()
    process = await start_server(tmp_path / "redis", port)
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        for _ in range(int(READY_TIMEOUT_S / 0.05)):
            try:
                await client.ping()
                break
            except redis_errors.ConnectionError:
                await asyncio.sleep(0.05)
        yield client
    finally:
        await client.aclose()
        # SIGKILL: with the AOF switched on at run time, a SIGTERM waits for its rewrite.
        process.kill()
        await process.wait()


async def test_settings_are_read_from_the_server(own_redis: Redis) -> None:
    server = await read_persistence(own_redis)
    assert (server.appendonly, server.appendfsync) == (False, "everysec")
    if server.version >= (7, 2):
        pytest.skip("this redis-server has WAITAOF; the refusals below are for older ones")
    with pytest.raises(DurabilityError, match="appendonly no"):
        await check_durability(own_redis, "aof")
    await own_redis.config_set("appendonly", "yes")
    with pytest.raises(DurabilityError, match="appendfsync everysec"):
        await check_durability(own_redis, "aof")
    await own_redis.config_set("appendfsync", "always")
    await check_durability(own_redis, "aof")
    await check_durability(own_redis, "memory")


async def test_a_sidecar_at_aof_refuses_to_start_and_writes_nothing(
    redis: Redis, redis_url: str
) -> None:
    server = await read_persistence(redis)
    if durability_problem("aof", server) is None:
        pytest.skip("the test Redis can give durability aof")
    settings = make_settings(redis_url)
    settings = replace(settings, redis=replace(settings.redis, durability="aof"))
    before = await redis_fingerprint(redis)
    with pytest.raises(DurabilityError, match="durability aof"):
        await start_sidecar(settings)
    assert await redis_fingerprint(redis) == before
