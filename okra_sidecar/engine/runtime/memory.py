"""An engine process's own memory cap, so that jq's allocations fail in it, not the host."""

from __future__ import annotations

import re
import resource
from pathlib import Path

__all__ = ["limit_memory", "refuse_core_dumps"]


def limit_memory(megabytes: int) -> None:
    """In a child: cap its data segment at its current size plus `megabytes` (0: no cap).

    RLIMIT_DATA counts the heap and private anonymous mappings, where jq's and Python's
    allocations land; once over it, jq aborts the process (its allocator has no failure path).
    """
    status = Path("/proc/self/status")
    if megabytes <= 0 or not status.exists():
        return
    found = re.search(r"^VmData:\s+(\d+) kB", status.read_text(), re.MULTILINE)
    if found is None:
        return
    limit = int(found[1]) * 1024 + megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def refuse_core_dumps() -> None:
    """In a child: dump no core when jq aborts it. An abort under the memory cap is how a
    hostile expression is expected to end, and on a host that keeps cores (systemd-coredump,
    apport) each would write out the whole capped heap at normal priority."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
