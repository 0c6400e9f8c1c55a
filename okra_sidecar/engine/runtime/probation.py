"""Probation: a workflow's turns are taken in the slow lane until they have proved fast.

The first instance of a hostile workflow used to run in a regular engine child before anyone
knew it was slow: the child spun for `slowExpressionMs`, was killed, and the spare took over
its hundreds of other turns in flight (0.1 to 2 s of every other instance's pace, for each
new hostile workflow). Now the regular children take only the turns of proven workflows
(`fastdefs`, store/keys.py) and forward every other workflow's work to the slow lane, whose
child takes it at normal priority (priority.py) and counts its fast turns: after
PROVEN_AFTER_TURNS turns that each interpreted in less than `slowExpressionMs` of CPU, the
workflow is proven and its turns go back to the regular lane (the runners read the set every
half second). A turn on probation that runs long is the parent's to see (processes.py): it
marks the instance slow, which keeps its workflow in the slow lane (`slowdefs`), and lowers
the child's priority, without killing it: only instances on probation or slow ones wait.

A proven workflow whose expressions run long on some input still moves to the slow lane as
before, at the cost of the regular child it ran in.
"""

from __future__ import annotations

import time

from okra_sidecar.engine.runtime.priority import LanePriority
from okra_sidecar.store.base import Store

__all__ = ["PROVEN_AFTER_TURNS", "Probation"]

# Fast turns in the slow lane before a workflow's turns go to the regular lane.
PROVEN_AFTER_TURNS = 3


class Probation:
    """In the slow lane's runner: each turn's priority, and the fast turns of each workflow."""

    __slots__ = ("_fast", "_priority", "_slow_ns", "_store")

    def __init__(self, store: Store, *, slow_ms: int) -> None:
        self._store = store
        self._slow_ns = slow_ms * 1_000_000
        # Fast turns so far of each workflow on probation (this process's only).
        self._fast: dict[str, int] = {}
        self._priority = LanePriority()

    def begin_turn(self, *, slow: bool) -> int:
        """Before interpreting: the priority the turn deserves; returns the CPU clock."""
        self._priority.for_turn(slow=slow)
        return time.thread_time_ns()

    async def end_turn(self, workflow_id: str, cpu_ns: int) -> bool:
        """After a turn on probation that interpreted in `cpu_ns`: count it if it was fast;
        True once the workflow is proven (and recorded as such)."""
        if cpu_ns >= self._slow_ns:
            return False
        fast = self._fast.get(workflow_id, 0) + 1
        if fast < PROVEN_AFTER_TURNS:
            self._fast[workflow_id] = fast
            return False
        await self._store.mark_proven(workflow_id)
        self._fast.pop(workflow_id, None)
        return True
