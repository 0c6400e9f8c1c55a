"""The slow lane gives way to regular turns: a slow evaluation runs one interval in four
while the regular engine processes are computing.

SCHED_IDLE (priority.py) leaves a hostile expression only the CPU no regular task wants, yet
on a virtual machine a core that spins still slows the regular work beside it (sibling
hyperthreads of one physical core, the hypervisor's own scheduling): W2 ran at 71% of its pace
alone beside one SCHED_IDLE spinner on the two cores of the benchmark machine, at 93% when the
spinner ran 100 ms in 400. So while the regular children used CPU in the last watch interval,
the parent stops the slow lane's child (SIGSTOP) for three intervals in four whenever it is in
an evaluation at low priority: a turn of a slow instance or workflow, never one on probation.
The budget stays wall time, so a slow expression may run out of it sooner on a busy host:
slow instances yield to the regular ones.
"""

from __future__ import annotations

import contextlib
import os
import signal

from okra_sidecar.engine.runtime.priority import is_lowered

__all__ = ["SlowLaneThrottle"]

# Watch intervals the child runs, then is held, while regular turns keep the host busy.
RUN_INTERVALS = 1
HELD_INTERVALS = 3
# Regular children busy: together at least this much CPU in one watch interval (ns).
BUSY_NS = 5_000_000


class SlowLaneThrottle:
    """Holds and releases the slow lane's child, one decision per watch interval."""

    __slots__ = ("_held_pid", "_intervals", "_regular_cpu_ns")

    def __init__(self) -> None:
        self._held_pid = 0
        self._intervals = 0
        self._regular_cpu_ns: int | None = None

    @property
    def held_pid(self) -> int:
        """The child held now (0: none)."""
        return self._held_pid

    def regular_busy(self, regular_cpu_ns: int) -> bool:
        """Whether the regular children, whose CPU time together is now `regular_cpu_ns`,
        computed in the last interval (a replaced child's time starts again: busy)."""
        last, self._regular_cpu_ns = self._regular_cpu_ns, regular_cpu_ns
        if last is None:
            return False
        return regular_cpu_ns < last or regular_cpu_ns - last >= BUSY_NS

    def tick(self, pid: int | None, *, evaluating: bool, busy: bool) -> None:
        """One interval on: `pid` is the slow lane's child (None: none runs), `evaluating`
        whether its board shows an evaluation, `busy` the regular children's state."""
        if self._held_pid and self._held_pid != pid:
            self.release()  # replaced, or gone: nothing of ours may stay stopped
        self._intervals += 1
        if self._held_pid:
            if self._intervals >= HELD_INTERVALS or not busy:
                self.release()
            return
        if pid is None or not (evaluating and busy and is_lowered(pid)):
            self._intervals = 0
            return
        if self._intervals >= RUN_INTERVALS:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                self._held_pid = pid
            self._intervals = 0

    def release(self) -> None:
        """Let the held child run again (before it is told to stop, or replaced)."""
        if self._held_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._held_pid, signal.SIGCONT)
        self._held_pid = 0
        self._intervals = 0
