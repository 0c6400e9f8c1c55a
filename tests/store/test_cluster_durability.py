"""durability: replicas on a Redis Cluster: the WAIT goes to the master that took the write."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from redis.crc import key_slot

from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.store import cluster_commands as cluster_commands_module
from okra_sidecar.store.cluster_client import cluster_commands, cluster_redis
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.local_cluster import ClusterNode, LocalCluster
from okra_sidecar.store.redis_store import RedisStore
from okra_sidecar.store.replies import map_redis_errors
from tests.helpers import eventually

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(data_dir=tmp_path, masters=3, replicas=1) as running:
        yield running


@pytest_asyncio.fixture
async def store(cluster: LocalCluster) -> AsyncIterator[RedisStore]:
    client = cluster_redis(cluster.url, max_connections=8, socket_timeout=5, connect_timeout=2)
    store = RedisStore(
        redis=client,  # type: ignore[arg-type]  # RedisCluster, as server.redis_client makes it
        hot=cluster_commands(cluster.url, socket_timeout=5, connect_timeout=2),
        keys=RedisKeys(partitions=8),
        durability="replicas",
        replicas=1,
        durability_timeout_ms=300,
    )
    try:
        yield store
    finally:
        await store.aclose()
        await client.aclose()


def _master_of(cluster: LocalCluster, key: str) -> int:
    masters = cluster.masters()
    return key_slot(key.encode()) * len(masters) // 16384


def _instances_by_master(cluster: LocalCluster, keys: RedisKeys) -> dict[int, str]:
    """One instance id per master, its keys in that master's slots."""
    found: dict[int, str] = {}
    for n in range(200):
        instance_id = f"00000000-0000-4000-8000-{n:012d}"
        found.setdefault(_master_of(cluster, keys.instance(instance_id)), instance_id)
        if len(found) == len(cluster.masters()):
            return found
    raise AssertionError("no instance ids found for every master")


def _replica_of(cluster: LocalCluster, master: int) -> ClusterNode:
    return next(node for node in cluster.nodes if node.replica_of == master)


async def _signal(store: RedisStore, instance_id: str, signal_id: str) -> bool:
    return await store.signal(
        instance_id, signal_id=signal_id, event={"type": "go", "id": signal_id}, now_ms=1
    )


async def test_a_write_waits_for_the_replica_of_its_own_master(
    cluster: LocalCluster, store: RedisStore
) -> None:
    instances = _instances_by_master(cluster, store.keys)
    for instance_id in instances.values():
        # A running instance, written as create.lua would leave its status.
        await store.hot.execute("HSET", store.keys.instance(instance_id), "status", "running")
        assert await _signal(store, instance_id, "first") is False
    stalled = _replica_of(cluster, 0)
    assert stalled.process is not None
    os.kill(stalled.process.pid, signal.SIGSTOP)
    try:
        # Only master 0's replica cannot acknowledge: only its writes are refused. A WAIT
        # sent anywhere else would count a replica with nothing to replicate.
        with pytest.raises(StoreUnavailableError, match="only 0 of 1 Redis replicas"):
            await _signal(store, instances[0], "second")
        for master in (1, 2):
            assert await _signal(store, instances[master], "second") is False
    finally:
        os.kill(stalled.process.pid, signal.SIGCONT)
    # The refused signal was written (and is a duplicate now); the replica caught up.
    assert await _signal(store, instances[0], "second") is True
    assert await _signal(store, instances[0], "third") is False


async def _roles(cluster: LocalCluster, nodes: list[ClusterNode]) -> list[str]:
    return [await cluster.role(node) for node in nodes]


async def test_a_durable_write_after_a_failover_loads_its_script_on_the_new_master(
    cluster: LocalCluster, store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The slot map refreshes at most once a minute here, so it stays as stale as a failover
    # can leave it between two refreshes: the old master, a replica now, still among the
    # masters it lists.
    monkeypatch.setattr(cluster_commands_module, "REFRESH_INTERVAL_S", 60.0)
    instance_id = _instances_by_master(cluster, store.keys)[0]
    await store.hot.execute("HSET", store.keys.instance(instance_id), "status", "running")
    assert await _signal(store, instance_id, "first") is False
    old, heir = cluster.masters()[0], _replica_of(cluster, 0)
    promoted = cluster.client(heir)
    try:
        # TAKEOVER: no election, which a cluster this young may not win in time.
        await promoted.execute("CLUSTER", "FAILOVER", "TAKEOVER")

        async def swapped() -> bool:
            return await _roles(cluster, [heir, old]) == ["master", "slave up"]

        await eventually(swapped, timeout_s=20, what="the manual failover")
        # A new master that never ran the script (Redis does not replicate SCRIPT LOAD).
        await promoted.execute("SCRIPT", "FLUSH")
    finally:
        await promoted.aclose()
    # NOSCRIPT from the new master: the script is loaded (with no WAIT: the old master is a
    # replica now, which refuses one) and the signal written and waited for.
    assert await _signal(store, instance_id, "second") is False
    assert await _signal(store, instance_id, "second") is True


async def test_a_wait_on_a_replica_is_an_outage(cluster: LocalCluster) -> None:
    """What a demoted master answers a durable write's WAIT: retry, on the new master."""
    replica = cluster.client(_replica_of(cluster, 0))
    try:
        with pytest.raises(StoreUnavailableError, match="replica"), map_redis_errors():
            await replica.execute("WAIT", 1, 10)
    finally:
        await replica.aclose()
