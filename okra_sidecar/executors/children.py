"""ChildStarter: the `run: workflow` effect starts a child instance linked to its parent.

The child's id derives from parent and effect, so an effect executed twice starts one child.
Its outcome reaches the parent through the child's own final commit (or its cancellation), in
the same atomic step; nothing is delivered here except a refusal. A child is refused when its
workflow is already running among its ancestors: the recursion check, at every depth.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from okra_sidecar.engine.cancelling import cancel_instance
from okra_sidecar.engine.interpreter import start_state
from okra_sidecar.engine.registry import WorkflowRegistry
from okra_sidecar.errors import FailedPreconditionError, InvalidInputError, NotFoundError
from okra_sidecar.executors.problems import EffectFailedError, problem
from okra_sidecar.instances import FINISHED_STATUSES, InstanceStatus, NewInstance, ParentLink
from okra_sidecar.policy import rules
from okra_sidecar.store.base import Store
from okra_sidecar.store.effect_store import EffectEntry, RedisEffectStore
from okra_sidecar.telemetry import tracing

__all__ = ["CHILD_NAMESPACE", "ChildStarter", "child_instance_id"]

CHILD_NAMESPACE = uuid.UUID("6f6b7261-6368-696c-642d-72756e732d31")


def child_instance_id(parent_id: str, effect_id: str) -> str:
    return str(uuid.uuid5(CHILD_NAMESPACE, f"{parent_id}/{effect_id}"))


def _workflow_id(spec: Any) -> str:
    if not isinstance(spec, dict) or not spec.get("name"):
        raise EffectFailedError(problem("configuration", 400, "run.workflow names no workflow"))
    parts = [spec.get("namespace") or "default", spec["name"]]
    version = spec.get("version")
    if version and version != "latest":
        parts.append(str(version))
    return ".".join(str(p) for p in parts)


class ChildStarter:
    def __init__(
        self, *, store: Store, effects: RedisEffectStore, registry: WorkflowRegistry
    ) -> None:
        self._store = store
        self._effects = effects
        self._registry = registry

    async def start(self, entry: EffectEntry, request: dict[str, Any]) -> str:
        """Create the child (once); returns its id.

        Raises:
            EffectFailedError: the workflow is unknown or recursive, or the input is invalid.
        """
        effect_id = str(entry.effect["id"])
        wanted = _workflow_id(request.get("workflow"))
        try:
            registered = await self._registry.resolve(wanted)
        except NotFoundError as exc:
            raise EffectFailedError(problem("configuration", 404, str(exc))) from None
        definition = registered.definition
        parent_wf, ancestors_json = await self._effects.instance_fields(
            entry.instance_id, "wf", "anc"
        )
        ancestors = [*json.loads(ancestors_json or "[]"), parent_wf or ""]
        if definition.id in ancestors:
            chain = " -> ".join([*ancestors, definition.id])
            raise EffectFailedError(
                problem(
                    "runtime",
                    508,
                    f"workflow {definition.id} may not run inside itself ({chain}); "
                    "a child run's workflow must differ from every ancestor's",
                    title="Recursive workflow run",
                )
            )
        data = request.get("input")
        data = {} if data is None else data
        try:
            rules.check_input_schema(data, registered.input_validator)
        except InvalidInputError as exc:
            raise EffectFailedError(
                problem("validation", 400, f"input of child run {definition.id}: {exc}")
            ) from None
        child_id = child_instance_id(entry.instance_id, effect_id)
        created_us = time.time_ns() // 1000
        state = start_state(
            definition, instance_id=child_id, workflow_input=data, now_ms=created_us // 1000
        )
        if await self._parent_finished(entry.instance_id):
            return child_id  # cancelled meanwhile: nobody awaits this child
        try:
            await self._store.create_instance(
                NewInstance(
                    instance_id=child_id,
                    workflow_id=definition.id,
                    input=data,
                    correlation_id="",
                    tags={},
                    state=state,
                    created_us=created_us,
                    parent=ParentLink(entry.instance_id, effect_id, tuple(ancestors)),
                    # The child's turns continue the trace under this effect's span.
                    trace_context=tracing.dump_carrier(tracing.current_carrier()),
                ),
                max_active=0,
            )
        except FailedPreconditionError:
            return child_id
        # The parent lives in another slot, so the create cannot check it. A Cancel of the
        # parent cascades to the children it finds after marking the parent: a child created
        # too late for that is found here, since this look comes after the create.
        if await self._parent_finished(entry.instance_id):
            try:
                await cancel_instance(
                    self._store,
                    child_id,
                    reason=f"parent {entry.instance_id} cancelled",
                    now_ms=created_us // 1000,
                )
            except (NotFoundError, FailedPreconditionError):
                pass  # finished or cancelled by the cascade already
        return child_id

    async def _parent_finished(self, parent_id: str) -> bool:
        (status,) = await self._effects.instance_fields(parent_id, "status")
        return status is None or InstanceStatus(status) in FINISHED_STATUSES
