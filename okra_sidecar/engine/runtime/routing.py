"""Listen subscriptions: which routed events an instance waiting in a listen wants.

A turn that waits in a listen returns its subscriptions: one filter per event it may consume,
`{"with": {attribute: constant or runtime expression}, "correlate": {key: {"from": expression,
"expect": value}}}`, with everything that depends on the instance already resolved. The event
router delivers an event to an instance when one of its filters matches. The interpreter does
the final matching on the inbox; the router only has to avoid flooding inboxes, so an
expression it cannot evaluate without the instance's data counts as a match.

The router evaluates in the serving process, through an ExpressionSandbox (`sandbox.py`) that
bounds each evaluation; one over budget counts as `over_budget` says: a match for a listening
instance (whose engine, bounded too, then decides), none for an event trigger.
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
from okra_sidecar.engine.runtime.sandbox import (
    ExpressionBudgetError,
    SandboxEvaluate,
    evaluate_here,
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


async def _holds(expected: Any, actual: Any, evaluate: SandboxEvaluate, over_budget: bool) -> bool:
    if not (isinstance(expected, str) and is_expression(expected)):
        return bool(expected == actual)
    compiled = _compiled(expected)
    if compiled is None or compiled.names:
        return True  # unknown, or needs the instance's arguments: let the interpreter decide
    try:
        result = await evaluate(compiled, actual)
    except ExpressionBudgetError:
        return over_budget
    except ExpressionError:
        return True  # needs the instance's arguments: let the interpreter decide
    return result if isinstance(result, bool) else result == actual


async def _correlates(
    correlation: Mapping[str, Any],
    event: Mapping[str, Any],
    evaluate: SandboxEvaluate,
    over_budget: bool,
) -> bool:
    source = correlation.get("from")
    if not isinstance(source, str) or "expect" not in correlation:
        return True
    compiled = _compiled(source, bare=not is_expression(source))
    if compiled is None or compiled.names:
        return True
    try:
        value = await evaluate(compiled, dict(event))
    except ExpressionBudgetError:
        return over_budget
    except ExpressionError:
        return True
    return bool(value == correlation["expect"])


async def subscription_matches(
    filters: Sequence[Mapping[str, Any]],
    event: Mapping[str, Any],
    evaluate: SandboxEvaluate = evaluate_here,
    *,
    over_budget: bool = True,
) -> bool:
    """Whether any filter wants the event.

    Args:
        evaluate: Evaluates the filters' expressions (an ExpressionSandbox's, bounded).
        over_budget: The answer for an expression that ran over its budget.
    """
    for event_filter in filters:
        if await _filter_matches(event_filter, event, evaluate, over_budget):
            return True
    return False


async def _filter_matches(
    event_filter: Mapping[str, Any],
    event: Mapping[str, Any],
    evaluate: SandboxEvaluate,
    over_budget: bool,
) -> bool:
    for name, expected in (event_filter.get("with") or {}).items():
        if not await _holds(expected, _attribute(event, name), evaluate, over_budget):
            return False
    for correlation in (event_filter.get("correlate") or {}).values():
        if isinstance(correlation, Mapping) and not await _correlates(
            correlation, event, evaluate, over_budget
        ):
            return False
    return True
