"""HotCommands: the per-call Redis commands, on the cheapest client the URL allows.

The rpcs and turns send one or two commands each (HMGET, EVALSHA, XRANGE). redis-py spends
more CPU per command than the sidecar spends on the rest of GetStatus, so these go through
one multiplexed connection (store/multiplexed.py). URLs it does not take (`rediss://`) fall
back to the shared redis-py pool, with redis-py's reply parsing turned off so that both
give the same raw replies. The engine's blocking work-stream read has a multiplexed connection
of its own (`blocking_reads`); other blocking reads, pipelines and everything else stay on
redis-py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis

from okra_sidecar.store.multiplexed import (
    Arg,
    MultiplexedRedis,
    ScriptLike,
    evalsha_with,
)
from okra_sidecar.store.urls import parse_redis_url

__all__ = ["HotCommands", "PooledCommands", "hot_commands"]


class HotCommands(Protocol):
    async def execute(self, *args: Arg) -> Any:
        """One command; the raw RESP reply (bytes, int, list or None)."""

    async def evalsha(
        self, script: ScriptLike, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        """Run a script by its sha1, loading it when Redis does not know it."""

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several commands in one round trip; their replies in order."""

    async def aclose(self) -> None: ...


class PooledCommands:
    """HotCommands on a redis-py pool it does not own, replies left as Redis sent them."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = aioredis.Redis(connection_pool=client.connection_pool)
        # No response callbacks: XRANGE stays a list of [id, [field, value, ...]], as the
        # multiplexed client returns it.
        self._redis.response_callbacks.clear()

    async def execute(self, *args: Arg) -> Any:
        return await self._redis.execute_command(*args)  # type: ignore[no-untyped-call]

    async def evalsha(
        self, script: ScriptLike, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        return await evalsha_with(self.execute, script, keys, args)

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())

    async def replies(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Like `pipeline`, each command's error in its place instead of raised."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))

    async def aclose(self) -> None:
        """Nothing to close: the pool belongs to the client it was made from."""


def hot_commands(
    url: str,
    client: aioredis.Redis,
    *,
    socket_timeout: float,
    connect_timeout: float,
    blocking_reads: bool = False,
) -> HotCommands:
    """A multiplexed connection to `url`, or `client`'s pool for URLs it cannot take.

    `blocking_reads`: the connection carries one caller's blocking reads, one at a time, and
    is dropped when that caller gives up on one (see MultiplexedRedis's `drop_on_cancel`).
    """
    try:
        parse_redis_url(url)
    except ValueError:
        return PooledCommands(client)
    return MultiplexedRedis(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        drop_on_cancel=blocking_reads,
    )
