"""EventRouter: delivers published CloudEvents to the instances whose listen wants them.

Every sidecar reads the events stream through one consumer group, so each event is routed
once (again, after a crash, by whoever claims it: delivery is de-duplicated per instance by
the event's source and id). Candidates come from the subscription sets of the event's type
and of filters without a type; each candidate's filters are checked before delivery, their
expressions in an ExpressionSandbox (engine/runtime/sandbox.py), so that no filter a
definition holds can stall the routing of other events or the process serving rpcs.

An event whose type a candidate's workflow declares a payload schema for (a listen task's
`metadata.signals.<type>.schema`) is given to it only if its `data` fits, as Signal's payload
must: Emit cannot check it, because which instances (of which workflows) an event reaches is
known only here. One that does not fit is not delivered to that instance; its history records
`event.refused` (the event's type, id and source, INPUT_SCHEMA_MISMATCH and the problem), once
per event, and it goes on waiting. Instances whose schema takes it, or that declare none, get it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.engine.runtime.routing import ANY_TYPE, subscription_matches
from okra_sidecar.engine.runtime.sandbox import ExpressionSandbox
from okra_sidecar.errors import NotFoundError, Reason
from okra_sidecar.executors.loops import run_forever
from okra_sidecar.store.effect_store import EventEntry, Listener, RedisEffectStore
from okra_sidecar.tasks import cancel_and_wait

__all__ = ["REFUSED_EVENT", "RESERVED_TYPE_PREFIX", "EventRouter"]

logger = logging.getLogger(__name__)
# Types of the sidecar's own events (effect results): never routed from outside.
RESERVED_TYPE_PREFIX = "io.okra."
# The history event of an instance a routed event was not given (its data broke the schema).
REFUSED_EVENT = "event.refused"


class EventRouter:
    def __init__(
        self,
        *,
        effects: RedisEffectStore,
        consumer: str,
        claim_idle_ms: int,
        read_block_ms: int = 1000,
        sandbox: ExpressionSandbox,
        triggers: Callable[[dict[str, Any]], Awaitable[object]] | None = None,
        registry: WorkflowRegistry | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._effects = effects
        # The candidates' definitions, for the payload schemas their listen tasks declare.
        self._registry = registry
        self._clock = clock or (lambda: int(time.time() * 1000))
        # Shared with the event triggers; the router stops it.
        self._sandbox = sandbox
        # Definitions' `schedule.on` event triggers (engine/runtime/event_triggers.py),
        # offered every routed event after the listening instances.
        self._triggers = triggers
        self._consumer = consumer
        self._claim_idle_ms = claim_idle_ms
        self._read_block_ms = read_block_ms
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._effects.ensure_groups()
        self._loops = [
            asyncio.create_task(
                run_forever(self._read_once, what="event router"), name="okra-router"
            ),
            asyncio.create_task(
                run_forever(self._claim_once, what="event router claim"), name="okra-router-claim"
            ),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._loops)
        self._loops = []
        await self._sandbox.close()

    async def _read_once(self) -> None:
        entries = await self._effects.read_events(
            self._consumer, count=100, block_ms=self._read_block_ms
        )
        await self.route(entries)

    async def _claim_once(self) -> None:
        await asyncio.sleep(self._claim_idle_ms / 2000)
        entries = await self._effects.claim_stale_events(
            self._consumer, min_idle_ms=self._claim_idle_ms, count=100
        )
        await self.route(entries)

    async def route(self, entries: list[EventEntry]) -> None:
        for entry in entries:
            await self._route_one(entry.event)
        await self._effects.ack_events([e.entry_id for e in entries])

    async def _route_one(self, event: dict[str, Any]) -> None:
        event_type = str(event.get("type") or "")
        if event_type.startswith(RESERVED_TYPE_PREFIX):
            return
        candidates = await self._effects.subscribers(sorted({event_type, ANY_TYPE}))
        dedup = f"event:{event.get('source', '')}\n{event.get('id', '')}"
        for instance_id, listener in candidates.items():
            filters = json.loads(listener.record).get("filters") or []
            if not await subscription_matches(filters, event, self._sandbox.evaluate):
                continue
            problem = await self._payload_problem(listener, event_type, event.get("data"))
            if problem is None:
                await self._effects.deliver(instance_id, dedup, event)
            else:
                await self._effects.refuse(instance_id, dedup, self._refusal(event, problem))
        if self._triggers is not None:
            await self._triggers(event)

    async def _payload_problem(self, listener: Listener, event_type: str, data: Any) -> str | None:
        """What in `data` breaks the payload schema the listener's workflow declares for the
        event's type (None: it fits, or none is declared)."""
        if self._registry is None or not listener.workflow_id:
            return None
        try:
            registered = await self._registry.get(listener.workflow_id)
        except NotFoundError:
            return None  # not registered here: its own turn reads the event as it comes
        schema = registered.definition.signal_payloads.get(event_type)
        return None if schema is None else schema.problem(data)

    def _refusal(self, event: dict[str, Any], problem: str) -> dict[str, Any]:
        """The history event of an instance not given `event`."""
        return {
            "type": REFUSED_EVENT,
            "time": self._clock(),
            "event": {k: event.get(k, "") for k in ("type", "id", "source")},
            "reason": Reason.INPUT_SCHEMA_MISMATCH.value,
            "problem": f"data does not match the payload schema: {problem}",
        }
