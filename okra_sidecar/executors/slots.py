"""WorkflowSlots: the executor's call slots each workflow holds, capped per workflow.

Calls hold a slot for as long as they wait for an answer, which a definition sets (its
`timeout`, up to `maxCallTimeout`). Without a cap per workflow, one workflow whose calls never
answer would hold every slot and every other workflow's calls would wait behind it. With one,
it gets `effectWorkflowShare` of them and the rest stay for everyone else; its further calls
are put back at the end of their stream until it holds fewer.
"""

from __future__ import annotations

__all__ = ["WorkflowSlots"]


class WorkflowSlots:
    """Counts the slots each workflow holds; `take` refuses past the per-workflow limit."""

    def __init__(self, *, concurrency: int, share: float) -> None:
        self.limit = max(1, int(concurrency * share))
        self._held: dict[str, int] = {}

    def take(self, workflow: str) -> bool:
        held = self._held.get(workflow, 0)
        if held >= self.limit:
            return False
        self._held[workflow] = held + 1
        return True

    def give_back(self, workflow: str) -> None:
        held = self._held.get(workflow, 0) - 1
        if held > 0:
            self._held[workflow] = held
        else:
            self._held.pop(workflow, None)

    def held(self, workflow: str) -> int:
        return self._held.get(workflow, 0)
