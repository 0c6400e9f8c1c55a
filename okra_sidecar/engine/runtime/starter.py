"""Building a new instance: the one path by which Run and the scheduler start a workflow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from okra_sidecar.admission import MAX_INSTANCES_PER_WORKFLOW, RunLimits
from okra_sidecar.engine.definitions.dsl import WorkflowDefinition
from okra_sidecar.engine.interpreter.interpreter import start_state
from okra_sidecar.engine.runtime.deadlines import DEFAULT_TIMEOUT, MAX_INSTANCE_DURATION
from okra_sidecar.instances import NewInstance

__all__ = ["admission", "build_instance", "deadline_fields", "timeout_fields"]


def admission(configured_max_active: int, limits: RunLimits) -> dict[str, Any]:
    """create_instance's limits: the tighter of maxConcurrentInstances and the policy's, each
    named, and the policy's per-workflow limit."""
    if limits.max_active and (
        not configured_max_active or limits.max_active < configured_max_active
    ):
        max_active, policy = limits.max_active, limits.max_active_policy
    else:
        max_active = configured_max_active
        policy = "maxConcurrentInstances" if configured_max_active else ""
    return {
        "max_active": max_active,
        "limit_policy": policy,
        "max_per_workflow": limits.max_per_workflow,
        "workflow_limit_policy": MAX_INSTANCES_PER_WORKFLOW,
    }


def timeout_fields(
    limits: RunLimits,
    *,
    created_ms: int,
    config_max_s: float | None,
    config_step_s: float | None = None,
) -> dict[str, Any]:
    """NewInstance's timeouts: the instance deadline, the step timeout and what ends them.

    The step timeout is the policy's defaultTimeoutMs, else the sidecar's `defaultTimeout`
    (named in `step_timeout_source`, so the timeout error says which).
    """
    fields = deadline_fields(
        created_ms=created_ms, policy_max_ms=limits.max_duration_ms, config_max_s=config_max_s
    )
    step_ms = limits.step_timeout_ms
    if step_ms is None and config_step_s is not None:
        step_ms = int(config_step_s * 1000)
        fields["step_timeout_source"] = DEFAULT_TIMEOUT
    if step_ms is not None:
        fields["step_timeout_ms"] = step_ms
    if limits.max_duration_ms or step_ms:
        fields["timeout_action"] = limits.timeout_action
    return fields


def deadline_fields(
    *, created_ms: int, policy_max_ms: int | None, config_max_s: float | None
) -> dict[str, Any]:
    """NewInstance's deadline: the tighter of the policy's maxDurationMinutes and the sidecar's
    maxInstanceDuration (named in `deadline_source`, so the timeout error says which)."""
    config_ms = None if config_max_s is None else int(config_max_s * 1000)
    if config_ms is not None and (policy_max_ms is None or config_ms < policy_max_ms):
        return {"deadline_ms": created_ms + config_ms, "deadline_source": MAX_INSTANCE_DURATION}
    if policy_max_ms is not None:
        return {"deadline_ms": created_ms + policy_max_ms}
    return {}


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
