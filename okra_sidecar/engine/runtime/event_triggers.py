"""EventTriggers: a definition's `schedule.on` starts an instance when matching events arrive.

The event router offers every published event here once (after a crash, perhaps again). With
`one` or `any`, each matching event starts an instance; with `all`, the first event matching
each filter is collected in Redis, and the event that completes the set starts one. The input is
the array of triggering events, as the DSL says. The instance id derives from the workflow and
the triggering events, so an event offered twice starts one instance.

Every sidecar sees the same triggers: they come from the definitions registered in Redis, the
highest version of each workflow deciding (as for time schedules), refreshed every few seconds.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from okra_sidecar.admission import CAUSE_ATTRIBUTE, CauseAdmitter, RunLimits
from okra_sidecar.clock import now_ms
from okra_sidecar.config import HostSettings
from okra_sidecar.engine.definitions.dsl import WorkflowDefinition
from okra_sidecar.engine.runtime.registry import WorkflowRegistry, semver_key
from okra_sidecar.engine.runtime.routing import subscription_matches
from okra_sidecar.engine.runtime.sandbox import ExpressionSandbox, SandboxEvaluate, evaluate_here
from okra_sidecar.engine.runtime.scheduler import FiringAuthorizer
from okra_sidecar.engine.runtime.starter import admission, build_instance, timeout_fields
from okra_sidecar.errors import OkraError, StoreUnavailableError
from okra_sidecar.store.base import ScheduleStore, Store

logger = logging.getLogger(__name__)

__all__ = ["TRIGGER_TAG", "EventTrigger", "EventTriggers", "event_trigger_of"]

TRIGGER_TAG = "okra.trigger"
EVENT_TAG = "okra.event"
TRIGGER_NAMESPACE = uuid.UUID("6f6b7261-7472-6967-6765-722d6576656e")
REFRESH_S = 2.0


@dataclass(frozen=True)
class EventTrigger:
    """A definition's `schedule.on`: its mode (`one`, `any`, `all`) and event filters."""

    definition: WorkflowDefinition
    mode: str
    filters: tuple[dict[str, Any], ...]


def event_trigger_of(definition: WorkflowDefinition) -> EventTrigger | None:
    """The `schedule.on` of a definition (checked when it was loaded), None if it has none."""
    schedule = definition.document.get("schedule")
    strategy = schedule.get("on") if isinstance(schedule, dict) else None
    if not isinstance(strategy, dict):
        return None
    for mode in ("one", "any", "all"):
        if mode in strategy:
            raw = strategy[mode]
            filters = (raw,) if mode == "one" else tuple(raw or ())
            return EventTrigger(definition, mode, tuple(f for f in filters if isinstance(f, dict)))
    return None


class EventTriggers:
    """Starts instances of the workflows whose `schedule.on` an event completes."""

    def __init__(
        self,
        *,
        store: Store,
        schedules: ScheduleStore,
        registry: WorkflowRegistry,
        host: HostSettings,
        clock: Callable[[], int] = now_ms,
        refresh_s: float = REFRESH_S,
        authorize: FiringAuthorizer | None = None,
        causation: CauseAdmitter | None = None,
        sandbox: ExpressionSandbox | None = None,
    ) -> None:
        self._authorize = authorize
        # The router's sandbox: filters are evaluated within the expression budget.
        self._evaluate: SandboxEvaluate = evaluate_here if sandbox is None else sandbox.evaluate
        self._causation = causation
        self._store = store
        self._schedules = schedules
        self._registry = registry
        self._host = host
        self._clock = clock
        self._refresh_ms = int(refresh_s * 1000)
        self._triggers: list[EventTrigger] = []
        self._loaded_at: int | None = None

    async def refresh(self) -> list[EventTrigger]:
        """The triggers of the highest registered version of each workflow."""
        newest: dict[str, WorkflowDefinition] = {}
        for definition in await self._registry.list():
            held = newest.get(definition.key)
            if held is None or semver_key(definition.version) > semver_key(held.version):
                newest[definition.key] = definition
        triggers = [t for d in newest.values() if (t := event_trigger_of(d)) is not None]
        self._triggers = triggers
        self._loaded_at = self._clock()
        return triggers

    async def offer(self, event: dict[str, Any]) -> int:
        """Start what this event triggers; returns how many instances were created."""
        now = self._clock()
        if self._loaded_at is None or now - self._loaded_at >= self._refresh_ms:
            await self.refresh()
        started = 0
        for trigger in self._triggers:
            events = await self._match(trigger, event)
            if events is not None and await self._start(trigger.definition, events, now):
                started += 1
        return started

    async def _matches(self, event_filter: dict[str, Any], event: dict[str, Any]) -> bool:
        # The router's matching: constants must equal, `${ }` expressions read the attribute
        # as `.`. An expression over budget starts nothing.
        return await subscription_matches([event_filter], event, self._evaluate, over_budget=False)

    async def _match(
        self, trigger: EventTrigger, event: dict[str, Any]
    ) -> list[dict[str, Any]] | None:
        filters = trigger.filters
        if trigger.mode == "all":
            for index, event_filter in enumerate(filters):
                if await self._matches(event_filter, event):
                    return await self._schedules.collect_trigger_event(
                        trigger.definition.key, index=index, needed=len(filters), event=event
                    )
            return None
        if trigger.mode == "any" and not filters:
            return [event]  # an empty `any` takes every event
        for event_filter in filters:
            if await self._matches(event_filter, event):
                return [event]
        return None

    async def _start(
        self, definition: WorkflowDefinition, events: list[dict[str, Any]], now: int
    ) -> bool:
        ids = "\n".join(f"{e.get('source', '')}\n{e.get('id', '')}" for e in events)
        instance_id = str(uuid.uuid5(TRIGGER_NAMESPACE, f"{definition.key}\n{ids}"))
        tags = {TRIGGER_TAG: "event", EVENT_TAG: str(events[-1].get("id", ""))[:256]}
        try:
            registered = await self._registry.get(definition.id)
            ancestors: tuple[str, ...] = ()
            if self._causation is not None:
                # An event an instance emitted names it: a chain back to a workflow already
                # in it stops here, and one instance starts only so many.
                for cause in dict.fromkeys(str(e.get(CAUSE_ATTRIBUTE) or "") for e in events):
                    ancestors = await self._causation.admit(cause, definition.id) or ancestors
            limits = RunLimits()
            if self._authorize is not None:
                # Triggers belong to the sidecar's own service: no caller's claims.
                limits = await self._authorize(
                    owner={},
                    workflow_id=definition.id,
                    workflow_input=events,
                    started_by="event",
                )
            new = build_instance(
                registered.definition,
                instance_id=instance_id,
                workflow_input=events,
                created_us=now * 1000,
                tags=tags,
                ancestors=ancestors,
                **timeout_fields(
                    limits,
                    created_ms=now,
                    config_max_s=self._host.max_instance_duration_s,
                    config_step_s=self._host.default_timeout_s,
                ),
            )
            return await self._store.create_instance(
                new, **admission(self._host.max_concurrent_instances, limits)
            )
        except StoreUnavailableError:
            raise
        except OkraError as exc:
            logger.warning("event trigger of %s did not start an instance: %s", definition.id, exc)
            return False
