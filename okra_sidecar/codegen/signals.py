"""The signals a workflow listens for: what its typed handle may send."""

from __future__ import annotations

from collections.abc import Iterator

from okra_sidecar.engine.definitions.dsl import WorkflowDefinition
from okra_sidecar.engine.definitions.expressions import ConstantValue
from okra_sidecar.engine.definitions.tasks import Consumption, ListenSpec

__all__ = ["listened_signals"]


def listened_signals(definition: WorkflowDefinition) -> tuple[str, ...]:
    """The event types its `listen` tasks wait for by a constant `with.type`, sorted.

    A signal is delivered as a CloudEvent whose `type` is the signal's name, so these are
    the names a Signal can wake the instance with. A type given by an expression is known
    only at run time and is left out (the handle then offers no typed signal for it).
    """
    names: set[str] = set()
    for node in definition.plan.nodes.values():
        if node.kind == "listen" and isinstance(node.body, ListenSpec):
            names.update(_types(node.body.to))
    return tuple(sorted(names))


def _types(consumption: Consumption) -> Iterator[str]:
    for event_filter in consumption.filters:
        for name, expected in event_filter.attributes:
            if name == "type" and isinstance(expected, ConstantValue):
                if isinstance(expected.value, str):
                    yield expected.value
    if consumption.until is not None:
        yield from _types(consumption.until)
