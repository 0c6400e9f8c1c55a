"""EngineRunner: takes turns from the work streams and applies their effects through the store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from okra_sidecar.clock import now_ms
from okra_sidecar.config import EngineSettings
from okra_sidecar.engine.interpreter.effects import RUNTIME_ERROR
from okra_sidecar.engine.interpreter.interpreter import (
    InboxSignal,
    TurnOutcome,
    TurnResult,
    advance,
)
from okra_sidecar.engine.runtime import board as turn_board
from okra_sidecar.engine.runtime import deadlines
from okra_sidecar.engine.runtime.outbox import turn_extras
from okra_sidecar.engine.runtime.probation import Probation
from okra_sidecar.engine.runtime.registry import RegisteredWorkflow, WorkflowRegistry
from okra_sidecar.errors import NotFoundError, StoreUnavailableError
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.base import Store, TurnCommit, TurnSnapshot, WorkItem
from okra_sidecar.tasks import cancel_and_wait
from okra_sidecar.telemetry.metrics import SidecarMetrics
from okra_sidecar.telemetry.repeats import RepeatedWarnings
from okra_sidecar.telemetry.turns import TurnTracer

logger = logging.getLogger(__name__)
# A failover fails every loop and turn for seconds: a line per kind every few seconds.
_outages = RepeatedWarnings(logger)

OUTCOME_STATUS = {
    TurnOutcome.RUNNING: InstanceStatus.RUNNING,
    TurnOutcome.WAITING: InstanceStatus.WAITING,
    TurnOutcome.COMPLETED: InstanceStatus.COMPLETED,
    TurnOutcome.FAILED: InstanceStatus.FAILED,
}
MAX_COMMIT_ATTEMPTS = 8
# How often a runner of either lane reads which workflows go to the slow lane.
SLOW_DEFINITIONS_REFRESH_S = 0.5


class EngineLane(StrEnum):
    """Which work a runner takes (engine/processes.py keeps a slow lane beside the others).

    ALL: every regular work item, whatever the instance (turns in the serving process).
    REGULAR: regular work items; those of instances marked slow, and of workflows not yet
        proven fast (probation.py), move to the slow lane.
    SLOW: only the slow lane, where an instance's expressions may use their whole budget and
        workflows on probation prove themselves.
    """

    ALL = "all"
    REGULAR = "regular"
    SLOW = "slow"


# Told of every instance that fails: (instance id, workflow id, error). Policies raise alerts.
FailureHook = Callable[[str, str, dict[str, Any] | None], Awaitable[None]]
# Takes over work left by consumers that stopped beating, and this one's own not in the
# given entry ids (store/liveness.py): (consumer, held) -> items.
OrphanClaim = Callable[[str, Collection[str]], Awaitable[list[WorkItem]]]


@dataclass(frozen=True)
class _PolicyTimeout:
    """A timed-out turn, as the turn telemetry reads a result."""

    commit: TurnCommit
    changed: bool = True
    consumed: list[str] = field(default_factory=list)

    @property
    def current_step(self) -> str:
        return self.commit.current_step

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.commit.history

    @property
    def outcome(self) -> str:
        return self.commit.status.value


class EngineRunner:
    """One per sidecar: every sidecar's runner reads every partition through one consumer group.

    A turn loads the snapshot, runs the pure interpreter and commits guarded by the revision
    it loaded. A turn that runs twice (a crash before the ack, a duplicate work item) finds the
    revision moved or nothing to do, so it changes nothing the second time.
    """

    def __init__(
        self,
        *,
        store: Store,
        registry: WorkflowRegistry,
        settings: EngineSettings,
        consumer: str,
        clock: Callable[[], int] = now_ms,
        turns: TurnTracer | None = None,
        on_failure: FailureHook | None = None,
        orphans: OrphanClaim | None = None,
        lane: EngineLane = EngineLane.ALL,
    ) -> None:
        self._store = store
        self._lane = lane
        self._slow = lane is EngineLane.SLOW
        # Workflows whose instances all go to the slow lane for now, and those proven fast
        # (probation.py), whose turns the regular lane takes (both lanes but ALL read them).
        self._slow_workflows: frozenset[str] = frozenset()
        self._proven: frozenset[str] = frozenset()
        self._probation = (
            Probation(store, slow_ms=settings.slow_expression_ms) if self._slow else None
        )
        self._orphans = orphans
        self._on_failure = on_failure
        self._turn_telemetry = turns or TurnTracer(tracer=None, metrics=SidecarMetrics())
        self._registry = registry
        self._settings = settings
        self._consumer = consumer
        self._clock = clock
        # Instances with a turn in flight, and work that arrived for them meanwhile.
        self._inflight: dict[str, list[WorkItem]] = {}
        # Entry ids of the work dispatched here and not yet finished: ours to keep.
        self._held: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._turns: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return bool(self._tasks)

    async def start(self) -> None:
        await self._store.ensure_groups()
        if self._lane is not EngineLane.ALL:
            # Known before the first turn: a spare taking over the work of a child killed for
            # a slow expression must forward that workflow's other instances, not run them.
            await self._read_lane_definitions()
        self._stopping.clear()
        self._tasks = [
            asyncio.create_task(self._loop("work", self._read_once), name="okra-work"),
            asyncio.create_task(self._loop("reclaim", self._reclaim_once), name="okra-reclaim"),
        ]
        if not self._slow:
            # Due timers go to the regular lane; the slow lane gets them forwarded from there.
            timers = asyncio.create_task(
                self._loop("timers", self._timers_once), name="okra-timers"
            )
            self._tasks.append(timers)
        if self._lane is not EngineLane.ALL:
            watch = asyncio.create_task(self._loop("slow lane", self._slow_definitions_once))
            self._tasks.append(watch)
        if self._orphans is not None:
            orphans = asyncio.create_task(self._loop("orphans", self._orphans_once))
            self._tasks.append(orphans)

    async def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop reading new work and let the turns in flight finish (unacked ones are retried)."""
        self._stopping.set()
        await cancel_and_wait(self._tasks)
        if self._turns:
            await asyncio.wait(self._turns, timeout=timeout_s)
        await cancel_and_wait(self._turns)
        self._tasks = []

    async def _loop(self, name: str, once: Callable[[], Any]) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                await once()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as exc:
                _outages.warning(
                    (name, exc.reason), "engine %s loop: %s; retrying in %.1fs", name, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                logger.exception("engine %s loop failed; retrying", name)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _read_once(self) -> None:
        while len(self._turns) >= self._settings.concurrency:
            await asyncio.wait(self._turns, return_when=asyncio.FIRST_COMPLETED)
        free = self._settings.concurrency - len(self._turns)
        items = await self._store.read_work(
            self._consumer, count=free, block_ms=self._settings.read_block_ms, slow=self._slow
        )
        self.dispatch(items)
        linger = self._settings.read_linger_ms
        if items and len(items) < free and linger:
            # A short batch means work is trickling in: let more of it arrive, so that the
            # next read, and the loads and commits of its turns, each serve several items.
            await asyncio.sleep(linger / 1000)

    async def _slow_definitions_once(self) -> None:
        await self._read_lane_definitions()
        await asyncio.sleep(SLOW_DEFINITIONS_REFRESH_S)

    async def _read_lane_definitions(self) -> None:
        self._slow_workflows = await self._store.slow_definitions(self._clock())
        self._proven = await self._store.proven_definitions()

    async def _timers_once(self) -> None:
        await self._store.fire_timers(self._clock(), limit=1000)
        await asyncio.sleep(self._settings.timer_interval_ms / 1000)

    async def _reclaim_once(self) -> None:
        await asyncio.sleep(self._settings.claim_idle_ms / 2000)
        items = await self._store.claim_stale_work(
            self._consumer, min_idle_ms=self._settings.claim_idle_ms, count=100, slow=self._slow
        )
        if items:
            logger.info("reclaimed %d work items left by a stopped worker", len(items))
        self.dispatch(items)

    async def _orphans_once(self) -> None:
        # Looked at first, then waited: a spare started in place of a child that died takes
        # over the work it left (marked dead already) at once, not half a beat later.
        assert self._orphans is not None
        items = await self._orphans(self._consumer, self._held)
        if items:
            logger.info("took over %d work items of a consumer that stopped", len(items))
        self.dispatch(items)
        await asyncio.sleep(self._settings.heartbeat_ms / 2000)

    def dispatch(self, items: list[WorkItem]) -> None:
        """Start a turn per instance; work for an instance already in a turn waits for it."""
        for item in items:
            self._held.add(item.entry_id)
            waiting = self._inflight.get(item.instance_id)
            if waiting is not None:
                waiting.append(item)
                continue
            self._inflight[item.instance_id] = []
            task = asyncio.create_task(self._serve_instance(item))
            self._turns.add(task)
            task.add_done_callback(self._turns.discard)

    async def _serve_instance(self, first: WorkItem) -> None:
        instance_id = first.instance_id
        batch = [first]
        held = self._held
        try:
            while batch:
                if not await self.run_turn(instance_id, work=batch):
                    await self._store.ack_work(batch)
                for item in batch:
                    held.discard(item.entry_id)
                batch = self._inflight.get(instance_id) or []
                self._inflight[instance_id] = []
        except StoreUnavailableError as exc:
            # Unacknowledged: the work stays pending and is reclaimed when Redis is back.
            _outages.warning(("turn", exc.reason), "turn of %s interrupted: %s", instance_id, exc)
        except Exception:
            logger.exception("turn of %s failed; its work will be retried", instance_id)
        finally:
            # Whatever is left stays pending: the orphan claim takes it back once idle.
            # (Usually nothing: the loop above ends on an empty batch.)
            for item in (*batch, *(self._inflight.pop(instance_id, None) or ())):
                held.discard(item.entry_id)

    async def run_turn(self, instance_id: str, *, work: list[WorkItem] | None = None) -> bool:
        """Carry one instance forward until it blocks or ends, retrying on a revision race.

        Returns True when `work` is acknowledged (by the turn's commit, or forwarded).
        """
        # The commit acknowledges entries of the regular work stream only: a slow lane entry's
        # id named there could be another entry's of that stream (ids are per stream), so those
        # are acknowledged by the caller, in their own stream, once the turn returns False.
        acks = tuple(item.entry_id for item in work or () if not item.slow)
        acked = len(acks) == len(work or ())
        due = [item.due_ms for item in work or () if item.due_ms is not None]
        timer_fired = bool(due)
        for _ in range(MAX_COMMIT_ATTEMPTS):
            started_ns = time.time_ns()
            snapshot = await self._store.load_turn(instance_id)
            if snapshot is None or snapshot.status.finished:
                return False
            if snapshot.status is InstanceStatus.SUSPENDED:
                return False
            workflow_id = snapshot.workflow_id
            slow = snapshot.slow or workflow_id in self._slow_workflows
            on_probation = not slow and workflow_id not in self._proven
            if self._lane is EngineLane.REGULAR and (slow or on_probation):
                # Its expressions ran long once, or have not yet shown they never do: the slow
                # lane's process takes its turns, so that they never hold up the others'.
                await self._store.forward_to_slow_lane(list(work or ()))
                return True
            # Each attempt is a span in the Run's trace, current while it runs.
            with self._turn_telemetry.turn(snapshot, started_ns=started_ns, due_ms=due) as turn:
                due = []
                now = self._clock()
                registered = await self._registered(snapshot.workflow_id)
                definition = (
                    None if isinstance(registered, NotFoundError) else registered.definition
                )
                # Policy timeouts (maxDurationMinutes, defaultTimeoutMs) come before the turn.
                expiry = deadlines.expired(snapshot, definition, now)
                if expiry is not None:
                    commit = replace(
                        deadlines.timeout_commit(snapshot, expiry, now, definition), acks=acks
                    )
                    committed = await self._store.commit_turn(snapshot, commit)
                    outcome = _PolicyTimeout(commit)
                    turn.finish(outcome, committed=committed, status=commit.status.value)
                    if committed:
                        await self._after_commit(snapshot, commit)
                        return acked
                    continue
                interpreting_ns = time.time_ns()
                result, cpu_ns = self._advance(snapshot, registered, now, slow=slow)
                turn.interpreted(interpreting_ns)
                if self._probation is not None and on_probation:
                    if await self._probation.end_turn(workflow_id, cpu_ns):
                        self._proven |= {workflow_id}
                # A timer that fired early took the policy timer with it: commit to re-arm it.
                rearm = timer_fired and deadlines.has_policy_timeouts(snapshot)
                if not result.changed and result.wake_at_ms is None and not rearm:
                    return False
                status = OUTCOME_STATUS[result.outcome]
                step_started, wake_at = deadlines.arm(
                    status, result.current_step, result.wake_at_ms, now, snapshot, definition
                )
                commit = self._to_commit(
                    result,
                    now,
                    snapshot,
                    acks=acks,
                    step_started_ms=step_started,
                    wake_at_ms=wake_at,
                )
                committed = await self._store.commit_turn(snapshot, commit)
                turn.finish(result, committed=committed, status=commit.status.value)
                if committed:
                    await self._after_commit(snapshot, commit)
                    return acked
        logger.warning("instance %s kept changing under its turn; requeued", instance_id)
        return False

    async def _registered(self, workflow_id: str) -> RegisteredWorkflow | NotFoundError:
        """The turn's workflow, or why there is none (the turn fails the instance with it)."""
        try:
            return await self._registry.get(workflow_id)
        except NotFoundError as exc:
            return exc

    async def _after_commit(self, snapshot: TurnSnapshot, commit: TurnCommit) -> None:
        if commit.status is not InstanceStatus.FAILED or self._on_failure is None:
            return
        try:
            await self._on_failure(snapshot.instance_id, snapshot.workflow_id, commit.error)
        except Exception:
            # An alert that cannot be raised must not undo or repeat the turn.
            logger.exception("failure hook for instance %s failed", snapshot.instance_id)

    def _advance(
        self,
        snapshot: TurnSnapshot,
        registered: RegisteredWorkflow | NotFoundError,
        now: int,
        *,
        slow: bool,
    ) -> tuple[TurnResult, int]:
        """The turn's result, and the CPU its interpretation took (slow lane only, else 0)."""
        if isinstance(registered, NotFoundError):
            return self._fault(snapshot, now, "definition not found", str(registered)), 0
        signals = [InboxSignal(entry.entry_id, entry.event) for entry in snapshot.inbox]
        # The board tells an engine child's watchdog whose turn this is (engine/runtime/board.py).
        board = turn_board.current()
        board.begin_turn(snapshot.instance_id)
        # Read around the interpretation alone: other turns run in this thread at any await.
        began_cpu_ns = 0 if self._probation is None else self._probation.begin_turn(slow=slow)
        try:
            result = advance(
                registered.definition,
                snapshot.state,
                signals=signals,
                now_ms=now,
                max_steps=self._settings.max_steps_per_turn,
            )
        except Exception as exc:
            # A bug must fail one instance, not loop on it forever.
            logger.exception("interpreter failed on instance %s", snapshot.instance_id)
            result = self._fault(snapshot, now, "runtime error", f"{type(exc).__name__}: {exc}")
        finally:
            board.end_turn()
        return result, (time.thread_time_ns() - began_cpu_ns if began_cpu_ns else 0)

    async def fail_instance(self, instance_id: str, error: dict[str, Any]) -> bool:
        """Fail an instance from outside its turn: its turn was stopped over budget, or kept
        crashing the process that took it. False when it had finished already.

        Its work items stay pending for the stopped consumer; the turn that reclaims them
        finds the instance finished and acknowledges them.
        """
        for _ in range(MAX_COMMIT_ATTEMPTS):
            snapshot = await self._store.load_turn(instance_id)
            if snapshot is None or snapshot.status.finished:
                return False
            now = self._clock()
            result = fault_result(snapshot, now, error)
            commit = self._to_commit(result, now, snapshot)
            if await self._store.commit_turn(snapshot, commit):
                await self._after_commit(snapshot, commit)
                return True
        return False

    @staticmethod
    def _fault(snapshot: TurnSnapshot, now: int, title: str, detail: str) -> TurnResult:
        error = {"type": RUNTIME_ERROR, "status": 500, "title": title, "detail": detail}
        return fault_result(snapshot, now, {**error, "instance": "/"})

    @staticmethod
    def _to_commit(
        result: TurnResult,
        now: int,
        snapshot: TurnSnapshot,
        *,
        acks: tuple[str, ...] = (),
        step_started_ms: int | None = None,
        wake_at_ms: int | None = None,
    ) -> TurnCommit:
        """The commit of `result`; `step_started_ms` and `wake_at_ms` as deadlines.arm gives
        them (a `wake_at_ms` of None: the result's own)."""
        return TurnCommit(
            status=OUTCOME_STATUS[result.outcome],
            state=result.state,
            current_step=result.current_step,
            context=result.context,
            output=result.output,
            error=result.error,
            consumed=result.consumed,
            wake_at_ms=result.wake_at_ms if wake_at_ms is None else wake_at_ms,
            step_started_ms=step_started_ms,
            requeue=result.outcome is TurnOutcome.RUNNING,
            history=result.history,
            now_ms=now,
            extras=turn_extras(snapshot, result, now),
            acks=acks,
        )


def fault_result(snapshot: TurnSnapshot, now: int, error: dict[str, Any]) -> TurnResult:
    """A turn that fails the instance with `error` (a problem with its `instance` pointer)."""
    event_error = {key: value for key, value in error.items() if key != "instance"}
    return TurnResult(
        state=snapshot.state,
        outcome=TurnOutcome.FAILED,
        current_step="",
        output=None,
        error=error,
        context=snapshot.state.get("context", {}),
        consumed=[],
        wake_at_ms=None,
        history=[{"type": "workflow.faulted", "time": now, "error": event_error}],
        changed=True,
    )
