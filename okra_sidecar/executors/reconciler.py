"""LimitReconciler: repairs the admissions a process that died between two steps left behind.

A Run reserves its place in its limit scope and then creates the instance, and a finished
instance's release reaches the scope through the outbox: two slots, two steps. A sidecar
killed between them leaves a place held by no instance, and a relay killed before it applied a
release leaves a finished instance held until its entry is claimed. Every sidecar runs this
loop for its own scope, a slice of the scope's reservations per pass (store/limit_store.py),
so a leaked place is given back within a few seconds.
"""

from __future__ import annotations

import asyncio
import logging

from okra_sidecar.executors.loops import run_forever
from okra_sidecar.store.limit_store import RedisLimitStore
from okra_sidecar.tasks import cancel_and_wait

__all__ = ["LimitReconciler"]

logger = logging.getLogger(__name__)


# Reservations checked per pass: every new one once, and a slow sweep over all of them.
FRESH_BATCH = 1000
SWEEP_BATCH = 100


class LimitReconciler:
    """Each pass checks the reservations made since the last one (all of them after a start)
    once their grace is over, and the next slice of a sweep over the whole scope: a place
    leaked between reserve and create is found about 2 s after it was taken, whatever the
    scope's size; one held by a finished instance whose release was lost, within a sweep.
    A release whose relay died is normally applied before that by another relay, which
    claims the dead one's outbox entries once its heartbeat is gone (executors/relay.py).
    """

    def __init__(self, *, limits: RedisLimitStore, interval_s: float = 1.0) -> None:
        self._limits = limits
        self._interval_s = interval_s
        self._fresh = "-inf"
        self._sweep = "-inf"
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.create_task(
            run_forever(self._pass, what="limit reconciler"), name="okra-limit-reconciler"
        )

    async def stop(self) -> None:
        if self._loop is not None:
            await cancel_and_wait([self._loop])
        self._loop = None

    async def _pass(self) -> None:
        await asyncio.sleep(self._interval_s)
        await self.reconcile_once()

    async def reconcile_once(self) -> None:
        fresh = await self._limits.repair(after=self._fresh, count=FRESH_BATCH)
        self._fresh = fresh.last or self._fresh
        sweep = await self._limits.repair(after=self._sweep, count=SWEEP_BATCH)
        # Past the end (or at it): the sweep starts again from the oldest.
        self._sweep = sweep.last if sweep.checked == SWEEP_BATCH else "-inf"
        for repair in (fresh, sweep):
            if repair.released_finished or repair.released_missing:
                logger.warning(
                    "limit scope %r: gave back the places of %d finished and %d never "
                    "created instances",
                    self._limits.keys.scope,
                    repair.released_finished,
                    repair.released_missing,
                )
