"""The read loops of the executors, the router and the relay: retried after any failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from okra_sidecar.errors import StoreUnavailableError

__all__ = ["run_forever"]

logger = logging.getLogger(__name__)


async def run_forever(
    once: Callable[[], Awaitable[None]], *, what: str, until: asyncio.Event | None = None
) -> None:
    """Call `once` until cancelled (or `until` is set); after a failure log it and back off
    (0.1 s doubling to 5 s)."""
    backoff = 0.1
    while until is None or not until.is_set():
        try:
            await once()
            backoff = 0.1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            level = logging.WARNING if isinstance(exc, StoreUnavailableError) else logging.ERROR
            logger.log(level, "%s: %s; retrying", what, exc, exc_info=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
