"""durability: replicas against a real primary and replica: the WAIT covers the write itself."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.store.embedded import find_redis_server
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.multiplexed import MultiplexedRedis
from okra_sidecar.store.redis_store import RedisStore
from tests.store.test_redis_store import IDS, new

pytestmark = pytest.mark.slow
READY_TIMEOUT_S = 20.0


async def start_server(directory: Path, port: int, *extra: str) -> asyncio.subprocess.Process:
    await asyncio.to_thread(directory.mkdir)
    return await asyncio.create_subprocess_exec(
        find_redis_server(),
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        *("--dir", str(directory), "--logfile", str(directory / "redis.log"), *extra),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def stop_server(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        os.kill(process.pid, signal.SIGCONT)  # in case a test left it stopped
        process.terminate()
        await process.wait()


@pytest_asyncio.fixture
async def primary_with_replica(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """A primary's URL and its one replica's process, replication up."""
    primary_port, replica_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    primary = await start_server(tmp_path / "primary", primary_port)
    replica = await start_server(
        tmp_path / "replica", replica_port, "--replicaof", "127.0.0.1", str(primary_port)
    )
    url = f"redis://127.0.0.1:{primary_port}/0"
    client = Redis.from_url(url)
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            while True:
                try:
                    info = await client.info("replication")
                except redis_errors.ConnectionError:
                    info = {}  # not listening yet
                if info.get("connected_slaves") == 1 and "slave0" in info:
                    if info["slave0"].get("state") == "online":
                        break
                await asyncio.sleep(0.05)
        yield url, replica
    finally:
        await client.aclose()
        await stop_server(replica)
        await stop_server(primary)


async def test_a_write_waits_for_its_own_replication(
    primary_with_replica: tuple[str, asyncio.subprocess.Process],
) -> None:
    url, replica = primary_with_replica
    client = Redis.from_url(url)
    hot = MultiplexedRedis(url)
    store = RedisStore(
        redis=client,
        hot=hot,
        keys=RedisKeys(partitions=2),
        durability="replicas",
        replicas=1,
        durability_timeout_ms=300,
    )
    try:
        await store.ensure_groups()
        assert await store.create_instance(new(IDS[0]), max_active=0) is True
        # A replica that cannot acknowledge: the WAIT must be on the connection that wrote,
        # else it would count the replica for a connection with nothing to replicate.
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailableError, match="only 0 of 1 Redis replicas"):
                await store.create_instance(new(IDS[1]), max_active=0)
            with pytest.raises(StoreUnavailableError, match="only 0 of 1 Redis replicas"):
                await store.signal(
                    IDS[0], signal_id="s-1", event={"type": "go", "id": "s-1"}, now_ms=1
                )
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        # Caught up again: the next write is acknowledged.
        assert await store.create_instance(new(IDS[2]), max_active=0) is True
    finally:
        await store.aclose()
        await client.aclose()
