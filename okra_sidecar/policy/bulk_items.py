"""Policies for each instance a bulk operation acts on.

StartBulkOperation is decided on the operation: its action, its filter's workflow, its caller.
Each instance it then acts on is decided in the bulk runner, when it acts, as the action's own
rpc by the same caller would be with the policy set in force then (a bulk CANCEL as a Cancel of
that instance, a bulk SUSPEND as a Suspend, ...), and audited like one; so a bulk operation can
do nothing its caller could not do one call at a time. A condition of the bulk rpcs that reads
`instance` (`policy.workflow.operator.condition`) cannot be decided without one, so it is
decided here too, with the instance and the operation's `bulk` in its context. As schedule
firings do (policy/firing.py), the call's `okra-started-by` metadata says where it came from.
"""

from __future__ import annotations

from dataclasses import replace

from okra_sidecar.bulks import BulkAction, BulkSpec
from okra_sidecar.instances import InstanceRecord
from okra_sidecar.policy.audit import Call
from okra_sidecar.policy.document import PolicySet
from okra_sidecar.policy.evaluator import PolicyEvaluator
from okra_sidecar.policy.model import Identity, InstanceView, WorkflowRef
from okra_sidecar.policy.operator_rules import instance_conditions, operator_conditions

__all__ = ["BULK_VERBS", "PolicyBulkItemAuthorizer"]

# The rpc each bulk action is decided as, on one instance.
BULK_VERBS = {
    BulkAction.CANCEL: "Cancel",
    BulkAction.SUSPEND: "Suspend",
    BulkAction.RESUME: "Resume",
    BulkAction.RETRY: "Retry",
    BulkAction.DELETE: "Delete",
    BulkAction.SIGNAL: "Signal",
}
BULK_RPC = "StartBulkOperation"


class PolicyBulkItemAuthorizer:
    """Decides one instance of a bulk operation; raises the denial (PolicyDeniedError) or a
    rate limit (ResourceExhaustedError) as the action's own rpc would."""

    def __init__(self, *, evaluator: PolicyEvaluator) -> None:
        self._evaluator = evaluator

    def needs_instance(self, spec: BulkSpec) -> bool:
        """Whether a decision reads the instance (then the runner loads it first)."""
        policies = self._evaluator.policies
        verb = BULK_VERBS[spec.action]
        return self._evaluator.needs_instance(verb, policies) or bool(_deferred(policies))

    def knows_caller(self, spec: BulkSpec) -> bool:
        """An operation an earlier version started kept no caller: decided as anonymous, its
        instances would be refused (or allowed) for want of one, so with a policy set in force
        the runner skips them; with none, no decision reads the caller."""
        return spec.caller_kept or not self._evaluator.policies.document

    async def __call__(
        self,
        *,
        operation_id: str,
        spec: BulkSpec,
        instance_id: str,
        instance: InstanceRecord | None,
    ) -> None:
        policies = self._evaluator.policies
        view = None
        if instance is not None:
            view = InstanceView(
                instance_id, instance.status.value, instance.workflow_id, instance.tags
            )
        workflow = WorkflowRef.parse(view.workflow_id) if view is not None else None
        call = Call(
            method=BULK_VERBS[spec.action],
            identity=Identity(claims=dict(spec.owner), peer=spec.owner_peer),
            metadata={"okra-started-by": "bulk", "okra-bulk-operation": operation_id},
            workflow=workflow,
            instance=view,
            instance_id=instance_id,
            signal=spec.signal,
            reason=spec.reason,
        )
        if view is not None and _deferred(policies):
            # The bulk rpc's own conditions, now with an instance; the verb's call is recorded.
            bulk = {"action": spec.action.value, "dryRun": False, "id": operation_id}
            bulk_call = replace(call, method=BULK_RPC, signal="", resource=("bulk", bulk))
            await self._evaluator.authorize(bulk_call, policies, record=False)
        await self._evaluator.authorize(call, policies)


def _deferred(policies: PolicySet) -> tuple[str, ...]:
    """The bulk rpcs' conditions that StartBulkOperation could not decide."""
    return instance_conditions(policies, operator_conditions(BULK_RPC))
