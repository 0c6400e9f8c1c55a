"""ClusterCommands against a real 3-master Redis Cluster: routing, redirects, failover, ACL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest
import pytest_asyncio
from redis import exceptions as redis_errors
from redis.crc import key_slot

from okra_sidecar.store.cluster_client import cluster_commands, durable_cluster_commands
from okra_sidecar.store.cluster_commands import ClusterCommands
from okra_sidecar.store.cluster_routing import command_key
from okra_sidecar.store.local_cluster import ClusterNode, LocalCluster
from okra_sidecar.store.multiplexed import Arg, MultiplexedRedis, MultiplexedScript
from okra_sidecar.store.scripts import load_script
from okra_sidecar.store.urls import split_seed_urls
from tests.helpers import eventually

# One key in each master's third of the slots (0-5460, 5461-10921, 10922-16383).
KEYS = [b"okra:{p3}:a", b"okra:{p2}:b", b"okra:{p1}:c"]


def _connect(url: str) -> MultiplexedRedis:
    return MultiplexedRedis(url, socket_timeout=5, socket_connect_timeout=1)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(data_dir=tmp_path, masters=3) as running:
        yield running


@pytest_asyncio.fixture
async def commands(cluster: LocalCluster) -> AsyncIterator[ClusterCommands]:
    client = ClusterCommands(split_seed_urls(cluster.url), connect=_connect)
    try:
        yield client
    finally:
        await client.aclose()


def _blocking_reader(cluster: LocalCluster, **options: float) -> ClusterCommands:
    return ClusterCommands(
        split_seed_urls(cluster.url),
        connect=lambda url: MultiplexedRedis(url, socket_timeout=5, drop_on_cancel=True),
        **options,
    )


def _owner(cluster: LocalCluster, key: bytes) -> ClusterNode:
    masters = cluster.masters()
    return masters[key_slot(key) * len(masters) // 16384]


def test_keys_cover_the_three_masters(cluster: LocalCluster) -> None:
    assert len({_owner(cluster, key).port for key in KEYS}) == 3


def test_seed_urls_keep_user_password_and_query() -> None:
    assert split_seed_urls("rediss://u:p@a:1,b:2/0?ssl_cert_reqs=none") == [
        "rediss://u:p@a:1/0?ssl_cert_reqs=none",
        "rediss://u:p@b:2/0?ssl_cert_reqs=none",
    ]
    assert split_seed_urls("redis://h:7000") == ["redis://h:7000"]


def test_command_key_finds_the_routing_key() -> None:
    assert command_key(("HMGET", "k", "f")) == b"k"
    assert command_key(("EVALSHA", "sha", 2, "k1", "k2", "a")) == b"k1"
    assert command_key(("EVALSHA", "sha", 0, "a")) is None
    assert command_key(("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "STREAMS", "s", ">")) == b"s"
    assert command_key(("WAIT", 1, 100)) is None
    assert command_key(("XGROUP", "CREATE", "s", "g", "0")) == b"s"


async def test_each_command_goes_to_the_master_of_its_slot(
    cluster: LocalCluster, commands: ClusterCommands
) -> None:
    replies = await commands.pipeline([("SET", key, key) for key in KEYS])
    assert replies == [b"OK"] * 3
    for key in KEYS:
        node = cluster.client(_owner(cluster, key))
        try:
            assert await node.execute("GET", key) == key
        finally:
            await node.aclose()
    assert await commands.execute("GET", KEYS[2]) == KEYS[2]
    assert await commands.pipeline([("GET", k) for k in reversed(KEYS)]) == KEYS[::-1]


async def test_a_script_is_loaded_on_the_node_that_runs_it(commands: ClusterCommands) -> None:
    script = MultiplexedScript("return redis.call('INCR', KEYS[1])")
    for key in KEYS:
        assert await commands.evalsha(script, [key]) == 1
        assert await commands.evalsha(script, [key]) == 2


async def _move_slot(
    cluster: LocalCluster, slot: int, source: ClusterNode, target: ClusterNode
) -> None:
    """Move one slot and its keys as `redis-cli --cluster reshard` would."""
    src, dst = cluster.client(source), cluster.client(target)
    try:
        await dst.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        await src.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        for key in await src.execute("CLUSTER", "GETKEYSINSLOT", slot, 100):
            await src.execute("MIGRATE", "127.0.0.1", target.port, key, 0, 5000)
        for node in cluster.masters():
            client = cluster.client(node)
            try:
                await client.execute("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
            finally:
                await client.aclose()
    finally:
        await src.aclose()
        await dst.aclose()


async def test_moved_is_followed_and_remembered(
    cluster: LocalCluster, commands: ClusterCommands
) -> None:
    key = KEYS[0]
    await commands.execute("SET", key, "v")
    source, target = _owner(cluster, key), _owner(cluster, KEYS[1])
    await _move_slot(cluster, key_slot(key), source, target)
    # The client still maps the slot to the old owner: MOVED, then the new one answers.
    assert await commands.execute("GET", key) == b"v"
    assert await commands.execute("SET", key, "w") == b"OK"
    node = cluster.client(target)
    try:
        assert await node.execute("GET", key) == b"w"
    finally:
        await node.aclose()


async def test_ask_sends_asking_to_the_importing_node(
    cluster: LocalCluster, commands: ClusterCommands
) -> None:
    key = KEYS[0]
    slot = key_slot(key)
    source, target = _owner(cluster, key), _owner(cluster, KEYS[1])
    await commands.execute("PING")  # The map is read before the slot starts moving.
    src, dst = cluster.client(source), cluster.client(target)
    try:
        await dst.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        await src.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        # A key the source does not hold: ASK, and the target takes it only behind ASKING.
        assert await commands.execute("SET", key, "new") == b"OK"
        assert await dst.execute("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
        assert await src.execute("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    finally:
        await src.aclose()
        await dst.aclose()


async def test_a_cluster_with_a_user_and_password(tmp_path: Path) -> None:
    async with LocalCluster(data_dir=tmp_path, masters=3, user="okra", password="s3cret") as c:
        client = ClusterCommands(split_seed_urls(c.url), connect=_connect)
        try:
            assert await client.pipeline([("SET", k, 1) for k in KEYS]) == [b"OK"] * 3
        finally:
            await client.aclose()
        wrong = ClusterCommands(split_seed_urls(c.url.replace("s3cret", "wrong")), connect=_connect)
        try:
            with pytest.raises(redis_errors.AuthenticationError):
                await wrong.execute("GET", KEYS[0])
        finally:
            await wrong.aclose()


async def test_failover_refreshes_the_map_and_retries_only_what_is_safe(tmp_path: Path) -> None:
    async with LocalCluster(data_dir=tmp_path, masters=3, replicas=1, node_timeout_ms=1000) as c:
        client = ClusterCommands(split_seed_urls(c.url), connect=_connect)
        try:
            key = KEYS[0]
            # WAIT goes with the write before it, to that master, which has one replica.
            assert await client.pipeline([("SET", key, "kept"), ("WAIT", 1, 2000)]) == [
                b"OK",
                1,
            ]
            await c.kill(_owner(c, key))
            # A write that might have been applied is not resent: the caller hears of it.
            with pytest.raises(redis_errors.ConnectionError):
                await client.execute("INCR", "okra:{p3}:counter")

            async def served() -> bool:
                try:
                    return bool(await client.execute("GET", key) == b"kept")
                except (redis_errors.ConnectionError, redis_errors.ClusterDownError):
                    return False

            await eventually(served, timeout_s=30, what="the replica took over")
            assert await client.execute("INCR", "okra:{p3}:counter") == 1
            commit = MultiplexedScript(load_script("commit"))
            assert commit.sha  # a retry-safe script: resent after a failed connection
        finally:
            await client.aclose()


async def test_many_callers_share_one_connection_per_master(commands: ClusterCommands) -> None:
    replies = await asyncio.gather(*(commands.execute("INCR", KEYS[i % 3]) for i in range(300)))
    assert sorted(replies)[-1] == 100
    assert len(await commands.masters()) == 3


async def test_a_blocking_read_over_several_slots_reads_each_slot(
    cluster: LocalCluster,
) -> None:
    reader = _blocking_reader(cluster)
    writer = ClusterCommands(split_seed_urls(cluster.url), connect=_connect)
    streams: list[Arg] = [b"okra:{p3}:work", b"okra:{p2}:work", b"okra:{p1}:work"]
    read: tuple[Arg, ...] = (
        *("XREADGROUP", "GROUP", "engine", "me", "COUNT", 10, "BLOCK", 2000),
        *("STREAMS", *streams, *(">" for _ in streams)),
    )
    try:
        for stream in streams:
            await writer.execute("XGROUP", "CREATE", stream, "engine", "0", "MKSTREAM")
        pending = asyncio.ensure_future(reader.execute(*read))
        await asyncio.sleep(0.2)
        await writer.execute("XADD", streams[1], "*", "i", "one")
        first = await pending
        assert [(stream, len(entries)) for stream, entries in first] == [(streams[1], 1)]
        # The reads of the other slots still wait; what they take comes with the next call,
        # even one asking for another COUNT (the engine asks for its free capacity).
        await writer.execute("XADD", streams[2], "*", "i", "two")
        second = await reader.execute(*read[:5], 3, *read[6:])
        assert [stream for stream, _ in second] == [streams[2]]
        # Nothing new: the read blocks its full time and answers nil.
        assert await reader.execute(*read) is None
        # The reads that found nothing are not answers for later: the next call reads anew.
        await writer.execute("XADD", streams[0], "*", "i", "three")
        third = await reader.execute(*read)
        assert [stream for stream, _ in third] == [streams[0]]
    finally:
        await reader.aclose()
        await writer.aclose()


async def test_busy_slots_are_read_without_blocking_and_quiet_ones_wait(
    cluster: LocalCluster,
) -> None:
    reader = _blocking_reader(cluster)
    writer = ClusterCommands(split_seed_urls(cluster.url), connect=_connect)
    quiet, one, two = b"okra:{p3}:work", b"okra:{p2}:work", b"okra:{p1}:work"
    streams: list[Arg] = [quiet, one, two]
    read: tuple[Arg, ...] = (
        *("XREADGROUP", "GROUP", "engine", "me", "COUNT", 10, "BLOCK", 10_000),
        *("STREAMS", *streams, *(">" for _ in streams)),
    )

    async def blocked_clients() -> int:
        found = 0
        for address in await writer.masters():
            info = bytes(await writer.node(address).execute("INFO", "clients"))
            found += int(info.split(b"blocked_clients:")[1].split(b"\r\n")[0])
        return found

    async def add(stream: bytes, count: int) -> None:
        for n in range(count):
            await writer.execute("XADD", stream, "*", "n", n)

    try:
        for stream in streams:
            await writer.execute("XGROUP", "CREATE", stream, "engine", "0", "MKSTREAM")
        # Idle: a blocked read per slot; the first entry ends the call.
        pending = asyncio.ensure_future(reader.execute(*read))
        await eventually(lambda: _equals(blocked_clients(), 3), what="3 blocked reads")
        await add(one, 1)
        assert [stream for stream, _ in await pending] == [one]
        # A read still blocked takes what comes to its slot, for the next call.
        await add(two, 1)
        await eventually(lambda: _equals(blocked_clients(), 1), what="1 blocked read")
        await asyncio.sleep(0.5)  # its reply on its way to us (no bound on speed)
        assert [stream for stream, _ in await reader.execute(*read)] == [two]
        # Both slots found entries last time: they are read without blocking, in one call,
        # while the quiet slot's read waits on.
        await add(one, 4)
        await add(two, 4)
        found = await reader.execute(*read)
        assert sorted((stream, len(entries)) for stream, entries in found) == [(two, 4), (one, 4)]
        assert await blocked_clients() == 1
        # Nothing anywhere: every slot waits in a blocked read, and a new entry ends the wait.
        pending = asyncio.ensure_future(reader.execute(*read))
        await eventually(lambda: _equals(blocked_clients(), 3), what="3 blocked reads")
        await add(quiet, 1)
        assert [stream for stream, _ in await pending] == [quiet]
    finally:
        await reader.aclose()
        await writer.aclose()


async def test_the_blocking_reads_of_a_reader_that_stopped_are_closed(
    cluster: LocalCluster,
) -> None:
    # Every read's connection idle at once: the next call closes those no call asked for.
    reader = _blocking_reader(cluster, reader_idle_s=0.0)
    writer = ClusterCommands(split_seed_urls(cluster.url), connect=_connect)
    streams: list[Arg] = [b"okra:{p3}:tasks", b"okra:{p2}:tasks", b"okra:{p1}:tasks"]

    def read(consumer: str) -> tuple[Arg, ...]:
        return (
            *("XREADGROUP", "GROUP", "workers", consumer, "COUNT", 1, "BLOCK", 10),
            *("STREAMS", *streams, *(">" for _ in streams)),
        )

    async def blocking_readers() -> int:
        found = 0
        for address in await writer.masters():
            clients = await writer.node(address).execute("CLIENT", "LIST")
            found += bytes(clients).count(b"cmd=xreadgroup")
        return found

    try:
        for stream in streams:
            await writer.execute("XGROUP", "CREATE", stream, "workers", "0", "MKSTREAM")
        assert await reader.execute(*read("first-worker")) is None
        assert await blocking_readers() == 3  # one per slot, each master holding one
        # Another worker reads; the first one's connections, unused since, are closed.
        assert await reader.execute(*read("second-worker")) is None
        await eventually(lambda: _equals(blocking_readers(), 3), what="3 reader connections")
        assert await reader.execute(*read("second-worker")) is None
        assert await blocking_readers() == 3
    finally:
        await reader.aclose()
        await writer.aclose()


async def _equals(found: Awaitable[int], expected: int) -> bool:
    return await found == expected


@pytest.mark.parametrize("pooled", [False, True])
async def test_a_pipeline_keeps_the_order_of_each_slots_commands(
    cluster: LocalCluster, pooled: bool
) -> None:
    # On pooled connections (one per command in flight) only sending a slot's commands
    # together keeps them in order.
    make = durable_cluster_commands if pooled else cluster_commands
    commands = make(cluster.url, socket_timeout=5, connect_timeout=2)
    stream = "okra:{p3}:audit"
    batch: list[tuple[Arg, ...]] = []
    for n in range(50):
        batch.append(("XADD", stream, "*", "n", n))
        batch.append(("INCR", KEYS[n % 3]))  # other slots, in between
    replies = await commands.pipeline(batch)
    assert len(replies) == 100
    entries = await commands.execute("XRANGE", stream, "-", "+")
    await commands.aclose()
    assert [int(fields[1]) for _, fields in entries] == list(range(50))
