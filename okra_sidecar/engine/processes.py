"""EngineProcesses: engine turns in child processes, beside the process that serves rpcs.

One Python process runs one thread of Python at a time, so turns taken in the serving process
compete with the rpcs for it. With `engineProcesses: N` the sidecar starts N children that
only take turns (work streams, timers, reclaim) on the same Redis; the parent serves rpcs and
runs everything else. Turns are safe in any process, as in any sidecar, so nothing else
changes. A child that dies is started again; the children die with the parent (PDEATHSIG),
and whatever they had in flight is reclaimed like any stopped worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import sys

from okra_sidecar.config import Settings
from okra_sidecar.store.embedded import terminate_with_parent
from okra_sidecar.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
PARENT_PID_ENV = "OKRA_ENGINE_PARENT_PID"
STOP_TIMEOUT_S = 15.0


class EngineProcesses:
    """Starts, restarts and stops the engine children of one sidecar."""

    def __init__(self, *, settings: Settings, count: int) -> None:
        # The children get the parent's settings as they are (flags, files and variables
        # already applied), through their standard input.
        self._payload = pickle.dumps(settings)
        self._count = count
        self._children: list[asyncio.subprocess.Process | None] = [None] * count
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self._children if c is not None and c.returncode is None]

    async def start(self) -> None:
        for slot in range(self._count):
            self._children[slot] = await self._spawn()
            self._supervisors.append(asyncio.create_task(self._supervise(slot)))

    async def _spawn(self) -> asyncio.subprocess.Process:
        # No preexec_fn: it forces a fork() whose handlers race gRPC's threads ("skipping
        # fork() handlers"); without it Python spawns with vfork. The child asks for
        # PDEATHSIG itself (adopt_parent) and checks this pid is still its parent.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "okra_sidecar",
            "engine",
            stdin=asyncio.subprocess.PIPE,
            env={**os.environ, PARENT_PID_ENV: str(os.getpid())},
        )
        assert process.stdin is not None
        process.stdin.write(self._payload)
        await process.stdin.drain()
        process.stdin.close()
        return process

    async def _supervise(self, slot: int) -> None:
        while not self._stopping:
            child = self._children[slot]
            assert child is not None
            code = await child.wait()
            if self._stopping:
                return
            logger.error("engine process %d exited with %s; starting another", child.pid, code)
            await asyncio.sleep(RESTART_DELAY_S)
            if not self._stopping:
                self._children[slot] = await self._spawn()

    async def stop(self) -> None:
        """SIGTERM every child (each finishes its turns in flight), then wait for them."""
        self._stopping = True
        await cancel_and_wait(self._supervisors)
        live = [c for c in self._children if c is not None and c.returncode is None]
        for child in live:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        for child in live:
            try:
                await asyncio.wait_for(child.wait(), timeout=STOP_TIMEOUT_S)
            except TimeoutError:
                child.kill()
                await child.wait()


def adopt_parent() -> bool:
    """In a child: die with the parent; False if it is gone already (or was never there)."""
    terminate_with_parent()
    expected = os.environ.get(PARENT_PID_ENV)
    # Checked after PDEATHSIG is set, so a parent that dies in between is still noticed.
    return expected is not None and os.getppid() == int(expected)


def read_settings() -> Settings:
    """In a child: the settings its parent wrote to standard input."""
    settings = pickle.loads(sys.stdin.buffer.read())
    if not isinstance(settings, Settings):
        raise TypeError("the engine process expects Settings on standard input")
    return settings
