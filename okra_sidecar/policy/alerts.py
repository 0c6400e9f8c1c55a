"""FailureAlerts: the engine's failure hook, raising an alert for `alertOnFailure` workflows."""

from __future__ import annotations

from typing import Any

from okra_sidecar.policy.audit import AuditLog
from okra_sidecar.policy.evaluator import PolicyHolder
from okra_sidecar.policy.model import WorkflowRef


class FailureAlerts:
    """Called by the engine runner for every failed instance (on the sidecar that failed it)."""

    def __init__(self, *, policies: PolicyHolder, audit: AuditLog) -> None:
        self._policies = policies
        self._audit = audit

    async def __call__(
        self, instance_id: str, workflow_id: str, error: dict[str, Any] | None
    ) -> None:
        patterns = self._policies.current.alert_on_failure
        if not patterns:
            return
        pattern = patterns.match(WorkflowRef.parse(workflow_id).names())
        if pattern is not None:
            await self._audit.alert(
                instance_id=instance_id, workflow_id=workflow_id, pattern=pattern, error=error
            )


__all__ = ["FailureAlerts"]
