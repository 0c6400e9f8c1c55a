"""Migrating a store to the current layout (`okra-sidecar migrate`), with every sidecar stopped.

Layout 1 kept an instance's keys under its own hash tag (`okra:{id}`) and the work, timer and
effects streams and the indexes under plain names; layout 2 puts an instance and its
partition's streams and indexes under the partition's tag (`okra:{p3}:...`). The partition of
an instance is the same in both (`crc32(id) % partitions`), so the streams keep their entries,
consumer groups and pending lists. Layout 1 counted instance limits in counters
(`okra:active`, `okra:active:wf:<workflow>`); each unfinished instance is admitted into its
limit scope's sets instead (store/limit_store.py), in the scope `migrate` is configured with.
Layout 2 kept worker tasks in one stream per service (`okra:tasks:<service>`), schedules
under their own tags (`okra:schedule:{<id>}`, `okra:schedules`, `okra:schedules:due`) and bulk
operations likewise (`okra:bulk:{<id>}`, `okra:bulks`, `okra:bulks:running`); layout 3 keeps
each task in its instance's partition (`okra:{p3}:tasks:<service>`), and every schedule key
under `{schedules}`, every bulk key under `{bulks}`, so that each script touches one slot.
The tasks are moved entry by entry (each a new entry, not yet handed out: a worker that held
one gets it again, at the attempt after the ones it had, and the old task id answers
TASK_MOVED); schedules and bulk operations are renamed.
Layout 4 adds a limit scope's `tracked` flag and an uncounted instance's `ulim` and `ulwf`
(store/limit_store.py), which layout 3 never wrote: from layout 3 only the version changes.
Layouts 1 and 2 ran on one primary only, where a key may be renamed into another slot. Every
step is idempotent: a migration cut short is run again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.commands.core import AsyncScript

from okra_sidecar.instances import FINISHED_STATUSES
from okra_sidecar.store.keys import LAYOUT_VERSION, TASK_DELIVERED_FIELD, WORKER_GROUP, RedisKeys
from okra_sidecar.store.layout import LayoutVersionError, legacy_markers
from okra_sidecar.store.replies import map_redis_errors, text

__all__ = ["MigrationReport", "migrate_store"]

logger = logging.getLogger(__name__)

INSTANCE_SUFFIXES = ("", ":history", ":inbox", ":signal-ids", ":delivered")
SCAN_BATCH = 500
_DELIVERED = TASK_DELIVERED_FIELD.encode()
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
    records: int = 0  # schedules and bulk operations


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
        version, recorded = await redis.hmget(keys.layout, ["version", "partitions"])
        rename = redis.register_script(RENAME_SCRIPT)
        if version is not None:
            found = int(text(version))
            if found > LAYOUT_VERSION:
                raise LayoutVersionError(found)
            if found == LAYOUT_VERSION:
                return MigrationReport(from_version=found)
            if found == 3:
                # Layout 4 only adds what layout 3 never wrote (a scope's `tracked` flag, an
                # uncounted instance's `ulim`): every scope starts uncounted, and the
                # reservations layout 3 made stay held until their instances finish.
                await _record(redis, keys)
                return MigrationReport(from_version=found)
            # Layout 2 recorded its partition count: the one its instances are spread over.
            keys = RedisKeys(prefix=prefix, partitions=int(text(recorded)), scope=scope)
            streams, records = await _from_layout_2(redis, keys, rename)
            await _record(redis, keys)
            report = MigrationReport(found, streams=streams, records=records)
            logger.info("store migrated to layout %d: %s", LAYOUT_VERSION, report)
            return report
        if not any([await redis.exists(marker) for marker in legacy_markers(prefix)]):
            await _record(redis, keys)
            return MigrationReport(from_version=LAYOUT_VERSION)
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
        task_streams, records = await _from_layout_2(redis, keys, rename)
        await _record(redis, keys)
    report = MigrationReport(
        1, instances=instances, indexes=indexes, streams=streams + task_streams, records=records
    )
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


async def _from_layout_2(
    redis: aioredis.Redis, keys: RedisKeys, rename: AsyncScript
) -> tuple[int, int]:
    """Layout 2's task streams, schedules and bulk operations under layout 3's names
    (layout 1 named them as layout 2 did); returns how many streams and records moved."""
    prefix = keys.prefix
    records = await _rename_records(
        redis,
        rename,
        [
            (f"{prefix}schedules", keys.schedules_all),
            (f"{prefix}schedules:due", keys.schedules_due),
        ],
        lambda schedule_id: [(f"{prefix}schedule:{{{schedule_id}}}", keys.schedule(schedule_id))],
    )
    records += await _rename_records(
        redis,
        rename,
        [(f"{prefix}bulks", keys.bulks), (f"{prefix}bulks:running", keys.bulks_running)],
        lambda op: [
            (f"{prefix}bulk:{{{op}}}{suffix}", f"{keys.bulk(op)}{suffix}")
            for suffix in ("", ":ids", ":items")
        ],
    )
    streams = 0
    async for raw_key in redis.scan_iter(match=f"{prefix}tasks:*", count=SCAN_BATCH):
        await _split_task_stream(redis, keys, text(raw_key))
        streams += 1
    return streams, records


async def _rename_records(
    redis: aioredis.Redis,
    rename: AsyncScript,
    sets: list[tuple[str, str]],
    record_keys: Callable[[str], list[tuple[str, str]]],
) -> int:
    """The sets renamed (the first lists every record by id), then each record's keys."""
    # The sets first (renamed only if the new ones do not exist yet), then every record
    # they list: a run cut short finds the ids in the new set.
    await rename(keys=[key for pair in sets for key in pair])
    ids: Any = await redis.zrange(sets[0][1], 0, -1)
    for raw in ids:
        await rename(keys=[key for pair in record_keys(text(raw)) for key in pair])
    return len(ids)


async def _split_task_stream(redis: aioredis.Redis, keys: RedisKeys, old: str) -> None:
    """A service's one task stream split into its partitions' streams, entry by entry (each
    XADD and XDEL in one transaction), then deleted."""
    service = old[len(f"{keys.prefix}tasks:") :]
    for stream in keys.all_tasks(service):
        try:
            await redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    while True:
        entries: Any = await redis.xrange(old, count=SCAN_BATCH)
        if not entries:
            break
        delivered = await _times_delivered(redis, old, entries[0][0], entries[-1][0])
        async with redis.pipeline(transaction=True) as pipe:
            for entry_id, fields in entries:
                partition = keys.partition(text(fields[b"i"]))
                # The new entry is handed out afresh: it carries how often the old one was,
                # so the worker's next attempt counts on from there.
                before = delivered.get(text(entry_id), 0) + int(fields.get(_DELIVERED, 0))
                if before:
                    fields = {**fields, _DELIVERED: str(before).encode()}
                pipe.xadd(keys.tasks(service, partition), fields)
                pipe.xdel(old, entry_id)
            await pipe.execute()
    await redis.delete(old)


async def _times_delivered(
    redis: aioredis.Redis, stream: str, first: bytes, last: bytes
) -> dict[str, int]:
    """How many times each pending entry of `stream` between two ids was handed to a worker
    (entries never handed out, or acknowledged, are not listed)."""
    try:
        pending: Any = await redis.xpending_range(stream, WORKER_GROUP, first, last, SCAN_BATCH)
    except redis_errors.ResponseError as exc:
        # A stream no worker ever polled has no group.
        if "NOGROUP" not in str(exc):
            raise
        return {}
    return {text(p["message_id"]): int(p["times_delivered"]) for p in pending}
