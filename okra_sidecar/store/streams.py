"""Reading partitioned streams through consumer groups: new entries, and a dead reader's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from redis import exceptions as redis_errors

from okra_sidecar.store.commands import HotCommands
from okra_sidecar.store.replies import map_redis_errors, pairs

__all__ = ["PartitionEntry", "claim_partitions", "read_partitions"]

# A stream entry of a partitioned stream: its partition, entry id and fields.
PartitionEntry = tuple[int, Any, dict[bytes, bytes]]


async def read_partitions(
    commands: HotCommands,
    group: str,
    consumer: str,
    streams: Sequence[str],
    partition_of: Mapping[bytes, int],
    *,
    count: int,
    block_ms: int,
    recreate_groups: Callable[[], Awaitable[None]],
) -> list[PartitionEntry]:
    """New entries of one stream per partition for `consumer` of `group`.

    `partition_of` maps each stream's encoded name to its partition. Without the group (Redis
    lost its data: restarted without persistence) this awaits `recreate_groups` and reads none.
    """
    with map_redis_errors():
        try:
            reply: Any = await commands.execute(
                *("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "BLOCK", block_ms),
                *("STREAMS", *streams, *(">" for _ in streams)),
            )
        except redis_errors.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await recreate_groups()
            return []
    # The raw reply: [[stream, [[id, [field, value, ...]], ...]], ...] in RESP2, a map of
    # stream to entries in RESP3 (redis-py's pool); a deleted entry has no fields.
    streams_read = reply.items() if isinstance(reply, dict) else reply or []
    return [
        (partition_of[stream], eid, pairs(fields))
        for stream, entries in streams_read
        for eid, fields in entries
        if fields
    ]


async def claim_partitions(
    commands: HotCommands,
    group: str,
    consumer: str,
    streams: Sequence[str],
    *,
    min_idle_ms: int,
    count: int,
) -> list[PartitionEntry]:
    """Entries of one stream per partition (the index) that another consumer of `group` read
    but left unacknowledged for `min_idle_ms` (it stopped); they go to `consumer`.

    One XAUTOCLAIM per stream, all in one pipeline: one round trip on a single Redis, one per
    master on a Cluster, rather than one per partition.
    """
    with map_redis_errors():
        replies = await commands.pipeline(
            [
                ("XAUTOCLAIM", stream, group, consumer, min_idle_ms, "0-0", "COUNT", count)
                for stream in streams
            ]
        )
    # Each reply: [next id, [[id, [field, value, ...]], ...], deleted ids]; an entry deleted
    # meanwhile has no fields.
    return [
        (partition, eid, pairs(fields))
        for partition, reply in enumerate(replies)
        for eid, fields in reply[1]
        if fields
    ]
