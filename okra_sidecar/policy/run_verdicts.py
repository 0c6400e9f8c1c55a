"""RunVerdicts: what a policy set's lists and limits decide for a Run of one workflow."""

from __future__ import annotations

from okra_sidecar.admission import RunLimits
from okra_sidecar.policy import document as keys
from okra_sidecar.policy.document import PolicySet
from okra_sidecar.policy.model import WorkflowRef

__all__ = ["WORKFLOW_CACHE_SIZE", "RunVerdict", "RunVerdicts", "listed", "run_list_problem"]

WORKFLOW_CACHE_SIZE = 1024

# (policy key, message) when the lists forbid the Run, else None; and the Run's limits.
RunVerdict = tuple[tuple[str, str] | None, RunLimits]


def listed(patterns: tuple[str, ...]) -> str:
    return ", ".join(patterns)


def run_list_problem(
    policies: PolicySet, workflow: WorkflowRef, own_namespace: str
) -> tuple[str, str] | None:
    """(policy key, message) when the allow/block lists or namespace rules forbid a run."""
    names = workflow.names()
    blocked = policies.run_blocked.match(names)
    if blocked is not None:
        return (
            keys.RUN_BLOCKED,
            f"{keys.RUN_BLOCKED} lists {blocked!r}; remove it from that list to run {workflow.key}",
        )
    allowed = policies.run_allowed
    if allowed and allowed.match(names) is None:
        return (
            keys.RUN_ALLOWED,
            f"{workflow.key} is not in {keys.RUN_ALLOWED} ({listed(allowed.patterns)}); "
            "add it to that list to run it",
        )
    if workflow.namespace != own_namespace:
        namespaces = policies.run_allowed_namespaces
        if namespaces and namespaces.match([workflow.namespace]) is None:
            return (
                keys.RUN_ALLOWED_NAMESPACES,
                f"namespace {workflow.namespace!r} is not in {keys.RUN_ALLOWED_NAMESPACES} "
                f"({listed(namespaces.patterns)}) and is not this service's namespace "
                f"{own_namespace!r}; add it to that list to run {workflow.key}",
            )
        if not namespaces and not policies.run_cross_namespace:
            return (
                keys.RUN_CROSS_NAMESPACE,
                f"{workflow.key} is in namespace {workflow.namespace!r}, not this service's "
                f"namespace {own_namespace!r} (serviceNamespace), and {keys.RUN_CROSS_NAMESPACE} "
                f"is false; set it to true or list {workflow.namespace!r} in "
                f"{keys.RUN_ALLOWED_NAMESPACES}",
            )
    return None


class RunVerdicts:
    """run_list_problem and the RunLimits of each workflow under the policy set in force.

    Both depend only on the policy set and the workflow, so they are decided once per workflow
    while the set stays in force (at most WORKFLOW_CACHE_SIZE workflows; a new set starts
    afresh).
    """

    def __init__(self, own_namespace: str) -> None:
        self._own_namespace = own_namespace
        self._held: PolicySet | None = None
        self._verdicts: dict[WorkflowRef, RunVerdict] = {}

    def verdict(self, policies: PolicySet, workflow: WorkflowRef) -> RunVerdict:
        verdicts = self._verdicts
        if self._held is not policies or len(verdicts) >= WORKFLOW_CACHE_SIZE:
            verdicts = self._verdicts = {}
            self._held = policies
        verdict = verdicts.get(workflow)
        if verdict is None:
            limits = RunLimits(
                max_active=policies.max_concurrent_instances,
                max_active_policy=keys.MAX_CONCURRENT_INSTANCES,
                max_per_workflow=policies.workflow_limit(workflow.key),
                max_duration_ms=policies.max_duration_ms,
                step_timeout_ms=policies.default_timeout_ms,
                timeout_action=policies.timeout_action,
            )
            problem = run_list_problem(policies, workflow, self._own_namespace)
            verdict = verdicts[workflow] = (problem, limits)
        return verdict
