"""The signals a workflow listens for: what its typed handle may send, and with what payload."""

from __future__ import annotations

from okra_sidecar.engine.definitions.dsl import WorkflowDefinition
from okra_sidecar.engine.definitions.listen_compiler import listened_types
from okra_sidecar.engine.definitions.tasks import ListenSpec

__all__ = ["listened_signals"]


def listened_signals(definition: WorkflowDefinition) -> tuple[str, ...]:
    """The event types its `listen` tasks wait for by a constant `with.type`, sorted.

    A type given by an expression is known only at run time and is left out (the handle then
    offers no typed signal for it).
    """
    names: set[str] = set()
    for node in definition.plan.nodes.values():
        if node.kind == "listen" and isinstance(node.body, ListenSpec):
            names.update(listened_types(node.body.to))
    return tuple(sorted(names))
