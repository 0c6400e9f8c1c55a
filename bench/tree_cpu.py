"""Where a sidecar's CPU goes, by role, from /proc: the serving process, its Redis, its regular
engine children, the slow lane and the sandbox workers (the children running below normal
priority), the fork server, and children that ended in the window (their time is added to the
parent's `cutime` once reaped). Children come and go (a hostile expression's engine process is
killed and replaced), so each sample lists them anew.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.cpu import PROC, STAT_UTIME_INDEX, TICKS_PER_S, child_pids, process_cpu_s, process_name

__all__ = ["TreeCpuMeter", "TreeCpuSample"]

# Fields of /proc/PID/stat counted after the `(comm)` field: cutime, cstime, nice, policy.
CUTIME_INDEX = STAT_UTIME_INDEX + 2
NICE_INDEX = STAT_UTIME_INDEX + 5
POLICY_INDEX = 38
SCHED_OTHER = 0
ROLES = ("server", "redis", "engine", "low", "forks", "ended")


@dataclass(frozen=True)
class TreeCpuSample:
    wall_s: float
    server_s: float
    # CPU seconds of the children the parent reaped so far (cutime + cstime).
    reaped_s: float
    # Each live child: its role and CPU seconds.
    children: dict[int, tuple[str, float]] = field(default_factory=dict)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _own_s(pid: int, fields: list[str]) -> float:
    """Its threads' run time in ns where /proc shows it, else its ticks from `fields`."""
    precise = process_cpu_s(pid)
    if precise is not None:
        return precise
    return (int(fields[STAT_UTIME_INDEX]) + int(fields[STAT_UTIME_INDEX + 1])) / TICKS_PER_S


def _role(pid: int, fields: list[str]) -> str:
    name = process_name(pid)
    if name == "redis-server":
        return "redis"
    if name == "okra-forkserver":
        return "forks"
    lowered = int(fields[NICE_INDEX]) > 0 or int(fields[POLICY_INDEX]) != SCHED_OTHER
    return "low" if lowered else "engine"


class TreeCpuMeter:
    """Samples the CPU of a server process and of its children, by role."""

    def __init__(self, server_pid: int) -> None:
        self._pid = server_pid

    def sample(self) -> TreeCpuSample:
        fields = _stat_fields(self._pid)
        server_s = reaped_s = 0.0
        if fields is not None:
            server_s = _own_s(self._pid, fields)
            cutime = int(fields[CUTIME_INDEX]) + int(fields[CUTIME_INDEX + 1])
            reaped_s = cutime / TICKS_PER_S
        children: dict[int, tuple[str, float]] = {}
        for child in child_pids(self._pid):
            child_fields = _stat_fields(child)
            if child_fields is not None:
                children[child] = (_role(child, child_fields), _own_s(child, child_fields))
        return TreeCpuSample(time.perf_counter(), server_s, reaped_s, children)

    @staticmethod
    def used_s(start: TreeCpuSample, end: TreeCpuSample) -> dict[str, float]:
        """CPU seconds by role over the window.

        A child alive at the end counts what it used since the start (all of it if it is new);
        children that ended in the window count together: what the parent reaped meanwhile,
        less what they had used before the window.
        """
        used = dict.fromkeys(ROLES, 0.0)
        used["server"] = end.server_s - start.server_s
        for pid, (role, seconds) in end.children.items():
            used[role] += seconds - start.children.get(pid, (role, 0.0))[1]
        gone = [seconds for pid, (_, seconds) in start.children.items() if pid not in end.children]
        used["ended"] = end.reaped_s - start.reaped_s - sum(gone)
        return {role: max(seconds, 0.0) for role, seconds in used.items()}

    @staticmethod
    def describe(start: TreeCpuSample, end: TreeCpuSample) -> str:
        """Percent of one core by role over the window, and the children started in it."""
        wall = max(end.wall_s - start.wall_s, 1e-9)
        used = TreeCpuMeter.used_s(start, end)
        shares = ", ".join(f"{role} {100 * used[role] / wall:.0f}%" for role in ROLES)
        started = len(end.children.keys() - start.children.keys())
        return f"{shares}; {started} children started"
