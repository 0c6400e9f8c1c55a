"""Run policies for instances the sidecar starts itself: schedule firings, event triggers and
child runs.

A schedule runs its workflow as whoever created it: each firing is decided as a Run by that
caller (their verified claims, kept with the schedule) would be, with the policy set in force
at the firing, and it is audited like one. Definition schedules and event triggers belong to
the sidecar's own service, so they run with no claims. A child run is decided as a Run by its
parent's owner (whoever started the parent), so a workflow the owner may not run cannot be
started by nesting it in one they may.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from okra_sidecar.admission import RunLimits
from okra_sidecar.policy.audit import Call
from okra_sidecar.policy.evaluator import PolicyEvaluator
from okra_sidecar.policy.model import Identity, WorkflowRef

__all__ = ["FIRING_METADATA", "PolicyFiringAuthorizer"]

# What a firing's Call carries as metadata, so policies and the audit can tell it from a Run.
FIRING_METADATA = {"okra-started-by": "schedule"}


class PolicyFiringAuthorizer:
    """Decides a firing as a Run by the schedule's owner; raises the denial, or returns limits."""

    def __init__(self, *, evaluator: PolicyEvaluator) -> None:
        self._evaluator = evaluator

    async def __call__(
        self,
        *,
        owner: Mapping[str, Any],
        workflow_id: str,
        workflow_input: Any,
        started_by: str = "schedule",
    ) -> RunLimits:
        """Raises PolicyDeniedError or ResourceExhaustedError as Run would.

        `started_by` (`schedule`, `event`, `parent`) is the call's `okra-started-by` metadata.
        """
        policies = self._evaluator.policies
        call = Call(
            method="Run",
            identity=Identity(claims=dict(owner)),
            metadata=FIRING_METADATA
            if started_by == "schedule"
            else {"okra-started-by": started_by},
            workflow=WorkflowRef.parse(workflow_id),
            input_bytes=len(json.dumps(workflow_input, separators=(",", ":"))),
            input=workflow_input,
        )
        grant = await self._evaluator.authorize(call, policies)
        return grant.run_limits
