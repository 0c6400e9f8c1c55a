"""The read loops of the executors, the router and the relay: retried after any failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.telemetry.repeats import RepeatedWarnings

__all__ = ["run_forever"]

logger = logging.getLogger(__name__)
_outages = RepeatedWarnings(logger)


async def run_forever(
    once: Callable[[], Awaitable[None]], *, what: str, until: asyncio.Event | None = None
) -> None:
    """Call `once` until cancelled (or `until` is set); after a failure log it and back off
    (0.1 s doubling to 5 s). An outage logs a line per loop and reason every few seconds,
    without a traceback; anything else is a bug and logs each time, with one."""
    backoff = 0.1
    while until is None or not until.is_set():
        try:
            await once()
            backoff = 0.1
        except asyncio.CancelledError:
            raise
        except StoreUnavailableError as exc:
            _outages.warning((what, exc.reason), "%s: %s; retrying", what, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
        except Exception as exc:
            logger.error("%s: %s; retrying", what, exc, exc_info=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
