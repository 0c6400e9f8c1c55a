"""WorkStore: the engine's work streams (read, reclaimed, acknowledged), timers and gauges."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_errors

from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.base import StoreStats, WorkItem
from okra_sidecar.store.connections import StoreConnections
from okra_sidecar.store.keys import ENGINE_GROUP
from okra_sidecar.store.multiplexed import MultiplexedScript
from okra_sidecar.store.replies import map_redis_errors, text
from okra_sidecar.store.scripts import load_script
from okra_sidecar.store.streams import claim_partitions, read_partitions

if TYPE_CHECKING:
    from okra_sidecar.store.liveness import ConsumerLiveness

__all__ = ["SLOW_DEFINITION_MS", "WorkStore"]

# How long a workflow sends all its instances to the slow lane after one of them was moved.
SLOW_DEFINITION_MS = 10 * 60 * 1000


class WorkStore(StoreConnections):
    """Work items ("instance X needs a turn") through the consumer group `engine`."""

    _timers = MultiplexedScript(load_script("timers"))
    _mark_slow = MultiplexedScript(load_script("mark_slow"))

    async def ensure_groups(self) -> None:
        """Create the engine consumer group on every work stream (from the start, so no
        entry written before the group existed is skipped)."""
        with map_redis_errors():
            for stream in (*self.keys.all_work(), *self.keys.all_slow_work()):
                try:
                    await self.redis.xgroup_create(stream, ENGINE_GROUP, id="0", mkstream=True)
                except redis_errors.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    def _lane(self, slow: bool) -> tuple[list[str], dict[bytes, int]]:
        """A lane's streams, and each stream's partition by its name as Redis replies it."""
        if not slow:
            return self.keys.all_work(), self._stream_partition
        streams = self.keys.all_slow_work()
        return streams, {k.encode(): p for p, k in enumerate(streams)}

    async def read_work(
        self, consumer: str, *, count: int, block_ms: int, slow: bool = False
    ) -> list[WorkItem]:
        streams, partition_of = self._lane(slow)
        entries = await read_partitions(
            self._reader,
            ENGINE_GROUP,
            consumer,
            streams,
            partition_of,
            count=count,
            block_ms=block_ms,
            recreate_groups=self.ensure_groups,
        )
        return [_work_item(partition, eid, fields, slow) for partition, eid, fields in entries]

    async def claim_orphan_work(
        self,
        liveness: ConsumerLiveness,
        consumer: str,
        *,
        held: Collection[str],
        count: int,
        slow: bool = False,
    ) -> list[WorkItem]:
        """Work items of consumers without a heartbeat, and `consumer`'s own outside `held`
        (store/liveness.py)."""
        streams, _ = self._lane(slow)
        entries = await liveness.claim_orphans(
            ENGINE_GROUP, streams, consumer, held=held, count=count
        )
        return [_work_item(partition, eid, fields, slow) for partition, eid, fields in entries]

    async def claim_stale_work(
        self, consumer: str, *, min_idle_ms: int, count: int, slow: bool = False
    ) -> list[WorkItem]:
        """Take over entries another worker read but never acknowledged (it died)."""
        streams, _ = self._lane(slow)
        entries = await claim_partitions(
            self.hot,
            ENGINE_GROUP,
            consumer,
            streams,
            min_idle_ms=min_idle_ms,
            count=count,
        )
        return [_work_item(partition, eid, fields, slow) for partition, eid, fields in entries]

    async def ack_work(self, items: list[WorkItem]) -> None:
        if not items:
            return
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for item in items:
                    stream = self.keys.lane(item.partition, slow=item.slow)
                    pipe.xack(stream, ENGINE_GROUP, item.entry_id)
                    pipe.xdel(stream, item.entry_id)
                await pipe.execute()

    async def forward_to_slow_lane(self, items: list[WorkItem]) -> None:
        """Move regular work items to their partition's slow lane, each in one transaction
        (its two streams share the partition's slot), so none is lost or doubled."""
        with map_redis_errors():
            for item in items:
                stream = self.keys.work(item.partition)
                fields = {"i": item.instance_id}
                if item.due_ms is not None:
                    fields["d"] = str(item.due_ms)
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.xadd(self.keys.slow_work(item.partition), fields)  # type: ignore[arg-type]
                    pipe.xack(stream, ENGINE_GROUP, item.entry_id)
                    pipe.xdel(stream, item.entry_id)
                    await pipe.execute()

    async def mark_slow(self, instance_id: str, now_ms: int) -> None:
        """Send the instance's turns to the slow lane from now on (if it still exists), and for
        `SLOW_DEFINITION_MS` every instance of its workflow: the next ones are likely alike."""
        keys = self.keys
        with map_redis_errors():
            workflow_id = await self.hot.evalsha(
                self._mark_slow, keys=[keys.instance(instance_id)], args=[]
            )
            if workflow_id:
                # Another slot than the instance's (Redis Cluster): a command of its own.
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zadd(keys.slow_definitions, {text(workflow_id): now_ms})
                    pipe.zremrangebyscore(
                        keys.slow_definitions, "-inf", now_ms - SLOW_DEFINITION_MS
                    )
                    await pipe.execute()

    async def slow_definitions(self, now_ms: int) -> frozenset[str]:
        """The workflow ids whose instances go to the slow lane now."""
        with map_redis_errors():
            ids: Any = await self.redis.zrangebyscore(
                self.keys.slow_definitions, now_ms - SLOW_DEFINITION_MS, "+inf"
            )
        return frozenset(text(i) for i in ids)

    async def mark_proven(self, workflow_id: str) -> None:
        """Let the regular engine processes take the workflow's turns: they proved fast."""
        with map_redis_errors():
            await self.redis.sadd(self.keys.proven_definitions, workflow_id)

    async def proven_definitions(self) -> frozenset[str]:
        """The workflow ids whose turns the regular engine processes take (the others are on
        probation in the slow lane)."""
        with map_redis_errors():
            ids: Any = await self.redis.smembers(self.keys.proven_definitions)
        return frozenset(text(i) for i in ids)

    async def fire_timers(self, now_ms: int, *, limit: int) -> int:
        keys = self.keys
        pairs = [[keys.timers(p), keys.work(p)] for p in range(keys.partitions)]
        with map_redis_errors():
            if self.one_node:
                # Every partition on this node: one call for all of them, each tick.
                everything = [key for pair in pairs for key in pair]
                return int(
                    await self.hot.evalsha(self._timers, keys=everything, args=[now_ms, limit])
                )
            # One call per partition (one slot each), sent together on the multiplexed connection.
            moved = await asyncio.gather(
                *(self.hot.evalsha(self._timers, keys=pair, args=[now_ms, limit]) for pair in pairs)
            )
        return sum(int(m) for m in moved)

    async def stats(self) -> StoreStats:
        """Instances running and waiting, and each work stream's unfinished entries.

        Acknowledged work entries are deleted, so a stream's length is its backlog and its
        first entry, whose id starts with the time it was written, is the oldest one.
        """
        keys = self.keys
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for partition in range(keys.partitions):
                    pipe.zcard(keys.index_status(partition, InstanceStatus.RUNNING))
                    pipe.zcard(keys.index_status(partition, InstanceStatus.WAITING))
                    pipe.xlen(keys.work(partition))
                    pipe.xrange(keys.work(partition), count=1)
                replies = await pipe.execute()
        running = waiting = 0
        backlog: dict[int, int] = {}
        oldest: dict[int, int] = {}
        for partition in range(keys.partitions):
            in_running, in_waiting, length, first = replies[4 * partition : 4 * partition + 4]
            running += int(in_running)
            waiting += int(in_waiting)
            backlog[partition] = int(length)
            if first:
                oldest[partition] = int(text(first[0][0]).partition("-")[0])
        return StoreStats(running=running, waiting=waiting, backlog=backlog, oldest_ms=oldest)


def _work_item(
    partition: int, entry_id: bytes | str, fields: dict[bytes, bytes], slow: bool = False
) -> WorkItem:
    due = fields.get(b"d")
    return WorkItem(
        partition, text(entry_id), text(fields[b"i"]), None if due is None else int(due), slow
    )
