"""The sidecar's one clock: wall-clock epoch milliseconds.

Whatever reads the time takes a `Clock` (start_sidecar's `clock=`), so that tests can move
time; this is the clock they get otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "now_ms"]

Clock = Callable[[], int]


def now_ms() -> int:
    """Epoch milliseconds, from the wall clock."""
    return int(time.time() * 1000)
