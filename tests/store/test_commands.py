"""HotCommands: the multiplexed client and the pooled fallback give the same raw replies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from okra_sidecar.server import Sidecar
from okra_sidecar.store.cluster_client import cluster_commands
from okra_sidecar.store.commands import HotCommands, PooledCommands, hot_commands
from okra_sidecar.store.multiplexed import MultiplexedRedis, MultiplexedScript
from okra_sidecar.store.streams import read_partitions
from okra_sidecar.tasks import cancel_and_wait
from tests.helpers import Stub

# The single-primary clients (multiplexed, pooled) and their connections; `hot_kind` runs the
# command tests on the Cluster's ClusterCommands as well.
pytestmark = pytest.mark.single_store

SCRIPT = MultiplexedScript("return {KEYS[1], ARGV[1], redis.call('HGET', KEYS[1], 'a')}")


@pytest.fixture(params=["multiplexed", "pooled", "cluster"])
def hot_kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Which hot commands, and the URL of their Redis (the run's Cluster for "cluster")."""
    url_fixture = "cluster_url" if request.param == "cluster" else "redis_url"
    return request.param, request.getfixturevalue(url_fixture)


@pytest_asyncio.fixture
async def hot(hot_kind: tuple[str, str], redis: Redis) -> AsyncIterator[HotCommands]:
    """The hot commands on a single Redis (both clients) and on a 3-master Redis Cluster."""
    kind, url = hot_kind
    commands: HotCommands
    if kind == "cluster":
        commands = cluster_commands(url, socket_timeout=5, connect_timeout=2)
    elif kind == "multiplexed":
        commands = MultiplexedRedis(url)
    else:
        commands = PooledCommands(redis)
    try:
        yield commands
    finally:
        await commands.aclose()


async def test_replies_are_raw_resp(hot: HotCommands) -> None:
    await hot.pipeline(
        [
            ("HSET", "h", "a", "1", "b", "2"),
            ("XADD", "s", "1-0", "e", "one"),
            ("XADD", "s", "2-0", "e", "two", "x", "y"),
        ]
    )
    assert await hot.execute("HMGET", "h", "a", "missing", "b") == [b"1", None, b"2"]
    # XRANGE as Redis sends it: not redis-py's list of (id, dict).
    assert await hot.execute("XRANGE", "s", "-", "+", "COUNT", 10) == [
        [b"1-0", [b"e", b"one"]],
        [b"2-0", [b"e", b"two", b"x", b"y"]],
    ]
    assert await hot.pipeline([("HGET", "h", "a"), ("XLEN", "s"), ("HGET", "h", "zz")]) == [
        b"1",
        2,
        None,
    ]


async def test_evalsha_loads_a_script_redis_forgot(hot: HotCommands) -> None:
    await hot.execute("HSET", "h", "a", "v")
    await hot.execute("SCRIPT", "FLUSH")
    assert await hot.evalsha(SCRIPT, ["h"], ["arg"]) == [b"h", b"arg", b"v"]
    assert await hot.execute("SCRIPT", "EXISTS", SCRIPT.sha) == [1]
    assert await hot.evalsha(SCRIPT, ["h"], ["again"]) == [b"h", b"again", b"v"]


async def test_an_error_reply_raises_and_leaves_the_client_usable(hot: HotCommands) -> None:
    with pytest.raises(redis_errors.ResponseError, match="unknown command"):
        await hot.execute("NOSUCHCOMMAND")
    with pytest.raises(redis_errors.ResponseError, match="wrong number of arguments"):
        await hot.pipeline([("PING",), ("HGET", "only-a-key")])
    assert await hot.execute("PING") == b"PONG"


async def test_urls_the_multiplexed_client_cannot_take_use_the_pool(
    redis: Redis, redis_url: str
) -> None:
    assert isinstance(
        hot_commands(redis_url, redis, socket_timeout=1, connect_timeout=1), MultiplexedRedis
    )
    tls = hot_commands("rediss://example.com:6380/0", redis, socket_timeout=1, connect_timeout=1)
    assert isinstance(tls, MultiplexedRedis)
    odd = hot_commands("rediss://h?ssl_cert_reqs=maybe", redis, socket_timeout=1, connect_timeout=1)
    assert isinstance(odd, PooledCommands)


async def test_the_sidecar_serves_reads_on_a_multiplexed_connection_that_reconnects(
    sidecar: tuple[Sidecar, Stub], redis: Redis
) -> None:
    running, stub = sidecar
    assert isinstance(running.store.hot, MultiplexedRedis)
    run = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
    # Every connection of the sidecar is dropped; the next call connects again.
    await redis.client_kill_filter(_type="normal", skipme=True)
    instance = await stub.GetStatus(pb.GetStatusRequest(instance_id=run.instance_id))
    assert instance.instance_id == run.instance_id


async def test_read_partitions_reads_both_reply_shapes(hot: HotCommands) -> None:
    # Two streams in two slots (and on two masters of a Cluster: one read per slot there).
    streams = ["w:0", "w:1"]
    for stream in streams:
        await hot.execute("XGROUP", "CREATE", stream, "g", "0", "MKSTREAM")
    await hot.execute("XADD", "w:1", "1-0", "i", "a")
    await hot.execute("XADD", "w:0", "2-0", "i", "b", "x", "y")

    async def no_groups() -> None:
        raise AssertionError("the groups exist")

    async def read() -> list[Any]:
        partitions = {b"w:0": 0, b"w:1": 1}
        return await read_partitions(
            hot, "g", "c", streams, partitions, count=10, block_ms=10, recreate_groups=no_groups
        )

    assert sorted(await read()) == [
        (0, b"2-0", {b"i": b"b", b"x": b"y"}),
        (1, b"1-0", {b"i": b"a"}),
    ]
    assert await read() == []  # nothing new: the block times out empty


@pytest.mark.parametrize("drop_on_cancel", [True, False])
async def test_an_abandoned_blocking_read_takes_no_entries_when_its_connection_drops(
    redis: Redis, redis_url: str, drop_on_cancel: bool
) -> None:
    reader = MultiplexedRedis(redis_url, drop_on_cancel=drop_on_cancel)
    await redis.xgroup_create("w", "g", id="0", mkstream=True)
    read = ("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "BLOCK", 5000, "STREAMS", "w", ">")
    try:
        blocked = asyncio.create_task(reader.execute(*read))
        await _wait_for_blocked_clients(redis, 1)
        await cancel_and_wait([blocked])
        if drop_on_cancel:
            await _wait_for_blocked_clients(redis, 0)
        await redis.xadd("w", {"i": "a"}, id="1-0")
        # The next read gets the entry, unless the abandoned read, still blocked in Redis,
        # took it into the pending list (what happens without drop_on_cancel).
        reply = await reader.execute(*read[:6], "BLOCK", 100, "STREAMS", "w", ">")
        if drop_on_cancel:
            assert reply == [[b"w", [[b"1-0", [b"i", b"a"]]]]]
        else:
            assert reply is None
            pending = await redis.xpending("w", "g")
            assert pending["pending"] == 1
    finally:
        await reader.aclose()


async def _wait_for_blocked_clients(redis: Redis, count: int) -> None:
    """Poll INFO (Redis has no event for it) until `count` clients are blocked."""
    async with asyncio.timeout(5):
        while True:
            if (await redis.info("clients"))["blocked_clients"] == count:
                return
            await asyncio.sleep(0.01)
