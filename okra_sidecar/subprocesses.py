"""signal_child: signal a child process that asyncio started, and leave its reaping to asyncio.

asyncio's `Process.send_signal`, `terminate` and `kill` go through `subprocess.Popen`, which
polls the child first (`waitpid(pid, WNOHANG)`). A child that has just exited is reaped there,
before asyncio's child watcher gets to it; the watcher then finds nothing to wait for, logs
"Unknown child process pid N, will report returncode 255", and `wait()` returns 255 instead of
the child's exit status. Seen when a sidecar stops: its engine children exit on the first
SIGTERM, and the second one, sent while waiting for them, reaped one on a busy host.

Here the child is signalled with kill(2), unless asyncio has seen it exit. An exited child
keeps its pid as a zombie until the watcher reaps it, so the signal reaches no other process;
only in the instant between the watcher's waitpid and asyncio noting the exit could the pid
be another's, the window Popen's own check leaves too (bpo-38630).
"""

from __future__ import annotations

import asyncio
import os

__all__ = ["signal_child"]


def signal_child(process: asyncio.subprocess.Process, signum: int) -> bool:
    """Send `signum` to `process` unless it has exited; whether it was sent."""
    if process.returncode is not None:
        return False
    try:
        os.kill(process.pid, signum)
    except ProcessLookupError:
        return False
    return True
