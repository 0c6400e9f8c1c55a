"""RedisOutboxStore: what a partition's scripts hand to other slots, for the relay.

A script may only touch its own Redis Cluster slot, so a turn or a cancel that must reach
another instance (a finished child's outcome for its parent) or the shared events stream
writes an entry to its partition's outbox instead, in the same atomic step. The relay in every
sidecar reads the outboxes through one consumer group and applies each entry in the slot it
is for; deliveries are de-duplicated per instance, so an entry applied twice (its relay died
before acknowledging it) changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from okra_sidecar.store.cluster_client import stream_commands
from okra_sidecar.store.jsontext import loads
from okra_sidecar.store.keys import RELAY_GROUP, RedisKeys
from okra_sidecar.store.liveness import ConsumerLiveness
from okra_sidecar.store.replies import map_redis_errors, text
from okra_sidecar.store.streams import claim_partitions, read_partitions

__all__ = ["DELIVER", "PUBLISH", "RELEASE", "RESERVE", "OutboxEntry", "RedisOutboxStore"]

# Entry kinds, field `k`: an event for one instance's inbox, one for the events stream, a new
# instance's admission to record in its limit scope (a Run no limit applied to, on a Cluster),
# or a finished instance's admission to give back there (store/limit_store.py).
DELIVER = "deliver"
PUBLISH = "publish"
RESERVE = "reserve"
RELEASE = "release"


@dataclass(frozen=True)
class OutboxEntry:
    """One outbox entry: its partition and id, its kind, and what it hands over."""

    partition: int
    entry_id: str
    kind: str
    event: dict[str, Any]
    instance_id: str = ""  # the instance a DELIVER, RESERVE or RELEASE entry is for
    dedup: str = ""  # its dedup id in that instance's `delivered` set
    scope: str = ""  # a RESERVE or RELEASE entry's limit scope and workflow key
    workflow_key: str = ""


class RedisOutboxStore:
    """The partitions' outbox streams, read through the consumer group `relay`."""

    def __init__(self, *, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        # Replies raw, for read_partitions and the acknowledgements (on a Cluster, multiplexed
        # connections of the client's, closed with it).
        self._streams = stream_commands(redis)
        self._partition_of = {k.encode(): p for p, k in enumerate(keys.all_outboxes())}

    async def ensure_groups(self) -> None:
        with map_redis_errors():
            for stream in self.keys.all_outboxes():
                try:
                    await self.redis.xgroup_create(stream, RELAY_GROUP, id="0", mkstream=True)
                except redis_errors.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    async def read(self, consumer: str, *, count: int, block_ms: int) -> list[OutboxEntry]:
        entries = await read_partitions(
            self._streams,
            RELAY_GROUP,
            consumer,
            self.keys.all_outboxes(),
            self._partition_of,
            count=count,
            block_ms=block_ms,
            recreate_groups=self.ensure_groups,
        )
        return [_entry(partition, eid, fields) for partition, eid, fields in entries]

    async def claim_stale(
        self, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[OutboxEntry]:
        """Entries another relay read but never acknowledged (it stopped)."""
        entries = await claim_partitions(
            self._streams,
            RELAY_GROUP,
            consumer,
            self.keys.all_outboxes(),
            min_idle_ms=min_idle_ms,
            count=count,
        )
        return [_entry(partition, eid, fields) for partition, eid, fields in entries]

    async def claim_orphans(
        self, liveness: ConsumerLiveness, consumer: str, *, held: Collection[str], count: int
    ) -> list[OutboxEntry]:
        """Entries of relays without a heartbeat, and `consumer`'s own outside `held`
        (store/liveness.py): a dead sidecar's releases are applied within seconds."""
        entries = await liveness.claim_orphans(
            RELAY_GROUP, self.keys.all_outboxes(), consumer, held=held, count=count
        )
        return [_entry(partition, eid, fields) for partition, eid, fields in entries]

    async def ack(self, entries: Sequence[OutboxEntry]) -> None:
        """Acknowledge and delete `entries`: one XACK and one XDEL per partition, each naming
        all of its ids, rather than two commands per entry (on a Cluster each partition's
        pair goes to its master, the masters side by side)."""
        if not entries:
            return
        ids: dict[int, list[str]] = {}
        for entry in entries:
            ids.setdefault(entry.partition, []).append(entry.entry_id)
        commands: list[tuple[str, ...]] = []
        for partition, entry_ids in ids.items():
            stream = self.keys.outbox(partition)
            commands += [("XACK", stream, RELAY_GROUP, *entry_ids), ("XDEL", stream, *entry_ids)]
        with map_redis_errors():
            await self._streams.pipeline(commands)


def _entry(partition: int, entry_id: Any, fields: dict[bytes, bytes]) -> OutboxEntry:
    return OutboxEntry(
        partition=partition,
        entry_id=text(entry_id),
        kind=text(fields.get(b"k")),
        event=loads(fields[b"e"]) if b"e" in fields else {},
        instance_id=text(fields.get(b"i")),
        dedup=text(fields.get(b"d")),
        scope=text(fields.get(b"s")),
        workflow_key=text(fields.get(b"w")),
    )
