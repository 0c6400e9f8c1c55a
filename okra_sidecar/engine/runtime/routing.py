"""Listen subscriptions: which routed events an instance waiting in a listen wants.

A turn that waits in a listen returns its subscriptions: one filter per event it may consume,
`{"with": {attribute: constant or runtime expression}, "correlate": {key: {"from": expression,
"expect": value}}}`, with everything that depends on the instance already resolved. The event
router delivers an event to an instance when one of its filters matches. The interpreter does
the final matching on the inbox; the router only has to avoid flooding inboxes, so an
expression it cannot evaluate without the instance's data counts as a match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from okra_sidecar.engine.definitions.expressions import (
    CompiledExpression,
    ExpressionError,
    compile_expression,
    is_expression,
)

__all__ = ["ANY_TYPE", "subscription_matches", "subscription_types"]

ANY_TYPE = ""  # the type set of filters that name no type: every event is offered to them


def subscription_types(filters: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The event types the filters are indexed under, ANY_TYPE for filters without one."""
    types: set[str] = set()
    for event_filter in filters:
        wanted = (event_filter.get("with") or {}).get("type")
        types.add(wanted if isinstance(wanted, str) and not is_expression(wanted) else ANY_TYPE)
    return tuple(sorted(types))


def _compiled(text: str, *, bare: bool = False) -> CompiledExpression | None:
    try:
        return compile_expression(text, bare=bare)  # cached by the expressions module
    except ExpressionError:
        return None


def _attribute(event: Mapping[str, Any], name: str) -> Any:
    return event.get(name)


def _holds(expected: Any, actual: Any) -> bool:
    if not (isinstance(expected, str) and is_expression(expected)):
        return bool(expected == actual)
    compiled = _compiled(expected)
    if compiled is None or compiled.names:
        return True  # unknown, or needs the instance's arguments: let the interpreter decide
    try:
        result = compiled.evaluate(actual, {})
    except ExpressionError:
        return True  # needs the instance's arguments: let the interpreter decide
    return result if isinstance(result, bool) else result == actual


def _correlates(correlation: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    source = correlation.get("from")
    if not isinstance(source, str) or "expect" not in correlation:
        return True
    compiled = _compiled(source, bare=not is_expression(source))
    if compiled is None or compiled.names:
        return True
    try:
        value = compiled.evaluate(dict(event), {})
    except ExpressionError:
        return True
    return bool(value == correlation["expect"])


def subscription_matches(filters: Sequence[Mapping[str, Any]], event: Mapping[str, Any]) -> bool:
    """Whether any filter wants the event."""
    for event_filter in filters:
        attributes = event_filter.get("with") or {}
        if not all(_holds(v, _attribute(event, k)) for k, v in attributes.items()):
            continue
        correlate = event_filter.get("correlate") or {}
        if all(_correlates(c, event) for c in correlate.values() if isinstance(c, Mapping)):
            return True
    return False
