"""The slow lane's child is held in part while regular turns run (engine/runtime/throttle.py),
on real processes: one that spins at SCHED_IDLE, as a slow evaluation does, and one at normal
priority, as a turn on probation does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from okra_sidecar.engine.runtime.throttle import BUSY_NS, HELD_INTERVALS, SlowLaneThrottle

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no SCHED_IDLE here")

SPIN = "import os, sys\n{lower}\nprint('ready', flush=True)\nwhile True: pass\n"
LOWER = "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))"


def spinner(*, lowered: bool) -> Iterator[subprocess.Popen[str]]:
    script = SPIN.format(lower=LOWER if lowered else "")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def low() -> Iterator[subprocess.Popen[str]]:
    yield from spinner(lowered=True)


@pytest.fixture
def normal() -> Iterator[subprocess.Popen[str]]:
    yield from spinner(lowered=False)


def settles(pid: int, letter: str) -> bool:
    """Whether the process's state becomes `letter` (T: stopped, R: running) within a second:
    a signal takes effect when the process is next scheduled."""
    for _ in range(100):
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rpartition(")")[2].split()[0] == letter:
                return True
        time.sleep(0.01)
    return False


def stopped(pid: int) -> bool:
    return settles(pid, "T")


def running(pid: int) -> bool:
    return settles(pid, "R")


def test_a_slow_evaluation_runs_one_interval_in_four_while_regular_turns_run(
    low: subprocess.Popen[str],
) -> None:
    throttle = SlowLaneThrottle()
    throttle.tick(low.pid, evaluating=True, busy=True)
    assert throttle.held_pid == low.pid and stopped(low.pid)
    for _ in range(HELD_INTERVALS - 1):
        throttle.tick(low.pid, evaluating=True, busy=True)
        assert stopped(low.pid)
    throttle.tick(low.pid, evaluating=True, busy=True)
    assert throttle.held_pid == 0 and running(low.pid)
    # Then held again after its interval of running.
    throttle.tick(low.pid, evaluating=True, busy=True)
    assert stopped(low.pid)
    throttle.release()
    assert running(low.pid)


def test_a_held_child_runs_again_as_soon_as_the_regular_turns_stop(
    low: subprocess.Popen[str],
) -> None:
    throttle = SlowLaneThrottle()
    throttle.tick(low.pid, evaluating=True, busy=True)
    assert stopped(low.pid)
    throttle.tick(low.pid, evaluating=True, busy=False)
    assert throttle.held_pid == 0 and running(low.pid)


@pytest.mark.parametrize(
    ("evaluating", "busy"), [(False, True), (True, False)], ids=["between-turns", "host-quiet"]
)
def test_nothing_is_held_between_evaluations_or_on_a_quiet_host(
    low: subprocess.Popen[str], evaluating: bool, busy: bool
) -> None:
    throttle = SlowLaneThrottle()
    for _ in range(HELD_INTERVALS + 2):
        throttle.tick(low.pid, evaluating=evaluating, busy=busy)
        assert throttle.held_pid == 0
    assert running(low.pid)


def test_a_turn_on_probation_at_normal_priority_is_never_held(
    normal: subprocess.Popen[str],
) -> None:
    throttle = SlowLaneThrottle()
    for _ in range(HELD_INTERVALS + 2):
        throttle.tick(normal.pid, evaluating=True, busy=True)
        assert throttle.held_pid == 0
    assert running(normal.pid)


def test_a_replaced_child_leaves_the_one_before_it_running(
    low: subprocess.Popen[str], normal: subprocess.Popen[str]
) -> None:
    throttle = SlowLaneThrottle()
    throttle.tick(low.pid, evaluating=True, busy=True)
    assert stopped(low.pid)
    throttle.tick(normal.pid, evaluating=True, busy=True)
    assert throttle.held_pid == 0 and running(low.pid)


def test_the_regular_children_are_busy_when_their_cpu_time_grew() -> None:
    throttle = SlowLaneThrottle()
    assert not throttle.regular_busy(1_000)  # a first reading says nothing yet
    assert throttle.regular_busy(1_000 + BUSY_NS)
    assert not throttle.regular_busy(1_000 + BUSY_NS + BUSY_NS // 2)
    # A replaced child's clock starts again: the sum went down, so a child was busy dying.
    assert throttle.regular_busy(10)
