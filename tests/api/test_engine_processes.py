"""engineProcesses: turns taken in child processes, restarted when one dies."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import replace

import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from bench.cpu import child_pids, process_name
from okra_sidecar.config import Settings
from okra_sidecar.engine.runtime.forking import CHILD_NAME, FORK_SERVER_NAME
from okra_sidecar.engine.runtime.processes import (
    PARENT_PID_ENV,
    STORE_UNAVAILABLE_EXIT,
    EngineProcesses,
)
from tests.api.test_process import start_process
from tests.helpers import (
    make_settings,
    process_alive,
    running_sidecar,
    to_python,
    value,
    wait_for_status,
)

pytestmark = pytest.mark.slow
DONE = {pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED}


def with_engine_processes(settings: Settings, count: int) -> Settings:
    return replace(settings, engine=replace(settings.engine, processes=count))


async def test_children_take_the_turns_and_one_that_dies_is_replaced(
    redis: Redis, redis_url: str
) -> None:
    settings = with_engine_processes(make_settings(redis_url), 1)
    async with running_sidecar(settings) as (sidecar, stub):
        assert sidecar.engines is not None
        [child] = sidecar.engines.pids
        assert child != os.getpid()
        first = await stub.Run(
            pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1}))
        )
        done = await wait_for_status(stub, first.instance_id, DONE, timeout_s=20)
        assert to_python(done.output) == {"n": 22, "done": True}
        # The serving process took no turn: its runner never started.
        assert not sidecar.runner.running

        spare = sidecar.engines.spare_pid
        assert spare is not None and spare != child
        os.kill(child, signal.SIGKILL)
        for _ in range(200):
            if sidecar.engines.pids and sidecar.engines.pids != [child]:
                break
            await asyncio.sleep(0.05)
        # The spare, started ahead, took the dead child's place; a new spare comes behind it
        # (started once the first is installed).
        assert sidecar.engines.pids == [spare]
        for _ in range(600):
            if sidecar.engines.spare_pid not in (None, spare, child):
                break
            await asyncio.sleep(0.05)
        assert sidecar.engines.spare_pid not in (None, spare, child)
        second = await stub.Run(
            pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 2}))
        )
        done = await wait_for_status(stub, second.instance_id, DONE, timeout_s=20)
        assert to_python(done.output) == {"n": 32, "done": True}
        pids = [*sidecar.engines.pids, sidecar.engines.spare_pid]
    # Stopping the sidecar stops its children.
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def _replaced(sidecar_pids: Callable[[], list[int]], dead: int) -> list[int]:
    for _ in range(600):
        pids = sidecar_pids()
        if pids and dead not in pids:
            return pids
        await asyncio.sleep(0.05)
    raise AssertionError(f"engine process {dead} was not replaced")


async def _forked_spare(engines: EngineProcesses, old: int | None) -> int:
    """The spare that replaced `old`, once it is there: forked from the fork server."""
    for _ in range(600):
        spare = engines.spare_pid
        if spare not in (None, old) and process_name(spare) == CHILD_NAME:
            return spare
        await asyncio.sleep(0.05)
    raise AssertionError(f"no forked spare came after {old}")


async def test_replacements_are_forked_and_a_dead_fork_server_is_replaced(
    redis: Redis, redis_url: str
) -> None:
    settings = with_engine_processes(make_settings(redis_url), 1)
    async with running_sidecar(settings) as (sidecar, stub):
        engines = sidecar.engines
        assert engines is not None
        # The first children start the old way (the sidecar does not wait for the fork
        # server's imports), the fork server once they are set up; it forks the next ones.
        for _ in range(600):
            fork_server = engines.fork_server_pid
            if fork_server is not None and process_name(fork_server) == FORK_SERVER_NAME:
                break
            await asyncio.sleep(0.05)
        assert fork_server is not None and process_name(fork_server) == FORK_SERVER_NAME
        [child] = engines.pids
        os.kill(child, signal.SIGKILL)
        [second] = await _replaced(lambda: engines.pids, child)
        forked = await _forked_spare(engines, second)
        # Forked, yet the sidecar's own child: it reaps it and it dies with the sidecar.
        assert forked in child_pids(os.getpid())

        os.kill(fork_server, signal.SIGKILL)
        os.kill(second, signal.SIGKILL)
        assert await _replaced(lambda: engines.pids, second) == [forked]
        for _ in range(600):
            if engines.fork_server_pid not in (None, fork_server):
                break
            await asyncio.sleep(0.05)
        assert engines.fork_server_pid not in (None, fork_server)
        run = await stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 3})))
        done = await wait_for_status(stub, run.instance_id, DONE, timeout_s=30)
        assert to_python(done.output) == {"n": 42, "done": True}

        # The new fork server forks the next spares.
        spare = engines.spare_pid
        os.kill(forked, signal.SIGKILL)
        await _replaced(lambda: engines.pids, forked)
        await _forked_spare(engines, spare)


async def test_a_killed_sidecar_takes_its_engine_children_with_it(
    redis: Redis, redis_url: str, unused_tcp_port: int
) -> None:
    process = await start_process(redis_url, unused_tcp_port, env={"OKRA_ENGINE_PROCESSES": "2"})
    try:
        children = child_pids(process.pid)
        # Two taking turns, the spare, the slow lane's, and the fork server once they are set up.
        assert len(children) in (4, 5)
        process.kill()
        await process.wait()
        for _ in range(100):
            if not any(process_alive(pid) for pid in children):
                break
            await asyncio.sleep(0.05)
        assert not any(process_alive(pid) for pid in children)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_engine_command_refuses_to_run_on_its_own() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "okra_sidecar",
        "engine",
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 1
    assert b"runs only as a child of `serve`" in stderr


async def test_an_engine_child_that_cannot_reach_redis_exits_for_its_parent_to_retry() -> None:
    # A port nobody listens on: the child's store cannot open, as in a failover or a restart.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(f"redis://127.0.0.1:{port}", workflows=None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "okra_sidecar",
        "engine",
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, PARENT_PID_ENV: str(os.getpid())},
    )
    _, stderr = await asyncio.wait_for(process.communicate(pickle.dumps(settings)), timeout=60)
    # Not an ordinary crash: the parent starts another without counting it against a turn.
    assert process.returncode == STORE_UNAVAILABLE_EXIT, stderr
    assert stderr.startswith(b"error: ") and b"Traceback" not in stderr


@pytest.mark.timeout(240)
async def test_a_sidecar_stopped_with_sigterm_reaps_each_child_once(
    redis_url: str, unused_tcp_port: int
) -> None:
    # Each round stops it at another point of its children's start (importing, setting up,
    # taking turns, the fork server starting), where they exit on SIGTERM at once or soon.
    for delay_s in (0.0, 0.5, 1.0, 2.0):
        output = bytearray()
        process = await start_process(
            redis_url,
            unused_tcp_port,
            env={"OKRA_ENGINE_PROCESSES": "1", "OKRA_SLOW_EXPRESSION_MS": "100"},
            output=output,
        )
        await asyncio.sleep(delay_s)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=60) == 0
        # asyncio says this when something else reaped a child its watcher waits for.
        assert b"Unknown child process" not in output, output.decode(errors="replace")
        assert b"returncode 255" not in output, output.decode(errors="replace")
