"""Children asyncio started are reaped by asyncio's child watcher alone.

`subprocess.Popen.poll()` on a child that has exited reaps it, and the watcher then reports 255
("Unknown child process pid N") instead of its exit status. Which of the two reaps first is a
race, so these tests record every poll of a running child instead: a poll is where a second
reap can happen, whether or not it happened this time.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from okra_sidecar.engine.definitions.expressions import compile_expression
from okra_sidecar.engine.runtime.forking import wait_or_kill
from okra_sidecar.engine.runtime.sandbox import ExpressionBudgetError, ExpressionSandbox
from okra_sidecar.store.embedded import EmbeddedRedis
from okra_sidecar.subprocesses import signal_child
from tests.helpers import make_settings, running_sidecar

EXITS_ON_SIGTERM_WITH_3 = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def polled() -> Iterator[list[int]]:
    """The pids of the children that Popen.poll() asked about while they ran."""
    found: list[int] = []
    original = subprocess.Popen.poll

    def poll(self: subprocess.Popen[Any]) -> int | None:
        if self.returncode is None:
            found.append(self.pid)
        return original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "poll", poll)
        yield found


async def started_child() -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", EXITS_ON_SIGTERM_WITH_3, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    assert await process.stdout.readline() == b"ready\n"
    return process


async def test_a_signalled_child_exits_with_its_own_status(polled: list[int]) -> None:
    process = await started_child()
    assert signal_child(process, signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 10) == 3
    # Gone: nothing is sent, nothing is polled.
    assert not signal_child(process, signal.SIGTERM)
    assert polled == []


async def test_wait_or_kill_kills_a_child_that_stays(polled: list[int]) -> None:
    process = await started_child()
    await wait_or_kill(process, 0.1)
    assert process.returncode == -signal.SIGKILL
    assert polled == []


async def test_the_embedded_redis_stops_without_a_poll(tmp_path: Path, polled: list[int]) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis")
    await server.start()
    await server.stop()
    assert polled == []


async def test_a_sandbox_worker_over_budget_is_killed_without_a_poll(polled: list[int]) -> None:
    sandbox = ExpressionSandbox(budget_ms=300, memory_mb=64)
    try:
        assert await sandbox.evaluate(compile_expression("${ . + 1 }"), 1) == 2
        worker = sandbox.worker_pid
        with pytest.raises(ExpressionBudgetError, match="ran past its budget"):
            await sandbox.evaluate(compile_expression("${ def f: f; f }"), None)
    finally:
        await sandbox.close()
    assert worker is not None and worker not in polled


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_engine_children_are_stopped_without_a_poll(
    redis_url: str, polled: list[int]
) -> None:
    settings = make_settings(redis_url)
    settings = replace(
        settings, engine=replace(settings.engine, processes=1, slow_expression_ms=100)
    )
    async with running_sidecar(settings) as (sidecar, _):
        engines = sidecar.engines
        assert engines is not None and engines.slow_pid is not None
        children = {*engines.pids, engines.slow_pid, engines.spare_pid}
    assert not children & set(polled), (children, polled)
