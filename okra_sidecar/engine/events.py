"""Listening: match inbox CloudEvents against a consumption strategy, consuming each once."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from okra_sidecar.engine.effects import RESULT_EVENT_TYPE
from okra_sidecar.engine.expressions import (
    CompiledExpression,
    ConstantValue,
    ExpressionError,
    evaluate_condition,
)
from okra_sidecar.engine.tasks import Consumption, EventFilter

__all__ = ["ListenProgress", "Signal", "advance_listen", "event_matches", "read_event"]


class Signal(Protocol):
    @property
    def entry_id(self) -> str: ...

    @property
    def event(self) -> dict[str, Any]: ...


def _event_data(event: Mapping[str, Any]) -> Any:
    if "data" in event:
        return event["data"]
    encoded = event.get("data_base64")
    if not isinstance(encoded, str):
        return None
    raw = base64.b64decode(encoded)
    content_type = str(event.get("datacontenttype") or "application/json")
    if "json" in content_type:
        try:
            return json.loads(raw)
        except ValueError:
            pass
    return raw.decode("utf-8", errors="replace")


def read_event(event: dict[str, Any], mode: str) -> Any:
    """An event as a listen task outputs it: `data`, the `envelope`, or the `raw` payload."""
    if mode == "envelope":
        return event
    if mode == "raw":
        return event["data_base64"] if "data_base64" in event else event.get("data")
    return _event_data(event)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python's, true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def event_matches(
    event_filter: EventFilter, event: Mapping[str, Any], args: Mapping[str, Any]
) -> bool:
    """Whether every attribute of the filter holds for `event`.

    A constant must equal the event's attribute. An expression is evaluated with the attribute
    as `.`: a boolean result is the verdict (`data: ${ .temperature > 38 }`), anything else must
    equal the attribute. An expression that fails means no match: a malformed event must not
    fault the workflow that ignores it.
    """
    for name, expected in event_filter.attributes:
        actual = _event_data(event) if name == "data" else event.get(name)
        if isinstance(expected, ConstantValue):
            if not _same(expected.value, actual):
                return False
            continue
        try:
            result = expected.evaluate(actual, args)
        except ExpressionError:
            return False
        if isinstance(expected, CompiledExpression) and isinstance(result, bool):
            if not result:
                return False
        elif not _same(result, actual):
            return False
    return True


class ListenProgress:
    """What a listen (or its `until`) has matched so far; JSON round trip via `to_state`."""

    __slots__ = ("events", "matched", "until_matched")

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        state = state or {}
        self.events: list[dict[str, Any]] = list(state.get("events", ()))
        self.matched: list[int] = list(state.get("matched", ()))
        self.until_matched: list[int] = list(state.get("untilMatched", ()))

    def to_state(self) -> dict[str, Any]:
        return {"events": self.events, "matched": self.matched, "untilMatched": self.until_matched}


def _take(
    strategy: Consumption, matched: list[int], event: Mapping[str, Any], args: Mapping[str, Any]
) -> bool:
    """Offer one event to a strategy; True when it takes it (recording which filter matched)."""
    if strategy.mode == "all":
        for index, event_filter in enumerate(strategy.filters):
            if index not in matched and event_matches(event_filter, event, args):
                matched.append(index)
                return True
        return False
    if strategy.mode == "any" and not strategy.filters:
        matched.append(0)  # an empty `any` takes every event
        return True
    for index, event_filter in enumerate(strategy.filters):
        if event_matches(event_filter, event, args):
            matched.append(index)
            return True
    return False


def _satisfied(strategy: Consumption, matched: list[int]) -> bool:
    if strategy.mode == "all":
        return len(matched) == len(strategy.filters)
    return bool(matched)


def advance_listen(
    to: Consumption,
    read: str,
    progress: ListenProgress,
    signals: Sequence[Signal],
    taken: set[str],
    args: Mapping[str, Any],
) -> tuple[list[str], bool]:
    """Consume matching signals in inbox order; returns (entry ids consumed, whether done).

    `progress` and `taken` are updated in place. Events that match nothing stay in the inbox.

    Raises:
        ExpressionError: an `until` condition fails.
    """
    consumed: list[str] = []
    if to.mode == "all" and _satisfied(to, progress.matched):
        return consumed, True  # `all: []` waits for nothing
    for signal in signals:
        event = signal.event
        # Effect results share the inbox; only the task that asked for one may consume it.
        if signal.entry_id in taken or event.get("type") == RESULT_EVENT_TYPE:
            continue
        if to.until is not None and _take(to.until, progress.until_matched, event, args):
            # Events that stop the listening are consumed but not part of the output.
            taken.add(signal.entry_id)
            consumed.append(signal.entry_id)
            if _satisfied(to.until, progress.until_matched):
                return consumed, True
            continue
        if not _take(to, progress.matched, event, args):
            continue
        taken.add(signal.entry_id)
        consumed.append(signal.entry_id)
        progress.events.append(event)
        if to.mode != "any":
            if _satisfied(to, progress.matched):
                return consumed, True
        elif to.until_expression is not None:
            outputs = [read_event(e, read) for e in progress.events]
            if evaluate_condition(to.until_expression, outputs, args):
                return consumed, True
        elif to.until is None:
            return consumed, True
    return consumed, False
