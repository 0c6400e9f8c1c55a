"""Whether the Redis server's own persistence can give the configured `durability`.

`aof` waits for `WAITAOF` on Redis 7.2 and newer, which needs the server's AOF on
(`appendonly yes`). Older servers have no WAITAOF: an answer there is durable only when the
server fsyncs every write itself (`appendfsync always`). Nothing in a write's reply says
whether that is so, so the sidecar reads the settings when it starts and refuses to start
when they cannot give the level, naming the setting to change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from okra_sidecar.errors import DurabilityError
from okra_sidecar.store.replies import map_redis_errors

__all__ = ["ServerPersistence", "check_durability", "durability_problem", "read_persistence"]

logger = logging.getLogger(__name__)
WAITAOF_SINCE = (7, 2)


@dataclass(frozen=True)
class ServerPersistence:
    """What a Redis server reports about its persistence; None where it would not say."""

    version: tuple[int, int]
    appendonly: bool
    appendfsync: str | None  # None: CONFIG GET is refused (managed Redis, renamed command)


def durability_problem(durability: str, server: ServerPersistence) -> str | None:
    """Why `server` cannot give `durability`, phrased for the operator; None if it can."""
    if durability != "aof":
        return None
    version = ".".join(str(part) for part in server.version)
    if not server.appendonly:
        return (
            f"durability aof needs the Redis server's AOF, but Redis {version} has "
            "appendonly no: set `appendonly yes` on the server (CONFIG SET appendonly yes, "
            "and in redis.conf), or choose durability memory"
        )
    if server.version >= WAITAOF_SINCE:
        return None
    if server.appendfsync is None:
        return (
            f"durability aof on Redis {version} (no WAITAOF before 7.2) needs "
            "`appendfsync always` on the server, and the server refuses CONFIG GET, so it "
            "cannot be checked: allow CONFIG GET, or use Redis 7.2 or newer"
        )
    if server.appendfsync != "always":
        return (
            f"durability aof on Redis {version} (no WAITAOF before 7.2) needs "
            f"`appendfsync always` on the server, which has appendfsync {server.appendfsync}: "
            "set it (CONFIG SET appendfsync always, and in redis.conf), or use Redis 7.2 "
            "or newer"
        )
    return None


async def read_persistence(redis: aioredis.Redis) -> ServerPersistence:
    """The server's version and AOF settings (INFO when CONFIG GET is refused)."""
    with map_redis_errors():
        info = await redis.info("server")
        major, minor = (int(part) for part in str(info["redis_version"]).split(".")[:2])
        try:
            config = await redis.config_get("append*")
        except redis_errors.ResponseError:
            persistence = await redis.info("persistence")
            return ServerPersistence(
                (major, minor), str(persistence.get("aof_enabled")) == "1", None
            )
    values = {_text(k): _text(v) for k, v in config.items()}
    return ServerPersistence(
        (major, minor), values.get("appendonly") == "yes", values.get("appendfsync")
    )


async def check_durability(redis: aioredis.Redis, durability: str) -> None:
    """Refuse a `durability` the server's persistence cannot give.

    Raises:
        DurabilityError: with the Redis setting to change.
        StoreUnavailableError: Redis cannot be reached.
    """
    if durability == "memory":
        return
    server = await read_persistence(redis)
    problem = durability_problem(durability, server)
    if problem is not None:
        raise DurabilityError(problem)
    logger.info(
        "durability %s on Redis %s (appendonly %s, appendfsync %s)",
        durability,
        ".".join(str(part) for part in server.version),
        "yes" if server.appendonly else "no",
        server.appendfsync or "unknown",
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
