"""EffectDispatcher: every sidecar's executors, reading the effects streams.

Effects are read through one consumer group with bounded concurrency. An effect is
acknowledged only in the step that delivers its result (deliver.lua) or hands it on (a worker
task, a child run), so a sidecar that dies mid-call leaves it pending: another sidecar claims
it once it has been idle for `claim_idle_ms` and runs it again (at least once). Effects still
running here are kept from looking idle by re-claiming them to ourselves now and then.

Calls (http, grpc, openapi) hold a slot while they wait for an answer: at most
`maxCallTimeout`, whatever the definition asks; a call whose instance ended meanwhile
(cancelled, failed, timed out) is aborted within half a second and its effect acknowledged,
which frees its slot; and one workflow's calls hold at most its share of the slots
(executors/slots.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from opentelemetry.trace import Tracer

from okra_sidecar.clock import now_ms
from okra_sidecar.engine.interpreter.effects import Effect, EffectKind, iso_time, result_event
from okra_sidecar.engine.runtime.outbox import emitted_event
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.errors import NotFoundError, StoreUnavailableError
from okra_sidecar.executors.children import ChildStarter
from okra_sidecar.executors.grpc_call import GrpcCaller
from okra_sidecar.executors.http import HttpCaller
from okra_sidecar.executors.loops import run_forever
from okra_sidecar.executors.openapi import OpenApiCaller
from okra_sidecar.executors.problems import EffectFailedError, problem
from okra_sidecar.executors.slots import WorkflowSlots
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.effect_store import EffectEntry, RedisEffectStore
from okra_sidecar.tasks import cancel_and_wait
from okra_sidecar.telemetry import tracing
from okra_sidecar.telemetry.effects import EffectTracer
from okra_sidecar.telemetry.repeats import RepeatedWarnings

__all__ = ["EffectDispatcher"]

logger = logging.getLogger(__name__)
# A failover fails each attempt for seconds: a line per kind every few seconds.
_outages = RepeatedWarnings(logger)

CALL_KINDS = frozenset({EffectKind.HTTP.value, EffectKind.GRPC.value, EffectKind.OPENAPI.value})
ABORT_INTERVAL_S = 0.5
DEFER_PAUSE_S = 0.1


def task_service(document: Any, task: str, workflow_id: str) -> str:
    """The service whose workers get a worker task: the call task's `metadata.service`, else
    the workflow's namespace. `task` is the task's JSON pointer in the definition."""
    node = document
    for part in task.strip("/").split("/") if task else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            node = None
            break
    metadata = node.get("metadata") if isinstance(node, dict) else None
    service = metadata.get("service") if isinstance(metadata, dict) else None
    return str(service) if isinstance(service, str) and service else workflow_id.split(".", 1)[0]


def _ended(status: str | None) -> bool:
    """Whether an instance with this status (None: purged) still waits for anything."""
    if not status:
        return True
    try:
        return InstanceStatus(status).finished
    except ValueError:
        return False


class EffectDispatcher:
    def __init__(
        self,
        *,
        effects: RedisEffectStore,
        http: HttpCaller,
        openapi: OpenApiCaller,
        grpc: GrpcCaller,
        children: ChildStarter,
        registry: WorkflowRegistry,
        consumer: str,
        concurrency: int,
        claim_idle_ms: int,
        read_block_ms: int = 1000,
        tracer: Tracer | None = None,
        orphans: Callable[[str, Collection[str]], Awaitable[list[EffectEntry]]] | None = None,
        orphan_interval_s: float = 0.5,
        max_call_timeout_ms: int | None = None,
        workflow_share: float = 1.0,
    ) -> None:
        self._effects = effects
        self._max_call_timeout_ms = max_call_timeout_ms
        self._slots = WorkflowSlots(concurrency=concurrency, share=workflow_share)
        # Calls cancelled because their instance ended: acknowledged, not left pending.
        self._aborted: set[str] = set()
        # Set when a call was put back for its workflow's share: the reader then pauses.
        self._deferred = False
        # Takes over effects of executors that stopped beating (store/liveness.py).
        self._orphans = orphans
        self._orphan_interval_s = orphan_interval_s
        self._http = http
        self._openapi = openapi
        self._grpc = grpc
        self._children = children
        self._registry = registry
        self._consumer = consumer
        self._concurrency = concurrency
        self._claim_idle_ms = claim_idle_ms
        self._read_block_ms = read_block_ms
        self._running: dict[str, tuple[EffectEntry, asyncio.Task[None]]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._spans = EffectTracer(tracer)

    async def start(self) -> None:
        await self._effects.ensure_groups()
        self._stopping.clear()
        self._loops = [
            asyncio.create_task(
                run_forever(self._read_once, what="effects read loop", until=self._stopping),
                name="okra-effects",
            ),
            asyncio.create_task(
                run_forever(self._claim_once, what="effects claim loop", until=self._stopping),
                name="okra-effects-claim",
            ),
            asyncio.create_task(
                run_forever(self._abort_once, what="effects abort loop", until=self._stopping),
                name="okra-effects-abort",
            ),
        ]
        if self._orphans is not None:
            orphans = run_forever(self._orphans_once, what="effects orphans", until=self._stopping)
            self._loops.append(asyncio.create_task(orphans, name="okra-effects-orphans"))

    async def stop(self, *, timeout_s: float = 5.0) -> None:
        """Stop reading; effects in flight get `timeout_s`, then stay pending for another."""
        self._stopping.set()
        await cancel_and_wait(self._loops)
        tasks = [task for _, task in self._running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        await cancel_and_wait(tasks)
        self._loops = []

    async def _read_once(self) -> None:
        if self._deferred:
            # Only calls of workflows at their share came last time: let slots free up
            # rather than read them round and round.
            self._deferred = False
            await asyncio.sleep(DEFER_PAUSE_S)
        while len(self._running) >= self._concurrency:
            await asyncio.wait(
                [task for _, task in self._running.values()], return_when=asyncio.FIRST_COMPLETED
            )
        free = self._concurrency - len(self._running)
        entries = await self._effects.read_effects(
            self._consumer, count=free, block_ms=self._read_block_ms
        )
        self.dispatch(entries)

    async def _claim_once(self) -> None:
        await asyncio.sleep(self._claim_idle_ms / 3000)
        running = [entry for entry, _ in self._running.values()]
        if running:
            await self._effects.keep_effects(self._consumer, running)
        entries = await self._effects.claim_stale_effects(
            self._consumer, min_idle_ms=self._claim_idle_ms, count=100
        )
        entries = [e for e in entries if e.entry_id not in self._running]
        if entries:
            logger.info("claimed %d effects left by a stopped executor", len(entries))
        self.dispatch(entries)

    async def _abort_once(self) -> None:
        """Cancel the calls whose instance has ended: nobody waits for their answer."""
        await asyncio.sleep(ABORT_INTERVAL_S)
        calls = [
            (entry, task)
            for entry, task in self._running.values()
            if entry.effect.get("kind") in CALL_KINDS and entry.entry_id not in self._aborted
        ]
        if not calls:
            return
        statuses = await self._effects.instance_statuses({e.instance_id for e, _ in calls})
        for entry, task in calls:
            if _ended(statuses.get(entry.instance_id)):
                self._aborted.add(entry.entry_id)
                task.cancel()

    async def _orphans_once(self) -> None:
        await asyncio.sleep(self._orphan_interval_s)
        assert self._orphans is not None
        entries = await self._orphans(self._consumer, self._running.keys())
        if entries:
            logger.info("took over %d effects of an executor that stopped", len(entries))
        self.dispatch(entries)

    def dispatch(self, entries: list[EffectEntry]) -> None:
        for entry in entries:
            if entry.entry_id in self._running:
                continue
            task = asyncio.create_task(self._execute(entry))
            self._running[entry.entry_id] = (entry, task)
            task.add_done_callback(self._forget(entry.entry_id))

    def _forget(self, entry_id: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(_: asyncio.Task[None]) -> None:
            self._running.pop(entry_id, None)

        return forget

    async def _execute(self, entry: EffectEntry) -> None:
        try:
            if entry.effect.get("kind") in CALL_KINDS:
                await self._execute_call(entry)
            else:
                await self._traced(entry)
        except asyncio.CancelledError:
            if entry.entry_id not in self._aborted:
                raise  # stopping: the effect stays pending for another executor
            self._aborted.discard(entry.entry_id)
            logger.info(
                "call %s aborted: instance %s ended", entry.effect.get("id"), entry.instance_id
            )
            await self._acknowledge(entry)
        except StoreUnavailableError as exc:
            # Left pending: it is taken up again when Redis is back.
            _outages.warning(
                ("run", exc.reason),
                "effect %s of %s: %s",
                entry.effect.get("id"),
                entry.instance_id,
                exc,
            )

    async def _execute_call(self, entry: EffectEntry) -> None:
        workflow, status = await self._effects.instance_fields(entry.instance_id, "wf", "status")
        if _ended(status):
            await self._acknowledge(entry)  # its instance ended before the call began
            return
        workflow = workflow or ""
        if not self._slots.take(workflow):
            await self._effects.defer_effect(entry)
            self._deferred = True
            return
        try:
            await self._traced(entry)
        finally:
            self._slots.give_back(workflow)

    async def _acknowledge(self, entry: EffectEntry) -> None:
        try:
            await self._effects.ack_effect(entry)
        except StoreUnavailableError as exc:
            _outages.warning(
                ("ack", exc.reason), "effect %s not acknowledged: %s", entry.effect.get("id"), exc
            )

    async def _traced(self, entry: EffectEntry) -> None:
        # A span in the trace of the turn that asked for the effect, current while it runs.
        with self._spans.span(entry.effect, instance_id=entry.instance_id):
            await self._run_effect(entry)

    async def _run_effect(self, entry: EffectEntry) -> None:
        effect = entry.effect
        effect_id = str(effect.get("id"))
        try:
            kind = EffectKind(str(effect.get("kind")))
            request: dict[str, Any] = effect.get("request") or {}
            if kind is EffectKind.WORKER:
                await self._enqueue(entry, request)
                return
            value: Any = None
            error: dict[str, Any] | None = None
            try:
                if kind is EffectKind.CHILD:
                    await self._children.start(entry, request)
                    await self._effects.ack_effect(entry)
                    return  # the child's final commit delivers its outcome
                if kind is EffectKind.EMIT:
                    # Turns publish emits in their commit; this path serves effects written
                    # without that step, and completes the event the same way.
                    value = emitted_event(entry.instance_id, Effect.from_json(effect), now_ms())
                    await self._effects.publish(value)
                else:
                    value = await self._call(
                        kind, request, effect.get("timeoutMs"), entry.instance_id
                    )
            except EffectFailedError as exc:
                error = exc.error
                tracing.record_error(exc, server_fault=True)
            event = result_event(effect_id, time_iso=iso_time(now_ms()), value=value, error=error)
            # The turn that consumes the result links to this effect's span.
            event.update(tracing.event_trace_fields())
            await self._effects.deliver_result(entry, event)
        except StoreUnavailableError as exc:
            _outages.warning(
                ("deliver", exc.reason),
                "effect %s of %s not delivered: %s",
                effect_id,
                entry.instance_id,
                exc,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug in an executor fails the effect (the workflow may catch it), not the loop.
            logger.exception("effect %s of %s failed", effect_id, entry.instance_id)
            error = problem("runtime", 500, f"{type(exc).__name__}: {exc}")
            event = result_event(effect_id, time_iso=iso_time(now_ms()), error=error)
            try:
                await self._effects.deliver_result(entry, event)
            except StoreUnavailableError:
                pass

    async def _call(
        self, kind: EffectKind, request: dict[str, Any], timeout_ms: Any, instance_id: str
    ) -> Any:
        timeout = int(timeout_ms) if timeout_ms else None
        if timeout is not None and self._max_call_timeout_ms is not None:
            timeout = min(timeout, self._max_call_timeout_ms)
        if kind is EffectKind.HTTP:
            return await self._http.call(request, timeout_ms=timeout, cause=instance_id)
        if kind is EffectKind.OPENAPI:
            return await self._openapi.call(request, timeout_ms=timeout, cause=instance_id)
        if kind is EffectKind.GRPC:
            return await self._grpc.call(request, timeout_ms=timeout, cause=instance_id)
        raise EffectFailedError(problem("configuration", 400, f"unknown effect kind {kind}"))

    async def _enqueue(self, entry: EffectEntry, request: dict[str, Any]) -> None:
        effect = entry.effect
        service = str(request.get("service") or "")
        if not service:
            workflow_id = (await self._effects.instance_fields(entry.instance_id, "wf"))[0] or ""
            try:
                document = (await self._registry.get(workflow_id)).definition.document
            except NotFoundError:
                document = None
            service = task_service(document, str(effect.get("task") or ""), workflow_id)
        timeout_ms = effect.get("timeoutMs")
        task = {
            "effectId": effect["id"],
            "function": request.get("function") or effect.get("task") or "",
            "arguments": request.get("arguments"),
            "deadlineMs": now_ms() + int(timeout_ms) if timeout_ms else 0,
            # The worker continues the trace from this effect's span.
            "trace": tracing.event_trace_fields().get(tracing.TRACEPARENT, ""),
        }
        await self._effects.enqueue_task(entry, service, task)
