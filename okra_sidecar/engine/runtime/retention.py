"""RetentionKeeper: purges instances finished more than `retentionDays` ago, in small batches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from okra_sidecar.clock import now_ms
from okra_sidecar.config import HostSettings, ScheduleSettings
from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.store.base import RetentionStore
from okra_sidecar.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

__all__ = ["RetentionKeeper"]

DAY_MS = 86_400_000
# Batches per pass: a huge backlog is worked off over several passes.
MAX_BATCHES_PER_PASS = 100


class RetentionKeeper:
    """One per sidecar; any number may run, as purging an instance twice changes nothing."""

    def __init__(
        self,
        *,
        store: RetentionStore,
        host: HostSettings,
        settings: ScheduleSettings,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self._host = host
        self._settings = settings
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def purge_once(self) -> int:
        """Purge what is past retention now; returns how many instances went."""
        cutoff = self._clock() - self._host.retention_days * DAY_MS
        total = 0
        for _ in range(MAX_BATCHES_PER_PASS):
            purged = await self._store.purge_finished(
                finished_before_ms=cutoff, limit=self._settings.retention_batch
            )
            total += purged
            if purged < self._settings.retention_batch:
                break
            await asyncio.sleep(0)  # let the rpcs' Redis calls in between batches
        if total:
            logger.info("purged %d instances finished before the retention cutoff", total)
        return total

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="okra-retention")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.purge_once()
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as exc:
                logger.warning("retention: %s; trying again later", exc)
            except Exception:
                logger.exception("retention pass failed; trying again later")
            await asyncio.sleep(self._settings.retention_interval_s)
