"""CPU used by the client, the server, its engine children and its redis-server, from /proc."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
# utime and stime are fields 14 and 15 of /proc/PID/stat, counted after the `(comm)` field.
STAT_UTIME_INDEX = 11
TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuShare:
    """Percent of one core each process used over a window (None: not measured)."""

    client: float
    server: float | None
    redis: float | None
    # The sidecar's engine child processes together (engineProcesses), None without any.
    engine: float | None = None


@dataclass(frozen=True)
class CpuSample:
    wall_s: float
    client_s: float
    server_s: float | None
    redis_s: float | None
    engine_s: float | None = None


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds of a process and its live threads; None if unreadable.

    From each thread's run time in ns (/proc/PID/task/*/schedstat): /proc/PID/stat counts in
    clock ticks (10 ms), so a process that ran a few ms in a window could show none at all.
    A thread that ended in the window takes its time with it; the sidecar's threads, its
    Redis's and its engine children's live as long as their process. Falls back to
    /proc/PID/stat where there is no schedstat.
    """
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return None
    total_ns = 0
    for task in tasks:
        try:
            total_ns += int((task / "schedstat").read_bytes().split(maxsplit=1)[0])
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        except (OSError, ValueError, IndexError):
            return _ticks_cpu_s(pid)
    return total_ns / 1e9


def _ticks_cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds from /proc/PID/stat, in clock ticks."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return (int(fields[STAT_UTIME_INDEX]) + int(fields[STAT_UTIME_INDEX + 1])) / TICKS_PER_S


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (Linux 3.5+), empty when /proc does not tell."""
    children: list[int] = []
    try:
        for task in (PROC / str(pid) / "task").iterdir():
            children.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        return []
    return children


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants."""
    pids = [pid]
    for child in child_pids(pid):
        pids += tree_pids(child)
    return pids


# A sidecar has settled once its processes together use less than this share of one core.
SETTLED_SHARE = 0.15
SETTLE_WINDOW_S = 0.5
SETTLE_TIMEOUT_S = 60.0


async def wait_until_settled(pid: int, *, timeout_s: float = SETTLE_TIMEOUT_S) -> float:
    """Wait until a process and its descendants are nearly idle for two windows in a row;
    the seconds waited (at most `timeout_s`).

    A sidecar answers its health check before its engine processes, their spare and the
    fork server have finished importing: seconds of CPU on this machine that would
    otherwise be taken from the first workload, and counted against it.
    """
    started = time.monotonic()
    quiet = 0
    while quiet < 2 and time.monotonic() - started < timeout_s:
        pids = tree_pids(pid)
        before = sum(process_cpu_s(p) or 0.0 for p in pids)
        await asyncio.sleep(SETTLE_WINDOW_S)
        used = sum(process_cpu_s(p) or 0.0 for p in pids) - before
        quiet = quiet + 1 if used < SETTLED_SHARE * SETTLE_WINDOW_S else 0
    return time.monotonic() - started


def process_name(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


class CpuMeter:
    """Samples CPU time of this process (the client), a server process, its engine children
    and its Redis.

    Args:
        server_pid: The server's process, or None when it runs in this process (tests).
        redis_pids: The embedded redis-server, or the bench's own Redis Cluster's nodes (their
            sum); none for an external Redis or none at all.
        engine_pids: The sidecar's engine child processes, if it has any.
    """

    def __init__(
        self,
        *,
        server_pid: int | None = None,
        redis_pids: tuple[int, ...] = (),
        engine_pids: tuple[int, ...] = (),
    ) -> None:
        self._server_pid = server_pid
        self._redis_pids = redis_pids
        self._engine_pids = engine_pids

    @classmethod
    def for_process(cls, pid: int, *, redis_pids: tuple[int, ...] = ()) -> CpuMeter:
        """A meter on `pid`, its redis-server child (or `redis_pids`, the Redis it runs on)
        and its other (engine) children."""
        children = child_pids(pid)
        redis = [c for c in children if process_name(c) == "redis-server"]
        return cls(
            server_pid=pid,
            redis_pids=redis_pids or tuple(redis[:1]),
            engine_pids=tuple(c for c in children if c not in redis),
        )

    def sample(self) -> CpuSample:
        engines = [process_cpu_s(pid) for pid in self._engine_pids]
        redis = [process_cpu_s(pid) for pid in self._redis_pids]
        return CpuSample(
            wall_s=time.perf_counter(),
            client_s=time.process_time(),
            server_s=None if self._server_pid is None else process_cpu_s(self._server_pid),
            redis_s=None if not redis or None in redis else sum(r for r in redis if r),
            engine_s=None if not engines or None in engines else sum(e for e in engines if e),
        )

    def share_since(self, start: CpuSample) -> CpuShare:
        end = self.sample()
        wall = max(end.wall_s - start.wall_s, 1e-9)

        def percent(before: float | None, after: float | None) -> float | None:
            if before is None or after is None:
                return None
            return 100 * (after - before) / wall

        return CpuShare(
            client=100 * (end.client_s - start.client_s) / wall,
            server=percent(start.server_s, end.server_s),
            redis=percent(start.redis_s, end.redis_s),
            engine=percent(start.engine_s, end.engine_s),
        )
