"""The Redis clients for a Redis Cluster URL: detection, redis-py's RedisCluster, ClusterCommands.

A URL names a Cluster when it lists several seed nodes (`redis://h1:7000,h2:7001`) or when
its one node says `cluster_enabled:1` in `INFO cluster`. Then the hot commands go through
ClusterCommands (one pipelined connection per master), the engine's blocking reads through
ClusterCommands on connections of their own, durable writes and their WAIT through a pooled
connection per master, and everything else through redis-py's RedisCluster.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster

from okra_sidecar.store.cluster_commands import ClusterCommands
from okra_sidecar.store.commands import HotCommands, PooledCommands, hot_commands
from okra_sidecar.store.multiplexed import MultiplexedRedis
from okra_sidecar.store.urls import parse_redis_url, split_seed_urls

__all__ = [
    "PooledNode",
    "SeededRedisCluster",
    "pooled_commands",
    "stream_commands",
    "store_commands",
    "cluster_commands",
    "cluster_enabled",
    "cluster_redis",
    "durable_cluster_commands",
    "is_cluster_client",
    "names_a_cluster",
]


def is_cluster_client(client: object) -> bool:
    """Whether `client` is redis-py's RedisCluster (see server.redis_client)."""
    return isinstance(client, RedisCluster)


async def cluster_enabled(url: str, *, connect_timeout: float) -> bool:
    """Whether `url` names a Redis Cluster (several seeds, or a node with cluster mode on).

    Raises:
        redis.exceptions.ConnectionError: the one node named does not answer.
        ValueError: the URL is not one the store can use.
    """
    seeds = split_seed_urls(url)
    if len(seeds) > 1:
        return True
    if urlsplit(url).scheme == "unix":
        parse_redis_url(url)
        return False
    probe = MultiplexedRedis(
        url, socket_timeout=connect_timeout, socket_connect_timeout=connect_timeout
    )
    try:
        info: bytes = await probe.execute("INFO", "cluster")
    finally:
        await probe.aclose()
    return b"cluster_enabled:1" in info


async def names_a_cluster(url: str, *, connect_timeout: float) -> bool:
    """`cluster_enabled`, with a node that does not answer yet taken for a single Redis
    (open_layout asks it again once it answers)."""
    try:
        return await cluster_enabled(url, connect_timeout=connect_timeout)
    except redis_errors.ConnectionError:
        return False


class SeededRedisCluster(RedisCluster):
    """RedisCluster that remembers its URL, for the raw-reply commands built on it."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url
        self._timeouts = (kwargs["socket_timeout"], kwargs["socket_connect_timeout"])
        self._raw: ClusterCommands | None = None
        self._streams: ClusterCommands | None = None

    def raw_commands(self) -> ClusterCommands:
        """Replies as Redis sent them, as PooledCommands gives them on a single Redis: a
        pooled connection per master, so a pipeline with WAIT waits for that master."""
        if self._raw is None:
            socket_timeout, connect_timeout = self._timeouts
            self._raw = durable_cluster_commands(
                self.url, socket_timeout=socket_timeout, connect_timeout=connect_timeout
            )
        return self._raw

    def stream_commands(self) -> ClusterCommands:
        """Blocking stream reads and their acknowledgements on multiplexed connections (one
        per slot read, one per master), replies raw: redis-py spends several times the CPU
        per command, and a busy relay sends a read per partition and an ack per batch."""
        if self._streams is None:
            socket_timeout, connect_timeout = self._timeouts
            self._streams = cluster_commands(
                self.url,
                socket_timeout=socket_timeout,
                connect_timeout=connect_timeout,
                blocking_reads=True,
            )
        return self._streams

    async def aclose(self) -> None:
        for commands in (self._raw, self._streams):
            if commands is not None:
                await commands.aclose()
        await super().aclose()


def pooled_commands(client: aioredis.Redis) -> HotCommands:
    """HotCommands on `client`'s pool, replies raw (PooledCommands; on a Cluster, one pooled
    connection per master, closed with `client`)."""
    if isinstance(client, SeededRedisCluster):
        return client.raw_commands()
    return PooledCommands(client)


def stream_commands(client: aioredis.Redis) -> HotCommands:
    """HotCommands for blocking stream reads on `client`: on a Cluster, multiplexed
    connections (SeededRedisCluster.stream_commands); else `client`'s pool, as
    `pooled_commands`."""
    if isinstance(client, SeededRedisCluster):
        return client.stream_commands()
    return PooledCommands(client)


def cluster_redis(
    url: str, *, max_connections: int, socket_timeout: float, connect_timeout: float
) -> SeededRedisCluster:
    """redis-py's RedisCluster on the seeds of `url`, with its user, password and TLS."""
    seeds = split_seed_urls(url)
    first = urlsplit(seeds[0])
    query = parse_qs(first.query)
    tls: dict[str, Any] = {}
    if first.scheme == "rediss":
        tls = {"ssl": True} | {
            name: query[name][0]
            for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
            if name in query
        }
        if "ssl_check_hostname" in query:
            tls["ssl_check_hostname"] = query["ssl_check_hostname"][0].lower() in ("1", "true")
    address = parse_redis_url(seeds[0])
    return SeededRedisCluster(
        url,
        startup_nodes=[
            ClusterNode(urlsplit(s).hostname or "localhost", urlsplit(s).port or 6379)
            for s in seeds
        ],
        username=address.username,
        password=address.password,
        max_connections=max_connections,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        **tls,
    )


def cluster_commands(
    url: str, *, socket_timeout: float, connect_timeout: float, blocking_reads: bool = False
) -> ClusterCommands:
    """Hot commands on one multiplexed connection per master (see MultiplexedRedis for
    `blocking_reads`)."""
    return ClusterCommands(
        split_seed_urls(url),
        connect=lambda node: MultiplexedRedis(
            node,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            drop_on_cancel=blocking_reads,
        ),
    )


def store_commands(
    url: str,
    client: aioredis.Redis,
    *,
    socket_timeout: float,
    connect_timeout: float,
    blocking_reads: bool = False,
) -> HotCommands:
    """The hot commands of a store on `client`: ClusterCommands when it is a RedisCluster,
    else one multiplexed connection (see commands.hot_commands)."""
    if is_cluster_client(client):
        return cluster_commands(
            url,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            blocking_reads=blocking_reads,
        )
    return hot_commands(
        url,
        client,
        socket_timeout=socket_timeout,
        connect_timeout=connect_timeout,
        blocking_reads=blocking_reads,
    )


class PooledNode(PooledCommands):
    """PooledCommands on a pool of its own, to one node, which it closes."""

    def __init__(self, url: str, *, socket_timeout: float, connect_timeout: float) -> None:
        self._owned = aioredis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
        )
        super().__init__(self._owned)

    async def aclose(self) -> None:
        await self._owned.aclose()


def durable_cluster_commands(
    url: str, *, socket_timeout: float, connect_timeout: float
) -> ClusterCommands:
    """Commands for writes that wait (WAIT, WAITAOF): each pipeline on one pooled connection
    of the master that takes the write, so the wait is for that master's replicas and
    holds no other caller behind it."""
    return ClusterCommands(
        split_seed_urls(url),
        connect=lambda node: PooledNode(
            node, socket_timeout=socket_timeout, connect_timeout=connect_timeout
        ),
    )
