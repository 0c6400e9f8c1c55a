"""OutboxRelay: applies the partitions' outbox entries in the slots they are for.

Every sidecar runs one; they share the outboxes through one consumer group, so each entry is
applied by one relay, and again by whoever claims it if that relay stops before acknowledging
it, which the dedup ids make harmless: a parent gets its child's outcome once. A parent that
has finished meanwhile no longer takes deliveries, and the entry is dropped. Reservations and
releases are idempotent by instance id; one applied out of order (a reservation claimed from a
dead relay after its instance's release) is repaired by executors/reconciler.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from okra_sidecar.executors.loops import run_forever
from okra_sidecar.store.effect_store import RedisEffectStore
from okra_sidecar.store.limit_store import RedisLimitStore
from okra_sidecar.store.outbox_store import (
    DELIVER,
    PUBLISH,
    RELEASE,
    RESERVE,
    OutboxEntry,
    RedisOutboxStore,
)
from okra_sidecar.tasks import cancel_and_wait

__all__ = ["OutboxRelay"]

READ_COUNT = 100


class OutboxRelay:
    def __init__(
        self,
        *,
        outbox: RedisOutboxStore,
        effects: RedisEffectStore,
        limits: RedisLimitStore,
        consumer: str,
        claim_idle_ms: int,
        read_block_ms: int = 1000,
        read_linger_ms: int = 0,
        orphans: Callable[[str, Collection[str]], Awaitable[list[OutboxEntry]]] | None = None,
        orphan_interval_s: float = 0.5,
    ) -> None:
        self._outbox = outbox
        self._effects = effects
        self._limits = limits
        self._consumer = consumer
        self._claim_idle_ms = claim_idle_ms
        self._read_block_ms = read_block_ms
        self._read_linger_ms = read_linger_ms
        # Entries of relays whose heartbeat is gone (see store/liveness.py), and which are
        # being applied here (never taken from ourselves).
        self._orphans = orphans
        self._orphan_interval_s = orphan_interval_s
        self._applying: set[str] = set()
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._outbox.ensure_groups()
        self._loops = [
            asyncio.create_task(run_forever(self._read_once, what="relay"), name="okra-relay"),
            asyncio.create_task(
                run_forever(self._claim_once, what="relay claim"), name="okra-relay-claim"
            ),
        ]
        if self._orphans is not None:
            orphans = run_forever(self._orphans_once, what="relay orphans")
            self._loops.append(asyncio.create_task(orphans, name="okra-relay-orphans"))

    async def stop(self) -> None:
        await cancel_and_wait(self._loops)
        self._loops = []

    async def _read_once(self) -> None:
        entries = await self._outbox.read(
            self._consumer, count=READ_COUNT, block_ms=self._read_block_ms
        )
        await self.relay(entries)
        if entries and len(entries) < READ_COUNT and self._read_linger_ms:
            # Entries trickling in (one per finished instance): let more of them arrive, so
            # that the next read, its releases and its acknowledgement each serve several.
            await asyncio.sleep(self._read_linger_ms / 1000)

    async def _claim_once(self) -> None:
        await asyncio.sleep(self._claim_idle_ms / 2000)
        entries = await self._outbox.claim_stale(
            self._consumer, min_idle_ms=self._claim_idle_ms, count=100
        )
        await self.relay(entries)

    async def _orphans_once(self) -> None:
        await asyncio.sleep(self._orphan_interval_s)
        assert self._orphans is not None
        await self.relay(await self._orphans(self._consumer, frozenset(self._applying)))

    async def relay(self, entries: list[OutboxEntry]) -> None:
        """Apply `entries` in order, then acknowledge them."""
        ids = {entry.entry_id for entry in entries}
        self._applying |= ids
        try:
            await self._apply(entries)
        finally:
            self._applying -= ids

    async def _apply(self, entries: list[OutboxEntry]) -> None:
        # Reservations and releases commute with deliveries and among their kind: one script
        # call per scope for each. An instance's reservation comes before its release in its
        # partition's outbox, so every reservation of the batch is made before any release.
        reserves: dict[str, list[tuple[str, str]]] = {}
        releases: dict[str, list[tuple[str, str, str]]] = {}
        for entry in entries:
            if entry.kind == DELIVER:
                await self._effects.deliver(entry.instance_id, entry.dedup, entry.event)
            elif entry.kind == PUBLISH:
                await self._effects.publish(entry.event)
            elif entry.kind == RESERVE:
                reserves.setdefault(entry.scope, []).append((entry.instance_id, entry.workflow_key))
            elif entry.kind == RELEASE:
                place = (entry.instance_id, entry.workflow_key, "")
                releases.setdefault(entry.scope, []).append(place)
        for scope, admitted in reserves.items():
            await self._limits.admit_many(scope, admitted)
        for scope, places in releases.items():
            await self._limits.release_many(scope, places)
        await self._outbox.ack(entries)
