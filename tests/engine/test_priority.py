"""The slow lane's CPU priority (engine/runtime/priority.py), taken in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import os\n"
    "from okra_sidecar.engine.runtime.priority import lower_priority\n"
    "print(lower_priority(), os.sched_getscheduler(0), os.nice(0))\n"
)


def probe(preexec: str = "") -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", preexec + PROBE], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no SCHED_IDLE on this platform")
def test_lower_priority_takes_sched_idle() -> None:
    *got, policy, _ = probe()
    assert got == ["SCHED_IDLE"]
    assert int(policy) == os.SCHED_IDLE


def test_lower_priority_falls_back_to_nice_19_when_sched_idle_is_refused() -> None:
    # A platform without SCHED_IDLE, or one that refuses it, still gets the lowest nice.
    refuse = (
        "import os\n"
        "def refuse(*args): raise PermissionError(1, 'refused')\n"
        "os.sched_setscheduler = refuse\n"
    )
    *got, policy, nice = probe(refuse)
    assert got == ["nice", "19"]
    assert int(policy) == os.SCHED_OTHER
    assert int(nice) == 19
