"""Listening: match inbox CloudEvents against `listen` tasks, tell routers what to bring.

The filters are compiled at load (definitions/listen_compiler.py).

Correlation (`correlate` on an event filter): each key's `from` is evaluated on the event's
envelope; the value must equal the key's expectation, which is `expect` (evaluated when the
listen starts, against the task input) or, without `expect`, the value of the first event the
listen consumed for that key. Keys are shared by name across the filters of one listen, and
kept in the listen's state (`corr`).

Subscriptions (subscriptions()) tell an event router which events to bring to an instance's
inbox while it listens. One per event filter (those of `until` included):

    {"task": "/do/0/wait", "with": {"type": "com.example.done", ...},
     "correlate": {"orderId": {"from": ".data.orderId", "expect": "o-1"}}}

`with` holds only the filter's constant attributes (an event must equal each of them); an
attribute given by an expression is left out and checked here, so the router delivers a
superset. `correlate` is present when the filter correlates: `from` is the jq text to evaluate
on the event's envelope and `expect` the value it must give, absent while not known yet.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from okra_sidecar.engine.definitions.expressions import (
    CompiledExpression,
    ConstantValue,
    ExpressionError,
    evaluate_condition,
)
from okra_sidecar.engine.definitions.tasks import (
    Consumption,
    EventFilter,
)
from okra_sidecar.engine.interpreter.effects import RESULT_EVENT_TYPE
from okra_sidecar.engine.interpreter.threads import Slot

__all__ = [
    "ListenProgress",
    "Signal",
    "advance_listen",
    "event_matches",
    "expected_correlation",
    "read_event",
    "subscriptions",
]

_MISSING = object()


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


def _correlated(
    event_filter: EventFilter,
    event: Mapping[str, Any],
    args: Mapping[str, Any],
    keys: Mapping[str, Any],
) -> dict[str, Any] | None:
    """The correlation keys this event would fix, or None when it does not correlate."""
    fixed: dict[str, Any] = {}
    for correlation in event_filter.correlate:
        try:
            value = correlation.extract.evaluate(event, args)
        except ExpressionError:
            return None  # like a failing filter expression: the event is not for us
        expected = fixed.get(correlation.key, keys.get(correlation.key, _MISSING))
        if expected is _MISSING:
            fixed[correlation.key] = value
        elif not _same(expected, value):
            return None
    return fixed


class ListenProgress:
    """What a listen (or its `until`) has matched so far; JSON round trip via `to_state`."""

    __slots__ = ("correlation", "events", "matched", "until_matched")

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        state = state or {}
        self.events: list[dict[str, Any]] = list(state.get("events", ()))
        self.matched: list[int] = list(state.get("matched", ()))
        self.until_matched: list[int] = list(state.get("untilMatched", ()))
        self.correlation: dict[str, Any] = dict(state.get("corr", {}))

    def to_state(self) -> Slot:
        state: Slot = {
            "events": self.events,
            "matched": self.matched,
            "untilMatched": self.until_matched,
        }
        if self.correlation:
            state["corr"] = self.correlation
        return state


def _take(
    strategy: Consumption,
    matched: list[int],
    event: Mapping[str, Any],
    args: Mapping[str, Any],
    keys: dict[str, Any],
) -> bool:
    """Offer one event to a strategy; True when it takes it (recording which filter matched)."""
    if strategy.mode == "any" and not strategy.filters:
        matched.append(0)  # an empty `any` takes every event
        return True
    every = strategy.mode == "all"
    for index, event_filter in enumerate(strategy.filters):
        if every and index in matched:
            continue
        if not event_matches(event_filter, event, args):
            continue
        if event_filter.correlate:
            fixed = _correlated(event_filter, event, args, keys)
            if fixed is None:
                continue
            keys.update(fixed)
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
        keys = progress.correlation
        if to.until is not None and _take(to.until, progress.until_matched, event, args, keys):
            # Events that stop the listening are consumed but not part of the output.
            taken.add(signal.entry_id)
            consumed.append(signal.entry_id)
            if _satisfied(to.until, progress.until_matched):
                return consumed, True
            continue
        if not _take(to, progress.matched, event, args, keys):
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


def expected_correlation(to: Consumption, data: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    """The keys whose `expect` is given, evaluated when the listen starts.

    Raises:
        ExpressionError: an `expect` expression fails.
    """
    keys: dict[str, Any] = {}
    for event_filter in _filters(to):
        for correlation in event_filter.correlate:
            if correlation.expect is not None and correlation.key not in keys:
                keys[correlation.key] = correlation.expect.evaluate(data, args)
    return keys


def _filters(to: Consumption) -> list[EventFilter]:
    filters = list(to.filters)
    if to.until is not None:
        filters.extend(to.until.filters)
    return filters


def subscriptions(task: str, to: Consumption, keys: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What a router must bring to the inbox of a listen (see the module docstring)."""
    if not to.filters and to.mode == "any":
        found: list[dict[str, Any]] = [{"task": task, "with": {}}]
    else:
        found = []
    for event_filter in _filters(to):
        entry: dict[str, Any] = {
            "task": task,
            "with": {
                name: expected.value
                for name, expected in event_filter.attributes
                if isinstance(expected, ConstantValue)
            },
        }
        if event_filter.correlate:
            correlate: dict[str, Any] = {}
            for correlation in event_filter.correlate:
                item: dict[str, Any] = {"from": correlation.source}
                if correlation.key in keys:
                    item["expect"] = keys[correlation.key]
                correlate[correlation.key] = item
            entry["correlate"] = correlate
        found.append(entry)
    return found
