"""The slow lane's clock counts an evaluation's CPU time, not the time it waited for a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from okra_sidecar.engine.runtime.cpu_clock import EvaluationClock, thread_cpu_ns

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/schedstat"), reason="needs /proc/<pid>/schedstat (Linux)"
)


def _child(code: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def sleeping() -> Iterator[subprocess.Popen[bytes]]:
    yield from _child("import time; time.sleep(30)")


@pytest.fixture
def spinning() -> Iterator[subprocess.Popen[bytes]]:
    yield from _child("while True: pass")


def _watch(clock: EvaluationClock, pid: int, started_ns: int, seconds: float) -> int:
    """Look at the clock every 50 ms, as the parent's watch loop does, for `seconds` or until
    it shows more than 100 ms (a busy host gives a spinning child little of a core)."""
    ran_ms = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and ran_ms <= 100:
        ran_ms = clock.elapsed_ms(pid, started_ns, time.monotonic_ns())
        time.sleep(0.05)
    return ran_ms


def test_a_thread_cpu_time_is_the_threads_own() -> None:
    before = time.thread_time_ns()
    read = thread_cpu_ns(os.getpid())
    after = time.thread_time_ns()
    assert read is not None
    assert before <= read <= after


def test_an_evaluation_that_waits_uses_no_time(sleeping: subprocess.Popen[bytes]) -> None:
    clock = EvaluationClock()
    started_ns = time.monotonic_ns()
    assert _watch(clock, sleeping.pid, started_ns, 0.6) < 50


def test_an_evaluation_that_computes_uses_its_cpu_time(
    spinning: subprocess.Popen[bytes],
) -> None:
    clock = EvaluationClock()
    started_ns = time.monotonic_ns()
    assert _watch(clock, spinning.pid, started_ns, 30) > 100


def test_a_new_evaluation_starts_from_zero(spinning: subprocess.Popen[bytes]) -> None:
    clock = EvaluationClock()
    first_ns = time.monotonic_ns()
    assert _watch(clock, spinning.pid, first_ns, 30) > 100
    assert clock.elapsed_ms(spinning.pid, first_ns + 1, time.monotonic_ns()) == 0
    assert clock.elapsed_ms(spinning.pid, 0, time.monotonic_ns()) == 0


def test_without_schedstat_it_is_the_wall_clock() -> None:
    clock = EvaluationClock()
    now_ns = time.monotonic_ns()
    gone_pid = 2**22 + 12345  # above pid_max's default: no such process
    assert thread_cpu_ns(gone_pid) is None
    assert clock.elapsed_ms(gone_pid, now_ns - 250_000_000, now_ns) == 250
