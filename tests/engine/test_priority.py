"""The slow lane's CPU priority (engine/runtime/priority.py), taken in a process of its own."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

PROBE = (
    "import os\n"
    "from okra_sidecar.engine.runtime.priority import lower_priority\n"
    "print(lower_priority(), os.sched_getscheduler(0), os.nice(0))\n"
)


def probe(preexec: str = "", script: str = PROBE) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", preexec + script], capture_output=True, text=True, timeout=60
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


LANE = (
    "import os\n"
    "from okra_sidecar.engine.runtime.priority import LanePriority\n"
    "lane = LanePriority()\n"
    "lane.for_turn(slow=True)\n"
    "low = os.sched_getscheduler(0), os.nice(0)\n"
    "lane.for_turn(slow=False)\n"
    "print(*low, os.sched_getscheduler(0), os.nice(0))\n"
)


def lane_probe(preexec: str = "") -> list[int]:
    return [int(word) for word in probe(preexec, LANE)]


def may_raise_priority() -> bool:
    """CAP_SYS_NICE (root, here) or an RLIMIT_NICE of 20 lets a process leave SCHED_IDLE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= 20


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no SCHED_IDLE on this platform")
def test_the_slow_lane_is_low_for_slow_turns_and_normal_for_those_on_probation() -> None:
    low_policy, _, policy, nice = lane_probe()
    assert low_policy == os.SCHED_IDLE
    if may_raise_priority():
        assert (policy, nice) == (os.SCHED_OTHER, 0)
    else:  # stays low until the child is replaced
        assert policy == os.SCHED_IDLE


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no SCHED_IDLE on this platform")
def test_a_refused_raise_leaves_the_slow_lane_low() -> None:
    refuse = (
        "import os\n"
        "lower = os.sched_setscheduler\n"
        "def only_lower(pid, policy, param):\n"
        "    if policy != os.SCHED_IDLE: raise PermissionError(1, 'refused')\n"
        "    lower(pid, policy, param)\n"
        "os.sched_setscheduler = only_lower\n"
    )
    low_policy, _, policy, _ = lane_probe(refuse)
    assert low_policy == policy == os.SCHED_IDLE
