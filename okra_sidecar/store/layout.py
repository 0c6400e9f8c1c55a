"""The store layout recorded in Redis: its version and partition count, checked at start."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from okra_sidecar.errors import StartupError
from okra_sidecar.store.keys import LAYOUT_VERSION, RedisKeys
from okra_sidecar.store.replies import map_redis_errors, text

__all__ = ["LayoutVersionError", "legacy_markers", "open_layout"]

logger = logging.getLogger(__name__)


class LayoutVersionError(StartupError):
    """Redis holds a store written in a layout this sidecar does not read."""

    def __init__(self, found: int) -> None:
        super().__init__(
            f"this Redis holds an okra-sidecar store in layout version {found}, and this "
            f"sidecar reads layout version {LAYOUT_VERSION}; stop every sidecar on it and run "
            "`okra-sidecar migrate` with the same settings to convert the store"
            if found < LAYOUT_VERSION
            else f"this Redis holds an okra-sidecar store in layout version {found}, written "
            f"by a newer sidecar; this one reads layout version {LAYOUT_VERSION} and "
            "`okra-sidecar migrate` cannot go back: run the newer version"
        )
        self.found = found


def legacy_markers(prefix: str) -> list[str]:
    """Keys only layout 1 (one primary, before partitions had hash tags) wrote."""
    return [f"{prefix}idx:all", f"{prefix}work:0"]


async def open_layout(redis: aioredis.Redis, *, prefix: str, partitions: int) -> RedisKeys:
    """The keys of the store under `prefix`, recording the layout if the store is new.

    The partition count is fixed when the store is first used: a sidecar configured with
    another count uses the recorded one (and says so), since moving instances between
    partitions would need a migration.

    Raises:
        LayoutVersionError: the store is in another layout version.
    """
    key = RedisKeys(prefix=prefix).layout
    with map_redis_errors():
        version, recorded = await redis.hmget(key, ["version", "partitions"])
        if version is None:
            for marker in legacy_markers(prefix):
                # One EXISTS per key: on a Cluster the markers live in different slots.
                if await redis.exists(marker):
                    raise LayoutVersionError(1)
            # The count first: a sidecar that sees the version sees the count too. Two
            # sidecars creating the store at once both read back the first one's.
            await redis.hsetnx(key, "partitions", partitions)
            await redis.hsetnx(key, "version", LAYOUT_VERSION)
            version, recorded = await redis.hmget(key, ["version", "partitions"])
    if int(text(version)) != LAYOUT_VERSION:
        raise LayoutVersionError(int(text(version)))
    count = int(text(recorded))
    if count != partitions:
        logger.warning(
            "the store was created with %d partitions; using them, not the %d configured",
            count,
            partitions,
        )
    return RedisKeys(prefix=prefix, partitions=count)
