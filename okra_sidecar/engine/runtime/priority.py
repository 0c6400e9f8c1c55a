"""The slow lane's CPU priority: only the CPU nothing else wants, for the turns that ran long.

A hostile expression in the slow lane spins a core for its whole budget, one instance after
another. At nice 19 it still had a weight of 15 against the regular processes' 1024, and a
core it ran on counted as busy, so a regular turn waking up was often queued behind another
instead of taking that core. Linux's SCHED_IDLE gives a weight of 3, and the scheduler places
waking tasks on a core that runs only SCHED_IDLE work as on an idle one. Where SCHED_IDLE is
not available (another platform, a policy refused), nice 19 is the fallback.

The slow lane also takes the turns of workflows on probation (probation.py), which have not
yet shown their expressions to be fast and are mostly ordinary: at SCHED_IDLE they would wait
as long as a busy host stays busy. So its child runs each turn at the priority the turn
deserves (`LanePriority`), and its parent lowers it from outside as soon as an evaluation on
probation runs long (`lower_priority`). Going back up from SCHED_IDLE needs CAP_SYS_NICE or
an RLIMIT_NICE of 20; where refused, the child stays low until it is replaced (it is after
every expression its parent stops).
"""

from __future__ import annotations

import contextlib
import logging
import os

__all__ = ["LOWEST_NICENESS", "LanePriority", "is_lowered", "lower_priority"]

logger = logging.getLogger(__name__)

LOWEST_NICENESS = 19


def lower_priority(pid: int = 0) -> str:
    """Give `pid` (0: this process) the lowest CPU priority there is; says which it got."""
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is not None:
        try:
            os.sched_setscheduler(pid, idle, os.sched_param(0))
        except OSError as exc:
            logger.info("SCHED_IDLE refused (%s); running at nice %d", exc, LOWEST_NICENESS)
        else:
            return "SCHED_IDLE"
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, LOWEST_NICENESS)
    return f"nice {os.getpriority(os.PRIO_PROCESS, pid)}"


def _restore_priority() -> bool:
    """Back to the normal policy and niceness; False where the system refuses it."""
    try:
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError as exc:
        logger.info("the slow lane cannot raise its priority again (%s)", exc)
        return False
    return True


def is_lowered(pid: int = 0) -> bool:
    """Whether `pid` (0: this process) runs at SCHED_IDLE or above nice 0; False if it is
    gone."""
    idle = getattr(os, "SCHED_IDLE", None)
    try:
        if idle is not None and os.sched_getscheduler(pid) == idle:
            return True
        return os.getpriority(os.PRIO_PROCESS, pid) > 0
    except OSError:
        return False


class LanePriority:
    """In the slow lane's child: low for turns that ran long, normal for those on probation.

    The priority is read before each turn (the parent may have lowered it meanwhile), and
    changed only when the kind of turn asks for another; once raising is refused it is not
    tried again.
    """

    __slots__ = ("_can_raise",)

    def __init__(self) -> None:
        self._can_raise = True

    def for_turn(self, *, slow: bool) -> None:
        low = is_lowered()
        if slow and not low:
            lower_priority()
        elif not slow and low and self._can_raise:
            self._can_raise = _restore_priority()
