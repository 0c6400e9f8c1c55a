"""InstanceWorkflows: which workflow an instance runs, remembered for the Signals that follow."""

from __future__ import annotations

__all__ = ["InstanceWorkflows"]

# About 200 bytes an entry: the instances a sidecar started or signalled lately.
DEFAULT_CAPACITY = 16_384


class InstanceWorkflows:
    """A bounded map of instance id to workflow id, oldest entry out first.

    An instance keeps its workflow for life (its id is random or derived from the workflow's
    full id), so an entry stays right; a Signal still sends the remembered workflow to the
    store, which refuses to write when the instance runs another, so that a wrong entry can
    never let a payload past the schema of the workflow the instance runs.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._workflows: dict[str, str] = {}

    def get(self, instance_id: str) -> str | None:
        return self._workflows.get(instance_id)

    def remember(self, instance_id: str, workflow_id: str) -> None:
        workflows = self._workflows
        if instance_id not in workflows and len(workflows) >= self._capacity:
            # Dicts keep insertion order: the first key is the oldest.
            del workflows[next(iter(workflows))]
        workflows[instance_id] = workflow_id

    def forget(self, instance_id: str) -> None:
        self._workflows.pop(instance_id, None)

    def __len__(self) -> int:
        return len(self._workflows)
