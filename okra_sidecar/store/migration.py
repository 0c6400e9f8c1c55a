"""Migrating a store to the current layout (`okra-sidecar migrate`), with every sidecar stopped.

Layout 1 kept an instance's keys under its own hash tag (`okra:{id}`) and the work, timer and
effects streams and the indexes under plain names; layout 2 puts an instance and its
partition's streams and indexes under the partition's tag (`okra:{p3}:...`). The partition of
an instance is the same in both (`crc32(id) % partitions`), so the streams keep their entries,
consumer groups and pending lists. Layout 1 counted instance limits in counters
(`okra:active`, `okra:active:wf:<workflow>`); each unfinished instance is admitted into its
limit scope's sets instead (store/limit_store.py), in the scope `migrate` is configured with.
Layout 1 ran on one primary only, where a key may be renamed into another slot. Every step is
idempotent: a migration cut short is run again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from okra_sidecar.instances import FINISHED_STATUSES
from okra_sidecar.store.keys import LAYOUT_VERSION, RedisKeys
from okra_sidecar.store.layout import LayoutVersionError, legacy_markers
from okra_sidecar.store.replies import map_redis_errors, text

__all__ = ["MigrationReport", "migrate_store"]

logger = logging.getLogger(__name__)

INSTANCE_SUFFIXES = ("", ":history", ":inbox", ":signal-ids", ":delivered")
SCAN_BATCH = 500
FINISHED_VALUES = frozenset(s.value for s in FINISHED_STATUSES)
# Renames a key only if it exists and its new name does not: running twice changes nothing.
RENAME_SCRIPT = """
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('EXISTS', KEYS[i + 1]) == 0 then
    redis.call('RENAME', KEYS[i], KEYS[i + 1])
  end
end
return 1
"""


@dataclass(frozen=True)
class MigrationReport:
    """What a migration did: the layout it found, and how much it moved."""

    from_version: int
    instances: int = 0
    indexes: int = 0
    streams: int = 0


async def migrate_store(
    redis: aioredis.Redis, *, prefix: str, partitions: int, scope: str = ""
) -> MigrationReport:
    """Bring the store under `prefix` to LAYOUT_VERSION; `partitions` must be the count the
    layout 1 sidecars ran with (their `partitions` setting), `scope` their serviceNamespace.

    Raises:
        LayoutVersionError: the store is in a newer layout than this sidecar knows.
    """
    keys = RedisKeys(prefix=prefix, partitions=partitions, scope=scope)
    with map_redis_errors():
        version = await redis.hget(keys.layout, "version")
        if version is not None:
            found = int(text(version))
            if found > LAYOUT_VERSION:
                raise LayoutVersionError(found)
            return MigrationReport(from_version=found)
        if not any([await redis.exists(marker) for marker in legacy_markers(prefix)]):
            await _record(redis, keys)
            return MigrationReport(from_version=LAYOUT_VERSION)
        rename = redis.register_script(RENAME_SCRIPT)
        instances = await _move_instances(redis, keys, rename)
        indexes = await _move_indexes(redis, keys) + await _move_subscriptions(redis, keys)
        streams = 0
        for partition in range(partitions):
            for old, new in [
                (f"{prefix}work:{partition}", keys.work(partition)),
                (f"{prefix}timers:{partition}", keys.timers(partition)),
                (f"{prefix}effects:{partition}", keys.effects(partition)),
            ]:
                if await redis.exists(old):
                    await rename(keys=[old, new])
                    streams += 1
        await redis.delete(f"{prefix}active")
        async for counter in redis.scan_iter(match=f"{prefix}active:wf:*", count=SCAN_BATCH):
            await redis.delete(counter)
        await _record(redis, keys)
    report = MigrationReport(1, instances=instances, indexes=indexes, streams=streams)
    logger.info("store migrated to layout %d: %s", LAYOUT_VERSION, report)
    return report


async def _record(redis: aioredis.Redis, keys: RedisKeys) -> None:
    await redis.hset(
        keys.layout, mapping={"partitions": keys.partitions, "version": LAYOUT_VERSION}
    )


async def _move_instances(redis: aioredis.Redis, keys: RedisKeys, rename: AsyncScript) -> int:
    """Every instance in the old all-instances index, its keys renamed under its partition."""
    moved = 0
    old_index = f"{keys.prefix}idx:all"
    async for raw in redis.zscan_iter(old_index, count=SCAN_BATCH):
        member = text(raw[0])
        instance_id = member.split(":", 1)[1]
        pairs: list[str] = []
        for suffix in INSTANCE_SUFFIXES:
            old = f"{keys.prefix}{{{instance_id}}}{suffix}"
            pairs += [old, f"{keys.instance(instance_id)}{suffix}"]
        await rename(keys=pairs)
        # Layout 1 kept a parent's child runs in a set of its own; layout 2 indexes each
        # child under its parent in the child's partition.
        parent, ikey, status, created = await redis.hmget(
            keys.instance(instance_id), ["parent", "ikey", "status", "created"]
        )
        if parent and ikey:
            partition = keys.partition(instance_id)
            await redis.zadd(keys.index_parent(partition, text(parent)), {text(ikey): 0})
        await redis.delete(f"{keys.prefix}{{{instance_id}}}:children")
        if status is not None and text(status) not in FINISHED_VALUES:
            await _admit(redis, keys, instance_id, int(text(created) or 0) * 1000)
        moved += 1
    return moved


async def _admit(redis: aioredis.Redis, keys: RedisKeys, instance_id: str, score: int) -> None:
    """An unfinished instance counted as reserve.lua would have (its creation time as the
    reservation's), in place of layout 1's counters (`wfc` named the one it held)."""
    record = keys.instance(instance_id)
    workflow_key = ".".join(text(await redis.hget(record, "wf")).split(".")[:2])
    await redis.zadd(keys.limit_active(keys.scope), {instance_id: score})
    await redis.zadd(keys.limit_workflow(keys.scope, workflow_key), {instance_id: score})
    await redis.hset(keys.limit_held(keys.scope), instance_id, workflow_key)
    await redis.hset(record, mapping={"lim": keys.scope, "lwf": workflow_key})
    await redis.hdel(record, "wfc")


async def _move_subscriptions(redis: aioredis.Redis, keys: RedisKeys) -> int:
    """Each old subscription set split into one per partition."""
    moved = 0
    async for raw_key in redis.scan_iter(match=f"{keys.prefix}subs:*", count=SCAN_BATCH):
        old = text(raw_key)
        event_type = old[len(keys.prefix) + len("subs:") :]
        async for raw in redis.sscan_iter(old, count=SCAN_BATCH):
            instance_id = text(raw)
            await redis.sadd(keys.subscribers(keys.partition(instance_id), event_type), instance_id)
        await redis.delete(old)
        moved += 1
    return moved


async def _move_indexes(redis: aioredis.Redis, keys: RedisKeys) -> int:
    """Each old index split into one per partition, with the same members and scores."""
    moved = 0
    async for raw_key in redis.scan_iter(match=f"{keys.prefix}idx:*", count=SCAN_BATCH):
        old = text(raw_key)
        rest = old[len(keys.prefix) :]
        async for raw, score in redis.zscan_iter(old, count=SCAN_BATCH):
            member = text(raw)
            partition = keys.partition(member.split(":", 1)[1])
            await redis.zadd(f"{keys.tag(partition)}:{rest}", {member: score})
        await redis.delete(old)
        moved += 1
    return moved
