"""WorkStore: the engine's work streams (read, reclaimed, acknowledged), timers and gauges."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import TYPE_CHECKING

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

__all__ = ["WorkStore"]


class WorkStore(StoreConnections):
    """Work items ("instance X needs a turn") through the consumer group `engine`."""

    _timers = MultiplexedScript(load_script("timers"))

    async def ensure_groups(self) -> None:
        """Create the engine consumer group on every work stream (from the start, so no
        entry written before the group existed is skipped)."""
        with map_redis_errors():
            for stream in self.keys.all_work():
                try:
                    await self.redis.xgroup_create(stream, ENGINE_GROUP, id="0", mkstream=True)
                except redis_errors.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    async def read_work(self, consumer: str, *, count: int, block_ms: int) -> list[WorkItem]:
        entries = await read_partitions(
            self._reader,
            ENGINE_GROUP,
            consumer,
            self.keys.all_work(),
            self._stream_partition,
            count=count,
            block_ms=block_ms,
            recreate_groups=self.ensure_groups,
        )
        return [_work_item(partition, eid, fields) for partition, eid, fields in entries]

    async def claim_orphan_work(
        self, liveness: ConsumerLiveness, consumer: str, *, held: Collection[str], count: int
    ) -> list[WorkItem]:
        """Work items of consumers without a heartbeat, and `consumer`'s own outside `held`
        (store/liveness.py)."""
        entries = await liveness.claim_orphans(
            ENGINE_GROUP, self.keys.all_work(), consumer, held=held, count=count
        )
        return [_work_item(partition, eid, fields) for partition, eid, fields in entries]

    async def claim_stale_work(
        self, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[WorkItem]:
        """Take over entries another worker read but never acknowledged (it died)."""
        entries = await claim_partitions(
            self.redis,
            ENGINE_GROUP,
            consumer,
            self.keys.all_work(),
            min_idle_ms=min_idle_ms,
            count=count,
        )
        return [_work_item(partition, eid, fields) for partition, eid, fields in entries]

    async def ack_work(self, items: list[WorkItem]) -> None:
        if not items:
            return
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for item in items:
                    stream = self.keys.work(item.partition)
                    pipe.xack(stream, ENGINE_GROUP, item.entry_id)
                    pipe.xdel(stream, item.entry_id)
                await pipe.execute()

    async def fire_timers(self, now_ms: int, *, limit: int) -> int:
        keys = self.keys
        # One call per partition (one slot each), sent together on the multiplexed connection.
        with map_redis_errors():
            moved = await asyncio.gather(
                *(
                    self.hot.evalsha(
                        self._timers, keys=[keys.timers(p), keys.work(p)], args=[now_ms, limit]
                    )
                    for p in range(keys.partitions)
                )
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


def _work_item(partition: int, entry_id: bytes | str, fields: dict[bytes, bytes]) -> WorkItem:
    due = fields.get(b"d")
    return WorkItem(
        partition, text(entry_id), text(fields[b"i"]), None if due is None else int(due)
    )
