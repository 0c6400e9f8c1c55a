"""The slow lane's CPU priority: only the CPU nothing else wants.

A hostile expression in the slow lane spins a core for its whole budget, one instance after
another. At nice 19 it still had a weight of 15 against the regular processes' 1024, and a
core it ran on counted as busy, so a regular turn waking up was often queued behind another
instead of taking that core. Linux's SCHED_IDLE gives a weight of 3, and the scheduler places
waking tasks on a core that runs only SCHED_IDLE work as on an idle one. Where SCHED_IDLE is
not available (another platform, a policy refused), nice 19 is the fallback.
"""

from __future__ import annotations

import contextlib
import logging
import os

__all__ = ["LOWEST_NICENESS", "lower_priority"]

logger = logging.getLogger(__name__)

LOWEST_NICENESS = 19


def lower_priority() -> str:
    """In a child: take the lowest CPU priority there is; says which it got."""
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is not None:
        try:
            os.sched_setscheduler(0, idle, os.sched_param(0))
        except OSError as exc:
            logger.info("SCHED_IDLE refused (%s); running at nice %d", exc, LOWEST_NICENESS)
        else:
            return "SCHED_IDLE"
    with contextlib.suppress(OSError):
        os.nice(LOWEST_NICENESS - os.nice(0))
    return f"nice {os.nice(0)}"
