"""ConsumerLiveness: stream consumers' heartbeats, and taking over the work of dead ones.

A consumer that dies (its sidecar or engine process SIGKILLed) leaves what it read pending in
its consumer group; `XAUTOCLAIM` hands such entries to another consumer only once they have
been idle for `claimIdleMs`, which must be long enough never to take work a live consumer is
still doing. A heartbeat says more: every process refreshes one key per consumer name, with
an expiry a few beats long. Entries pending for a consumer without a heartbeat are taken over
as soon as they have been idle for that expiry, since their owner stopped beating at least that
long ago. A consumer also takes back its own pending entries that it is not working on (the
reply to its read was lost), again only once they have been idle that long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from typing import Any

import redis.asyncio as aioredis

from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.store.cluster_client import is_cluster_client, stream_commands
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.multiplexed import Arg, MultiplexedScript
from okra_sidecar.store.replies import map_redis_errors, pairs, text
from okra_sidecar.store.scripts import load_script
from okra_sidecar.store.streams import PartitionEntry
from okra_sidecar.tasks import cancel_and_wait
from okra_sidecar.telemetry.repeats import RepeatedWarnings

__all__ = ["ConsumerHeartbeat", "ConsumerLiveness"]

logger = logging.getLogger(__name__)
# A failover fails each attempt for seconds: a line per kind every few seconds.
_outages = RepeatedWarnings(logger)

ALIVE = b"1"
# Written over a consumer's heartbeat by whoever saw its process die (an engine child's parent):
# its entries can be taken at once, with no idle time to wait out.
DEAD = b"0"
DEAD_MARK_MS = 60_000
# A dead consumer with nothing pending is removed from its group once idle this long, which
# keeps XINFO CONSUMERS short across restarts (a consumer reading again is simply re-created).
FORGET_IDLE_MS = 60_000
# On a single Redis a look skips empty streams, but every stream is looked at this often, so
# that consumers with nothing pending there are still forgotten.
FULL_LOOK_S = FORGET_IDLE_MS / 2000


class ConsumerLiveness:
    """Heartbeats of consumer names and the claims they allow, on one Redis."""

    _owners_script = MultiplexedScript(load_script("orphan_owners"))

    def __init__(self, *, redis: aioredis.Redis, keys: RedisKeys, ttl_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = ttl_ms
        # On a single Redis one script call looks at all of a group's streams (orphan_owners).
        self._one_node = not is_cluster_client(redis)
        # Replies raw; on a Cluster, the multiplexed connections (one per master) rather
        # than redis-py's RedisCluster, which spends several times the CPU per command.
        self._hot = stream_commands(redis)
        self._full_look_at: dict[str, float] = {}  # by group: when every stream was last seen

    async def beat(self, consumer: str) -> None:
        """Say `consumer` is alive for another `ttl_ms`. Call before its first read."""
        with map_redis_errors():
            await self.redis.set(self.keys.consumer(consumer), ALIVE, px=self.ttl_ms)

    async def forget(self, consumer: str) -> None:
        """Say `consumer` stopped: what it left pending is taken once idle for `ttl_ms`."""
        with map_redis_errors():
            await self.redis.delete(self.keys.consumer(consumer))

    async def mark_dead(self, consumer: str) -> None:
        """Say `consumer`'s process is known to be dead: what it left is taken at once."""
        with map_redis_errors():
            await self.redis.set(self.keys.consumer(consumer), DEAD, px=DEAD_MARK_MS)

    async def claim_orphans(
        self,
        group: str,
        streams: Sequence[str],
        consumer: str,
        *,
        held: Collection[str],
        count: int,
    ) -> list[PartitionEntry]:
        """Give `consumer` what dead consumers of `group` left pending in `streams` (one per
        partition, by index), and its own pending entries outside `held`, up to `count` per
        stream and owner; each only once idle for `ttl_ms`."""
        with map_redis_errors():
            owners = await self._owners(group, streams)
            if not owners:
                return []
            names = sorted(owners)
            beats = await self._hot.pipeline([("GET", self.keys.consumer(n)) for n in names])
            alive = dict(zip(names, beats, strict=True))
            # (stream, partition, owner, min idle ms) of every owner's pending entries to
            # take, each owner's consumers with nothing pending but long idle to forget.
            takes: list[tuple[str, int, str, int]] = []
            for name in names:
                if name != consumer and alive[name] == ALIVE:
                    continue
                # Known dead: no idle time to wait out (its process cannot touch them again).
                min_idle_ms = 0 if alive[name] == DEAD else self.ttl_ms
                for partition, pending, idle_ms in owners[name]:
                    stream = streams[partition]
                    if pending:
                        takes.append((stream, partition, name, min_idle_ms))
                    elif name != consumer and idle_ms >= FORGET_IDLE_MS:
                        await self._hot.execute("XGROUP", "DELCONSUMER", stream, group, name)
            if not takes:
                return []
            return await self._claim(group, consumer, takes, held, count)

    async def _owners(
        self, group: str, streams: Sequence[str]
    ) -> dict[str, list[tuple[int, int, int]]]:
        """Consumer name -> (partition, pending count, idle ms) for each stream it is in where
        it has entries pending or has been idle for FORGET_IDLE_MS (the others need nothing).

        One orphan_owners.lua call for every stream on a single Redis; on a Cluster, where a
        script may touch one slot only, one per stream, the calls side by side (each
        master's in one write on its connection)."""
        now = time.monotonic()
        full = now - self._full_look_at.get(group, 0.0) >= FULL_LOOK_S
        if full:
            self._full_look_at[group] = now
        args = [group, "1" if full else "0", FORGET_IDLE_MS]
        if self._one_node:
            looks = [(0, await self._hot.evalsha(self._owners_script, streams, args))]
        else:
            replies = await asyncio.gather(
                *(self._hot.evalsha(self._owners_script, [stream], args) for stream in streams)
            )
            looks = list(enumerate(replies))
        owners: dict[str, list[tuple[int, int, int]]] = {}
        for first, reply in looks:
            for i in range(0, len(reply), 4):
                partition, name, pending, idle = reply[i : i + 4]
                owners.setdefault(text(name), []).append(
                    (first + int(partition), int(pending), int(idle))
                )
        return owners

    async def _claim(
        self,
        group: str,
        consumer: str,
        takes: Sequence[tuple[str, int, str, int]],
        held: Collection[str],
        count: int,
    ) -> list[PartitionEntry]:
        """XPENDING for every (stream, owner) in `takes`, in one pipeline, then XCLAIM of
        what was found idle long enough, in another (on a Cluster, each master's share in
        one write)."""
        pending: list[Any] = await self._hot.pipeline(
            [
                ("XPENDING", stream, group, "IDLE", min_idle_ms, "-", "+", count, owner)
                for stream, _, owner, min_idle_ms in takes
            ]
        )
        claims: list[tuple[int, tuple[Arg, ...]]] = []
        for (stream, partition, owner, min_idle_ms), entries in zip(takes, pending, strict=True):
            # Each entry: [id, consumer, idle ms, deliveries].
            ids = [text(entry[0]) for entry in entries]
            if owner == consumer:
                ids = [eid for eid in ids if eid not in held]
            if ids:
                # XCLAIM checks the idle time again, atomically: an entry its owner touched
                # since XPENDING stays with it.
                claims.append((partition, ("XCLAIM", stream, group, consumer, min_idle_ms, *ids)))
        if not claims:
            return []
        claimed: list[Any] = await self._hot.pipeline([command for _, command in claims])
        return [
            (partition, eid, pairs(fields))
            for (partition, _), entries in zip(claims, claimed, strict=True)
            for eid, fields in entries
            if fields
        ]


class ConsumerHeartbeat:
    """Keeps one consumer name's heartbeat alive while its process runs.

    It beats three times per expiry, so one late beat (a slow Redis, a busy loop) does not
    make a live consumer look dead; `stop()` removes the key, so a process that stops in good
    order leaves nothing to wait for.
    """

    def __init__(self, liveness: ConsumerLiveness, consumer: str) -> None:
        self.liveness = liveness
        self._consumer = consumer
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.liveness.beat(self._consumer)  # before the first read of any stream
        self._task = asyncio.create_task(self._loop(), name="okra-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        try:
            await self.liveness.forget(self._consumer)
        except StoreUnavailableError as exc:
            logger.warning("could not remove the heartbeat of %s: %s", self._consumer, exc)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.liveness.ttl_ms / 3000)
            try:
                await self.liveness.beat(self._consumer)
            except StoreUnavailableError as exc:
                _outages.warning(exc.reason, "heartbeat of %s: %s", self._consumer, exc)
