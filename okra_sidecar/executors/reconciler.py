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


class LimitReconciler:
    def __init__(self, *, limits: RedisLimitStore, interval_s: float = 1.0) -> None:
        self._limits = limits
        self._interval_s = interval_s
        self._after = "-inf"
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
        """One slice of the scope's reservations, from where the last pass stopped."""
        repair, self._after = await self._limits.reconcile(after=self._after)
        if repair.released_finished or repair.released_missing:
            logger.warning(
                "limit scope %r: released %d finished and %d never-created instances' places",
                self._limits.keys.scope,
                repair.released_finished,
                repair.released_missing,
            )
