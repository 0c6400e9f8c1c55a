"""What a turn hands to the world beside its new state: effects, events, subscriptions and,
for a finished child run, the outcome its parent awaits. All of it is committed with the state.
"""

from __future__ import annotations

import uuid
from typing import Any

from okra_sidecar.admission import CAUSE_ATTRIBUTE
from okra_sidecar.engine.interpreter.effects import Effect, EffectKind, iso_time, result_event
from okra_sidecar.engine.interpreter.interpreter import TurnOutcome, TurnResult
from okra_sidecar.engine.runtime.routing import subscription_types
from okra_sidecar.store.base import Subscriptions, TurnExtras, TurnSnapshot
from okra_sidecar.telemetry import tracing

__all__ = ["EMITTED_EVENT_NAMESPACE", "emitted_event", "turn_extras"]

# Ids of emitted events derive from instance and effect, so a re-run turn emits the same event.
EMITTED_EVENT_NAMESPACE = uuid.UUID("6f6b7261-656d-6974-2d65-76656e742d31")
FINISHED = (TurnOutcome.COMPLETED, TurnOutcome.FAILED)


def emitted_event(instance_id: str, effect: Effect, now_ms: int) -> dict[str, Any]:
    """The CloudEvent an emit task publishes: its attributes, completed as CloudEvents require."""
    event: dict[str, Any] = dict(effect.request.get("event") or {})
    event.setdefault("specversion", "1.0")
    if not event.get("id"):
        event["id"] = str(uuid.uuid5(EMITTED_EVENT_NAMESPACE, f"{instance_id}/{effect.effect_id}"))
    event.setdefault("time", iso_time(now_ms))
    if "data" in event:
        event.setdefault("datacontenttype", "application/json")
    return event


def turn_extras(snapshot: TurnSnapshot, result: TurnResult, now_ms: int) -> TurnExtras | None:
    """The extras of a turn, or None when it has none (the common case costs nothing)."""
    effects: list[Effect] = getattr(result, "effects", None) or []
    subscriptions: list[dict[str, Any]] | None = getattr(result, "subscriptions", None)
    parent_event = None
    if snapshot.parent_id and result.outcome in FINISHED:
        parent_event = result_event(
            snapshot.parent_effect,
            time_iso=iso_time(now_ms),
            value=result.output,
            error=result.error,
        )
    subs = None
    if subscriptions:
        subs = Subscriptions(subscription_types(subscriptions), list(subscriptions))
    elif snapshot.subscriptions:
        subs = Subscriptions((), [])  # stopped waiting: drop what the last turn registered
    reached: dict[str, dict[str, Any]] = getattr(result, "reached", None) or {}
    if not effects and subs is None and parent_event is None and not reached:
        return None
    outgoing: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    # The turn's span context (CloudEvents' traceparent): executors and event consumers
    # continue its trace. Read only for what carries it: most turns hand out reset points alone.
    trace_fields = tracing.event_trace_fields() if effects or parent_event is not None else {}
    if parent_event is not None:
        parent_event.update(trace_fields)  # the parent's turn links to the child's last one
    for effect in effects:
        if effect.kind is EffectKind.EMIT:
            # Publishing is the whole of an emit, done by this commit; the task does not wait
            # for a result, so none is sent.
            # The causing instance last, so the workflow's own attributes cannot name another.
            event = emitted_event(snapshot.instance_id, effect, now_ms)
            events.append({**trace_fields, **event, CAUSE_ATTRIBUTE: snapshot.instance_id})
        else:
            outgoing.append({**effect.to_json(), **trace_fields})
    return TurnExtras(
        effects=outgoing,
        events=events,
        subscriptions=subs,
        parent_event=parent_event,
        reset_points=reached,
    )
