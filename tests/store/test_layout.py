"""The store layout: recorded when a store is new, refused when it is another version."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from okra_sidecar.errors import StartupError
from okra_sidecar.store.keys import LAYOUT_VERSION
from okra_sidecar.store.layout import LayoutVersionError, open_layout
from tests.helpers import make_settings, running_sidecar


async def test_a_new_store_records_its_layout_and_keeps_its_partition_count(
    redis: Redis,
) -> None:
    keys = await open_layout(redis, prefix="okra:", partitions=4)
    assert keys.partitions == 4
    assert await redis.hgetall("okra:layout") == {
        b"version": str(LAYOUT_VERSION).encode(),
        b"partitions": b"4",
    }
    # A sidecar configured with another count uses the store's: instances stay where they are.
    assert (await open_layout(redis, prefix="okra:", partitions=16)).partitions == 4


async def test_a_layout_1_store_is_refused_naming_both_versions_and_migrate(
    redis: Redis,
) -> None:
    await redis.zadd("okra:idx:all", {"00000000000000001:some-id": 0})
    with pytest.raises(LayoutVersionError) as refused:
        await open_layout(redis, prefix="okra:", partitions=8)
    message = str(refused.value)
    assert "layout version 1" in message and f"layout version {LAYOUT_VERSION}" in message
    assert "`okra-sidecar migrate`" in message
    assert await redis.exists("okra:layout") == 0


async def test_a_newer_layout_is_refused_without_offering_a_migration(redis: Redis) -> None:
    await redis.hset("okra:layout", mapping={"version": LAYOUT_VERSION + 1, "partitions": 8})
    with pytest.raises(LayoutVersionError, match=f"layout version {LAYOUT_VERSION + 1}"):
        await open_layout(redis, prefix="okra:", partitions=8)


async def test_a_sidecar_does_not_start_on_a_store_of_another_layout(
    redis: Redis, redis_url: str
) -> None:
    await redis.xadd("okra:work:0", {"i": "x"})
    with pytest.raises(StartupError, match="okra-sidecar migrate"):
        async with running_sidecar(make_settings(redis_url)):
            pass
    assert await redis.exists("okra:layout") == 0
