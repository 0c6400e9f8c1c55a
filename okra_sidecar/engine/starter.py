"""Building a new instance: the one path by which Run and the scheduler start a workflow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from okra_sidecar.engine.dsl import WorkflowDefinition
from okra_sidecar.engine.interpreter import start_state
from okra_sidecar.instances import NewInstance

__all__ = ["build_instance"]


def build_instance(
    definition: WorkflowDefinition,
    *,
    instance_id: str,
    workflow_input: Any,
    created_us: int,
    correlation_id: str = "",
    tags: Mapping[str, str] | None = None,
    **fields: Any,
) -> NewInstance:
    """The NewInstance that `store.create_instance` persists, with its interpreter start state.

    `fields` are NewInstance's optional fields (trace context, policy timeouts).
    """
    state = start_state(
        definition,
        instance_id=instance_id,
        workflow_input=workflow_input,
        now_ms=created_us // 1000,
    )
    return NewInstance(
        instance_id=instance_id,
        workflow_id=definition.id,
        input=workflow_input,
        correlation_id=correlation_id,
        tags=dict(tags or {}),
        state=state,
        created_us=created_us,
        **fields,
    )
