"""An engine process's own memory cap, so that jq's allocations fail in it, not the host."""

from __future__ import annotations

import re
import resource
from pathlib import Path

__all__ = ["limit_memory"]


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
