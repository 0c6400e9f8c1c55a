"""RedisRetentionStore: purges instances finished before a cutoff, a small batch at a time."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.records import INDEX_FIELDS, instance_indexes
from okra_sidecar.store.replies import map_redis_errors
from okra_sidecar.store.replies import text as _text
from okra_sidecar.store.scripts import load_script


class RedisRetentionStore:
    """Reads the finished-time index (written by the commit and cancel scripts)."""

    def __init__(self, *, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._purge = redis.register_script(load_script("purge"))

    async def purge_finished(self, *, finished_before_ms: int, limit: int) -> int:
        """Purge up to `limit` instances finished at or before the cutoff; returns how many.

        Each instance goes in its own script call (in its partition's slot), so no call holds
        Redis for long.
        """
        purged = 0
        for partition in range(self.keys.partitions):
            if purged >= limit:
                break
            purged += await self._purge_partition(partition, finished_before_ms, limit - purged)
        return purged

    async def _purge_partition(self, partition: int, finished_before_ms: int, limit: int) -> int:
        keys = self.keys
        finished = keys.index_finished(partition)
        with map_redis_errors():
            members: Any = await self.redis.zrangebyscore(
                finished, "-inf", finished_before_ms, start=0, num=limit
            )
            if not members:
                return 0
            ids = [_text(m).split(":", 1)[1] for m in members]
            async with self.redis.pipeline(transaction=False) as pipe:
                for instance_id in ids:
                    pipe.hmget(keys.instance(instance_id), list(INDEX_FIELDS))
                rows = await pipe.execute()
            try:
                results = await self._purge_batch(partition, members, ids, rows, finished_before_ms)
            except redis_errors.NoScriptError:
                # A Cluster's pipeline does not load scripts (a single Redis's does): load
                # it on every master, once, and purge the batch again (purging is idempotent).
                await self.redis.script_load(self._purge.script)
                results = await self._purge_batch(partition, members, ids, rows, finished_before_ms)
        return sum(int(r) for r in results)

    async def _purge_batch(
        self,
        partition: int,
        members: list[Any],
        ids: list[str],
        rows: list[Any],
        finished_before_ms: int,
    ) -> list[Any]:
        finished = self.keys.index_finished(partition)
        async with self.redis.pipeline(transaction=False) as pipe:
            for member, instance_id, row in zip(members, ids, rows, strict=True):
                instance_keys = self.keys.instance_keys(instance_id)
                # A script called on a pipeline is loaded (if needed) when it executes.
                await self._purge(
                    keys=[finished, *instance_keys, *instance_indexes(self.keys, partition, row)],
                    args=[_text(member), finished_before_ms, len(instance_keys)],
                    client=pipe,
                )
            return list(await pipe.execute())
