"""Remove the keys a benchmark run left in an external Redis."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

SCAN_BATCH = 1000


async def delete_prefixed_keys(url: str, prefix: str) -> int:
    """UNLINK every key under `prefix`; returns how many went, or -1 if Redis failed."""
    client = aioredis.Redis.from_url(url)
    removed = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=SCAN_BATCH):
            batch.append(key)
            if len(batch) >= SCAN_BATCH:
                removed += await client.unlink(*batch)
                batch = []
        if batch:
            removed += await client.unlink(*batch)
    except (RedisError, OSError):
        return -1
    finally:
        await client.aclose()
    return removed
