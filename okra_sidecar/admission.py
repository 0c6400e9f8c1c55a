"""Admission: what a policy set allows a new instance, filled in by policy/, read by the engine.

The engine starts instances (Run, schedules, event triggers, child runs) but never imports
the policy layer (tests/test_import_rules.py): the policy evaluator builds `RunLimits`, and
the causation guard is handed to the engine as a `CauseAdmitter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CAUSE_ATTRIBUTE",
    "MAX_INSTANCES_PER_WORKFLOW",
    "CauseAdmitter",
    "RunLimits",
]

# The policy key of the per-workflow instance limit, named in the error that enforces it.
MAX_INSTANCES_PER_WORKFLOW = "policy.workflow.maxInstancesPerWorkflow"
CAUSE_ATTRIBUTE = "okracause"  # on events the engine emits: the instance that emitted them


@dataclass(frozen=True)
class RunLimits:
    """Admission limits and engine timeouts for one Run, from the policy set that allowed it."""

    max_active: int = 0  # 0: no limit
    max_active_policy: str = ""
    max_per_workflow: int = 0
    max_duration_ms: int | None = None
    step_timeout_ms: int | None = None
    timeout_action: str = "fail"


class CauseAdmitter(Protocol):
    """Admits an instance that another one caused (policy/causation.py `CausationGuard`)."""

    async def admit(self, cause: str, workflow_id: str) -> tuple[str, ...]:
        """The new instance's ancestors; raises when the chain loops or the cause is too busy."""
        ...
