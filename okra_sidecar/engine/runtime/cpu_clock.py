"""The CPU an engine child's evaluation in progress has had, read from outside the child.

The slow lane is for expressions that compute for long, not for evaluations that waited: on a
busy host a child can be off the CPU for longer than `slowExpressionMs` in the middle of a
cheap evaluation, and judging by the wall clock then moved healthy workflows to the slow lane
(and killed their child to do it). Linux keeps each thread's CPU time in
/proc/<pid>/schedstat; jq runs on the child's main thread, whose id is the child's pid.
Reading it from the parent costs the child nothing on its hot path.
"""

from __future__ import annotations

__all__ = ["EvaluationClock", "thread_cpu_ns"]


def thread_cpu_ns(pid: int) -> int | None:
    """The CPU time of `pid`'s main thread in ns, or None where /proc does not show it."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as stats:
            return int(stats.read().split(maxsplit=1)[0])
    except (OSError, ValueError, IndexError):
        return None


class EvaluationClock:
    """The CPU one child's current evaluation has had since its parent first saw it running.

    The child stamps only the wall-clock start of an evaluation (board.py); the parent notes
    the child's CPU time the first time it sees that stamp, so the figure misses at most the
    CPU of one watch interval. Where /proc has no schedstat, it falls back to the wall clock.
    """

    __slots__ = ("_cpu_at_sighting_ns", "_started_ns")

    def __init__(self) -> None:
        self._started_ns = 0
        self._cpu_at_sighting_ns = 0

    def elapsed_ms(self, pid: int, evaluation_started_ns: int, now_ns: int) -> int:
        """The ms the evaluation stamped `evaluation_started_ns` has run (0: none running)."""
        if not evaluation_started_ns:
            self._started_ns = 0
            return 0
        cpu_ns = thread_cpu_ns(pid)
        if cpu_ns is None:
            return (now_ns - evaluation_started_ns) // 1_000_000
        if evaluation_started_ns != self._started_ns:
            self._started_ns = evaluation_started_ns
            self._cpu_at_sighting_ns = cpu_ns
        return (cpu_ns - self._cpu_at_sighting_ns) // 1_000_000
