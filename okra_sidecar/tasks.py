"""cancel_and_wait: stop background tasks even when a library swallows their cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]

# How long a cancelled task gets before it is cancelled again.
RECANCEL_AFTER_S = 0.1


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel `tasks` and return once every one has ended, whatever it raised.

    A single cancel() is not enough on Python 3.11: asyncio.wait_for returns its inner result
    and drops a cancellation that arrives as that result completes, and redis-py wraps every
    socket write in wait_for. A loop cancelled there goes on as if nothing happened (seen as a
    shutdown that never ended), so a task still running after RECANCEL_AFTER_S is cancelled
    again.
    """
    stopping = list(tasks)
    pending = {task for task in stopping if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER_S)
    for task in stopping:
        if not task.cancelled():
            task.exception()  # retrieved, as gather(return_exceptions=True) would
