"""EngineProcesses: engine turns in child processes, beside the process that serves rpcs.

One Python process runs one thread of Python at a time, so turns taken in the serving process
compete with the rpcs for it. With `engineProcesses: N` the sidecar starts N children that
only take turns (work streams, timers, reclaim) on the same Redis; the parent serves rpcs and
runs everything else. Turns are safe in any process, as in any sidecar, so nothing else
changes. Children are forked from a fork server (forking.py) where the platform allows, so
that a replacement costs milliseconds rather than a second of imports. A child that dies is
started again; the children die with the parent (PDEATHSIG
SIGKILL, which reaches a child stuck in jq where SIGTERM would wait for its event loop), and
whatever they had in flight is reclaimed like any stopped worker's.

The children are also where expressions are bounded: each shares a TurnBoard with the parent,
which kills a child whose evaluation or turn runs over budget and fails that instance
(engine/runtime/watchdog.py), and each caps its own data segment (`engineMemoryMb` above its size
once started), so that jq's allocations fail inside the child rather than exhaust the host.

A child stuck in one expression holds up every other turn it has in flight, for as long as the
budget allows. So one more child keeps the slow lane: an evaluation that runs past
`slowExpressionMs` in a regular child (or a turn that crashes one) gets its instance marked
slow and the child killed at once; the spare takes its place, and from then on the regular
children forward that instance's work to the slow lane, where its expressions have their whole
budget and hold up only instances like it. Workflows not yet proven fast go there from their
first instance (probation.py), so that a new hostile workflow costs no regular child: an
evaluation past `slowExpressionMs` in the slow lane's child marks its instance slow and lowers
that child's priority, without killing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from okra_sidecar.config import Settings
from okra_sidecar.engine.runtime.board import BoardReading, TurnBoard
from okra_sidecar.engine.runtime.cpu_clock import EvaluationClock, thread_cpu_ns
from okra_sidecar.engine.runtime.forking import (
    ForkedChild,
    ForkServer,
    ForkServerError,
    fork_supported,
    start_engine_command,
)
from okra_sidecar.engine.runtime.priority import lower_priority
from okra_sidecar.engine.runtime.runner import EngineLane
from okra_sidecar.engine.runtime.throttle import SlowLaneThrottle
from okra_sidecar.engine.runtime.watchdog import (
    TurnBudget,
    TurnVerdict,
    crash_fault,
    judge,
    running_slow,
)
from okra_sidecar.store.embedded import terminate_with_parent
from okra_sidecar.subprocesses import signal_child
from okra_sidecar.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
PARENT_PID_ENV = "OKRA_ENGINE_PARENT_PID"
BOARD_FD_ENV = "OKRA_ENGINE_BOARD_FD"
CONSUMER_ENV = "OKRA_ENGINE_CONSUMER"
LANE_ENV = "OKRA_ENGINE_LANE"
# A spare child sets itself up, then waits for SIGUSR1 before it takes any turn.
STANDBY_ENV = "OKRA_ENGINE_STANDBY"
# An engine child's exit when it could not reach Redis (a failover, a restart): no turn of
# its own was at fault, so nothing is counted against an instance; the parent starts another.
STORE_UNAVAILABLE_EXIT = 75  # EX_TEMPFAIL
SPARE_READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
WATCH_INTERVAL_S = 0.1
# Fails an instance from outside its turn: (instance id, problem) -> whether it was failed.
FaultHook = Callable[[str, dict[str, Any]], Awaitable[bool]]
# Sends an instance's turns to the slow lane from now on: (instance id, now in epoch ms).
SlowHook = Callable[[str, int], Awaitable[None]]
# A child started here, or forked by the fork server: the same surface.
ChildProcess = asyncio.subprocess.Process | ForkedChild


class EngineProcesses:
    """Starts, restarts and stops the engine children of one sidecar."""

    def __init__(
        self,
        *,
        settings: Settings,
        count: int,
        on_fault: FaultHook,
        on_exit: Callable[[str], Awaitable[None]] | None = None,
        on_slow: SlowHook | None = None,
    ) -> None:
        # The children get the parent's settings as they are (flags, files and variables
        # already applied), through their standard input.
        self._payload = pickle.dumps(settings)
        self._slow_ms = settings.engine.slow_expression_ms if on_slow is not None else 0
        self._on_slow = on_slow
        # The regular children, then the slow lane's (engine/runner.py EngineLane). Without a
        # slow lane here, the children take every turn: none may wait for a lane nobody reads.
        self._regular = EngineLane.REGULAR if self._slow_ms else EngineLane.ALL
        self._lanes = [self._regular] * count + ([EngineLane.SLOW] if self._slow_ms else [])
        count = len(self._lanes)
        self._count = count
        self._budget = TurnBudget(
            expression_ms=settings.engine.expression_timeout_ms,
            turn_ms=settings.engine.turn_timeout_ms,
        )
        self._crash_retries = settings.engine.crash_retries
        self._on_fault = on_fault
        # Told the consumer name of each child that died, so its work is taken over at once.
        self._on_exit = on_exit
        self._names: list[str] = [""] * count
        self._children: list[ChildProcess | None] = [None] * count
        self._boards: list[TurnBoard] = [TurnBoard(None)] * count
        self._verdicts: dict[int, TurnVerdict] = {}
        # Regular children killed to move an instance to the slow lane, by slot.
        self._moved: dict[int, str] = {}
        # The evaluation (its start stamp) the slow lane's child was last lowered for.
        self._lowered_for: dict[int, int] = {}
        # What each child's evaluation in progress has had of the CPU, for the slow lane.
        self._clocks = [EvaluationClock() for _ in range(count)]
        # Holds the slow lane's child in part while regular turns run (throttle.py).
        self._throttle = SlowLaneThrottle()
        # Crashes in the middle of a turn, by instance (this sidecar's children only).
        self._crashes: dict[str, int] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False
        # A child started ahead, set up but idle, that replaces the next one to die: a new
        # Python process takes seconds to start, while the turns of the dead one wait.
        self._keep_spare = settings.engine.spare
        self._spare: _Spawned | None = None
        # Children are forked from a process that has imported everything (milliseconds),
        # rather than started anew (a second of CPU), where the platform allows it.
        self._forks: ForkServer | None = None
        if fork_supported():
            self._forks = ForkServer(
                payload=self._payload, parent_env={PARENT_PID_ENV: str(os.getpid())}
            )

    @property
    def pids(self) -> list[int]:
        """The children taking regular turns (not the spare, nor the slow lane's)."""
        return [
            c.pid
            for c, lane in zip(self._children, self._lanes, strict=True)
            if c is not None and c.returncode is None and lane is not EngineLane.SLOW
        ]

    @property
    def slow_pid(self) -> int | None:
        """The child of the slow lane, if it runs."""
        for child, lane in zip(self._children, self._lanes, strict=True):
            if lane is EngineLane.SLOW and child is not None and child.returncode is None:
                return child.pid
        return None

    @property
    def spare_pid(self) -> int | None:
        return None if self._spare is None else self._spare.process.pid

    @property
    def fork_server_pid(self) -> int | None:
        return None if self._forks is None else self._forks.pid

    async def start(self) -> None:
        # The first children start the old way, and the fork server only once they have set
        # themselves up: forking them would hold up the sidecar's start for the fork server's
        # imports, and its imports beside theirs would slow them all. It forks the rest.
        for slot in range(self._count):
            self._install(slot, await self._spawn(standby=False, lane=self._lanes[slot]))
            self._supervisors.append(asyncio.create_task(self._supervise(slot)))
        if self._keep_spare:
            self._spare = await self._spawn(standby=True)
        if self._forks is not None:
            self._supervisors.append(asyncio.create_task(self._start_fork_server()))
        self._supervisors.append(asyncio.create_task(self._watch(), name="okra-engine-watch"))

    def _install(self, slot: int, spawned: _Spawned) -> None:
        self._boards[slot].close()
        self._children[slot] = spawned.process
        self._boards[slot] = spawned.board
        self._names[slot] = spawned.name

    async def _replacement(self, lane: EngineLane) -> _Spawned:
        """The spare, told to start taking turns once it is ready, or else a new child.

        The slow lane's child is always a new one: its turns can wait for it to start.
        """
        if lane is EngineLane.SLOW:
            return await self._spawn(standby=False, lane=lane)
        spare, self._spare = self._spare, None
        if spare is not None and await _ready(spare):
            _signal(spare.process, signal.SIGUSR1)
            chosen = spare
        else:
            if spare is not None:
                await _end(spare.process)
                spare.board.close()
            chosen = await self._spawn(standby=False)
        return chosen

    async def _replenish_spare(self) -> None:
        # Only once the replacement is installed: until then the watchdog does not see its
        # turns, and a new spare may take a while (a fork server still importing).
        if self._keep_spare and not self._stopping and self._spare is None:
            self._spare = await self._spawn(standby=True)

    async def _start_fork_server(self) -> None:
        """Start the fork server once the first children are set up (bounded wait)."""
        assert self._forks is not None
        deadline = time.monotonic() + SPARE_READY_TIMEOUT_S
        while time.monotonic() < deadline and not self._stopping:
            boards = [*self._boards, *([] if self._spare is None else [self._spare.board])]
            if all(board.ready for board in boards):
                break
            await asyncio.sleep(0.05)
        try:
            await self._forks.start()
        except OSError as exc:
            logger.warning("could not start the engine fork server: %s", exc)

    async def _spawn(self, *, standby: bool, lane: EngineLane | None = None) -> _Spawned:
        lane = lane or self._regular
        board, fd = TurnBoard.create()
        name = f"{socket.gethostname()}-{os.getpid()}-engine-{uuid.uuid4().hex[:8]}"
        own = {CONSUMER_ENV: name, STANDBY_ENV: "1" if standby else "", LANE_ENV: lane.value}
        if self._forks is not None and self._forks.started:
            forking = asyncio.ensure_future(self._forks.fork(own, fd))
            try:
                # Shielded: a child forked for a caller cancelled meanwhile (the sidecar
                # stopping) is killed when it arrives instead of living on unwatched.
                forked = await asyncio.shield(forking)
            except ForkServerError as exc:
                logger.warning("starting an engine process anew: %s", exc)
                await self._restart_fork_server()
            except asyncio.CancelledError:
                forking.add_done_callback(lambda done: _discard(done, fd, board))
                raise
            else:
                os.close(fd)  # the child has its own copy
                return _Spawned(forked, board, name)
        env = {**os.environ, PARENT_PID_ENV: str(os.getpid()), BOARD_FD_ENV: str(fd), **own}
        # No preexec_fn: it forces a fork() whose handlers race gRPC's threads ("skipping
        # fork() handlers"); without it Python spawns with vfork. The child asks for
        # PDEATHSIG itself (adopt_parent) and checks this pid is still its parent.
        try:
            process = await start_engine_command(env, fd, self._payload)
        finally:
            os.close(fd)  # the parent keeps its mapping, the child its own descriptor
        return _Spawned(process, board, name)

    async def _restart_fork_server(self) -> None:
        """Replace a fork server that died (its start is a cold one, once)."""
        if self._forks is None or self._stopping:
            return
        await self._forks.stop(timeout_s=STOP_TIMEOUT_S)
        try:
            await self._forks.start()
        except OSError as exc:
            logger.warning("could not start the engine fork server again: %s", exc)

    async def _supervise(self, slot: int) -> None:
        while not self._stopping:
            child = self._children[slot]
            assert child is not None
            code = await child.wait()
            if self._stopping:
                return
            verdict = self._verdicts.pop(slot, None)
            moved = self._moved.pop(slot, None)
            if verdict is None and moved is None:
                if code == STORE_UNAVAILABLE_EXIT:
                    logger.warning(
                        "engine process %d could not reach Redis; starting another", child.pid
                    )
                else:
                    logger.error(
                        "engine process %d exited with %s; starting another", child.pid, code
                    )
                    moved = await self._move_crashed(slot)
                    if moved is None:
                        verdict = self._crashed(slot)
            # Retired after any move: its work is taken over at once, and must find the mark.
            await self._retire(slot)
            if verdict is not None:
                await self._fail(verdict)
            # A child stopped on purpose (or for a turn now in the slow lane) is replaced at once.
            delay = 0.0 if verdict is not None or moved is not None else RESTART_DELAY_S
            await asyncio.sleep(delay)
            if not self._stopping:
                self._install(slot, await self._replacement(self._lanes[slot]))
                if self._lanes[slot] is not EngineLane.SLOW:
                    await self._replenish_spare()

    async def _retire(self, slot: int) -> None:
        if self._on_exit is None:
            return
        try:
            await self._on_exit(self._names[slot])
        except Exception as exc:
            # Its heartbeat then expires on its own, a few seconds later.
            logger.warning("could not retire engine consumer %s: %s", self._names[slot], exc)

    async def _move_crashed(self, slot: int) -> str | None:
        """A regular child that died mid-turn: move that instance to the slow lane, where its
        crashes are counted; None when there is no slow lane or no turn was in progress (or
        the child was the slow lane's: its instance is marked slow, its crash counted)."""
        if not self._slow_ms or self._lanes[slot] is EngineLane.ALL:
            return None
        reading = self._boards[slot].read()
        if not reading.turn_started_ns or not reading.instance_id:
            return None
        why = "its turn crashed an engine process"
        if self._lanes[slot] is EngineLane.SLOW:
            # On probation, most likely: its workflow's next instances must not be proven.
            await self._move(reading.instance_id, why)
            return None
        if not await self._move(reading.instance_id, why):
            return None
        return reading.instance_id

    async def _move(self, instance_id: str, why: str) -> bool:
        """Mark the instance slow (and its workflow for a while); False if that failed."""
        assert self._on_slow is not None
        try:
            await self._on_slow(instance_id, int(time.time() * 1000))
        except Exception as exc:
            logger.warning("could not move instance %s to the slow lane: %s", instance_id, exc)
            return False
        logger.warning("instance %s is slow: %s", instance_id, why)
        return True

    async def _lower_slow_lane(self, slot: int, pid: int, reading: BoardReading, now: int) -> None:
        """An evaluation in the slow lane's child past slowExpressionMs (a workflow on
        probation, most likely): mark its instance slow and lower the child's priority, once
        per evaluation; its budget there still decides whether it fails."""
        ran_ms = self._clocks[slot].elapsed_ms(pid, reading.evaluation_started_ns, now)
        slow = running_slow(reading, ran_ms, self._slow_ms)
        if slow is None or self._lowered_for.get(slot) == reading.evaluation_started_ns:
            return
        self._lowered_for[slot] = reading.evaluation_started_ns
        with contextlib.suppress(OSError):
            lower_priority(pid)
        await self._move(slow, f"an expression ran past {self._slow_ms} ms (slowExpressionMs)")

    def _crashed(self, slot: int) -> TurnVerdict | None:
        """A child that died mid-turn: count it against the instance; fail it past the limit."""
        reading = self._boards[slot].read()
        if not reading.turn_started_ns or not reading.instance_id:
            return None
        crashes = self._crashes.get(reading.instance_id, 0) + 1
        if crashes <= self._crash_retries:
            self._crashes[reading.instance_id] = crashes
            logger.warning(
                "engine process died in a turn of %s (%d of %d retries)",
                reading.instance_id,
                crashes,
                self._crash_retries,
            )
            return None
        self._crashes.pop(reading.instance_id, None)
        return TurnVerdict(reading.instance_id, crash_fault(reading, crashes))

    async def _fail(self, verdict: TurnVerdict) -> None:
        logger.warning("failing instance %s: %s", verdict.instance_id, verdict.error["title"])
        try:
            await self._on_fault(verdict.instance_id, verdict.error)
        except Exception:
            # Left as it is, the instance's turn is reclaimed and judged again.
            logger.exception("could not fail instance %s", verdict.instance_id)

    async def _watch(self) -> None:
        """Kill a child that stays in one evaluation or turn past its budget."""
        while not self._stopping:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic_ns()
            for slot, child in enumerate(self._children):
                if child is None or child.returncode is not None or slot in self._verdicts:
                    continue
                if slot in self._moved:
                    continue
                reading = self._boards[slot].read()
                verdict = judge(reading, now, self._budget)
                if self._lanes[slot] is EngineLane.REGULAR:
                    ran_ms = self._clocks[slot].elapsed_ms(
                        child.pid, reading.evaluation_started_ns, now
                    )
                    slow = running_slow(reading, ran_ms, self._slow_ms)
                    why = f"an expression ran past {self._slow_ms} ms (slowExpressionMs)"
                    if slow is None and verdict is not None:
                        # A child starved of CPU on a busy host can reach the wall-clock
                        # budget before slowExpressionMs of CPU: in a regular child that
                        # earns the slow lane, whose budgets then decide, not a failure.
                        slow, why = verdict.instance_id, verdict.error["title"]
                    if slow is None:
                        continue
                    # Marked before the kill: whoever takes over its work forwards it.
                    if await self._move(slow, why):
                        self._moved[slot] = slow
                    elif verdict is not None:
                        self._judged(slot, child.pid, verdict)
                    else:
                        continue
                elif verdict is not None:
                    if (
                        self._slow_ms
                        and self._lowered_for.get(slot) != reading.evaluation_started_ns
                    ):
                        # Over budget on probation before its CPU told (a starved child):
                        # its workflow must not be proven by its next instances' turns.
                        await self._move(verdict.instance_id, verdict.error["title"])
                    self._judged(slot, child.pid, verdict)
                else:
                    if self._slow_ms:
                        await self._lower_slow_lane(slot, child.pid, reading, now)
                    continue
                _signal(child, signal.SIGKILL)
            if self._lanes[-1] is EngineLane.SLOW:
                self._give_way()

    def _give_way(self) -> None:
        """Hold or release the slow lane's child for the next interval (throttle.py)."""
        busy = self._throttle.regular_busy(sum(thread_cpu_ns(pid) or 0 for pid in self.pids))
        slot = len(self._lanes) - 1
        child = self._children[slot]
        live = child is not None and child.returncode is None and slot not in self._verdicts
        pid = child.pid if live and child is not None else None
        evaluating = bool(self._boards[slot].read().evaluation_started_ns)
        self._throttle.tick(pid, evaluating=evaluating, busy=busy)

    def _judged(self, slot: int, pid: int, verdict: TurnVerdict) -> None:
        logger.warning("engine process %d: %s; killing it", pid, verdict.error["title"])
        self._verdicts[slot] = verdict

    async def stop(self) -> None:
        """SIGTERM every child (each finishes its turns in flight), then wait for them."""
        self._stopping = True
        await cancel_and_wait(self._supervisors)
        self._throttle.release()  # a held child would not see its SIGTERM
        children = [*self._children, None if self._spare is None else self._spare.process]
        live = [c for c in children if c is not None and c.returncode is None]
        for child in live:
            _signal(child, signal.SIGTERM)
        for child in live:
            await _end(child)
        if self._forks is not None:
            await self._forks.stop(timeout_s=STOP_TIMEOUT_S)


@dataclass(frozen=True)
class _Spawned:
    """A child just started: its process, the board it shares with us and its consumer name."""

    process: ChildProcess
    board: TurnBoard
    name: str


def _discard(forking: asyncio.Future[ForkedChild], fd: int, board: TurnBoard) -> None:
    """A fork nobody waits for any more: close its descriptors and kill the child, if any."""
    os.close(fd)
    board.close()
    if forking.cancelled() or forking.exception() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        forking.result().kill()


async def _ready(spare: _Spawned) -> bool:
    """Wait (bounded) until the spare says it is set up; False if it died or never did."""
    deadline = time.monotonic() + SPARE_READY_TIMEOUT_S
    while spare.process.returncode is None and time.monotonic() < deadline:
        if spare.board.ready:
            return True
        await asyncio.sleep(0.02)
    return False


def _signal(child: ChildProcess, signum: int) -> None:
    """Signal a child unless it has exited, leaving its reaping to its one owner: the pidfd
    of a forked child, asyncio's child watcher for one started here (subprocesses.py)."""
    if isinstance(child, ForkedChild):
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)
    else:
        signal_child(child, signum)


async def _end(child: ChildProcess) -> None:
    """Wait for a child told to stop; kill it after STOP_TIMEOUT_S."""
    _signal(child, signal.SIGTERM)
    try:
        await asyncio.wait_for(child.wait(), timeout=STOP_TIMEOUT_S)
    except TimeoutError:
        _signal(child, signal.SIGKILL)
        await child.wait()


def adopt_parent() -> bool:
    """In a child: die with the parent; False if it is gone already (or was never there)."""
    # SIGKILL: a child blocked inside an evaluation never runs a SIGTERM handler.
    terminate_with_parent(signal.SIGKILL)
    expected = os.environ.get(PARENT_PID_ENV)
    # Checked after PDEATHSIG is set, so a parent that dies in between is still noticed.
    return expected is not None and os.getppid() == int(expected)


def read_settings() -> Settings:
    """In a child: the settings its parent wrote to standard input."""
    settings = pickle.loads(sys.stdin.buffer.read())
    if not isinstance(settings, Settings):
        raise TypeError("the engine process expects Settings on standard input")
    return settings


def attach_board() -> TurnBoard:
    """In a child: the board its parent shares with it (one that marks nothing without)."""
    fd = os.environ.get(BOARD_FD_ENV)
    return TurnBoard(None) if fd is None else TurnBoard.attach(int(fd))
