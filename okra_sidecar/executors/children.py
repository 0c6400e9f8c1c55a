"""ChildStarter: the `run: workflow` effect starts a child instance linked to its parent.

The child's id derives from parent and effect, so an effect executed twice starts one child.
Its outcome reaches the parent through the child's own final commit (or its cancellation), in
the same atomic step; nothing is delivered here except a refusal. A child is refused when its
workflow is already running among its ancestors (the recursion check, at every depth), when the
run policies refuse it as a Run by the parent's owner, and when an instance limit is reached.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from okra_sidecar.admission import RunLimits
from okra_sidecar.config import HostSettings
from okra_sidecar.engine.runtime.cancelling import cancel_instance
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.engine.runtime.scheduler import FiringAuthorizer
from okra_sidecar.engine.runtime.starter import admission, build_instance, timeout_fields
from okra_sidecar.errors import (
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    PolicyDeniedError,
    ResourceExhaustedError,
)
from okra_sidecar.executors.problems import EffectFailedError, problem
from okra_sidecar.instances import FINISHED_STATUSES, InstanceStatus, ParentLink
from okra_sidecar.policy import rules
from okra_sidecar.policy.causation import CausationGuard
from okra_sidecar.store.base import Store
from okra_sidecar.store.effect_store import EffectEntry, RedisEffectStore
from okra_sidecar.telemetry import tracing

__all__ = ["CHILD_NAMESPACE", "ChildStarter", "child_instance_id"]

DENIED = "Child run denied"
LIMITED = "Child run over a limit"
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
        self,
        *,
        store: Store,
        effects: RedisEffectStore,
        registry: WorkflowRegistry,
        host: HostSettings | None = None,
        authorize: FiringAuthorizer | None = None,
        causation: CausationGuard | None = None,
    ) -> None:
        self._causation = causation
        self._store = store
        self._effects = effects
        self._registry = registry
        self._host = host or HostSettings()
        self._authorize = authorize

    async def _limits(self, owner: dict[str, Any], workflow_id: str, data: Any) -> RunLimits:
        """The run policies' verdict on the child, as a Run by the parent's owner."""
        if self._authorize is None:
            return RunLimits()
        try:
            return await self._authorize(
                owner=owner, workflow_id=workflow_id, workflow_input=data, started_by="parent"
            )
        except PolicyDeniedError as exc:
            raise EffectFailedError(
                problem("authorization", 403, f"child run {workflow_id}: {exc}", title=DENIED)
            ) from None
        except ResourceExhaustedError as exc:
            raise EffectFailedError(
                problem("runtime", 429, f"child run {workflow_id}: {exc}", title=LIMITED)
            ) from None

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
        ancestors, owner = await self._lineage(entry.instance_id, definition.id)
        data = request.get("input")
        data = {} if data is None else data
        try:
            rules.check_input_schema(data, registered.input_validator)
        except InvalidInputError as exc:
            raise EffectFailedError(
                problem("validation", 400, f"input of child run {definition.id}: {exc}")
            ) from None
        limits = await self._limits(owner, definition.id, data)
        if self._causation is not None:
            try:
                await self._causation.count(entry.instance_id)
            except ResourceExhaustedError as exc:
                raise EffectFailedError(
                    problem("runtime", 429, f"child run {definition.id}: {exc}", title=LIMITED)
                ) from None
        child_id = child_instance_id(entry.instance_id, effect_id)
        created_us = time.time_ns() // 1000
        new = build_instance(
            definition,
            instance_id=child_id,
            workflow_input=data,
            created_us=created_us,
            parent=ParentLink(entry.instance_id, effect_id, tuple(ancestors)),
            # The child's turns continue the trace under this effect's span.
            trace_context=tracing.dump_carrier(tracing.current_carrier()),
            owner=owner,
            **timeout_fields(
                limits,
                created_ms=created_us // 1000,
                config_max_s=self._host.max_instance_duration_s,
                config_step_s=self._host.default_timeout_s,
            ),
        )
        if await self._parent_finished(entry.instance_id):
            return child_id  # cancelled meanwhile: nobody awaits this child
        try:
            await self._store.create_instance(
                new, **admission(self._host.max_concurrent_instances, limits)
            )
        except FailedPreconditionError:
            return child_id
        except ResourceExhaustedError as exc:
            raise EffectFailedError(
                problem("runtime", 429, f"child run {definition.id}: {exc}", title=LIMITED)
            ) from None
        await self._cancel_if_orphaned(entry.instance_id, child_id, now_ms=created_us // 1000)
        return child_id

    async def _lineage(self, parent_id: str, workflow_id: str) -> tuple[list[str], dict[str, Any]]:
        """A new child's ancestors and its parent's owner; refuses a workflow already in them.

        Raises:
            EffectFailedError: the workflow would run inside itself.
        """
        parent_wf, ancestors_json, owner_json = await self._effects.instance_fields(
            parent_id, "wf", "anc", "owner"
        )
        ancestors = [*json.loads(ancestors_json or "[]"), parent_wf or ""]
        if workflow_id in ancestors:
            chain = " -> ".join([*ancestors, workflow_id])
            raise EffectFailedError(
                problem(
                    "runtime",
                    508,
                    f"workflow {workflow_id} may not run inside itself ({chain}); "
                    "a child run's workflow must differ from every ancestor's",
                    title="Recursive workflow run",
                )
            )
        return ancestors, json.loads(owner_json or "{}")

    async def _cancel_if_orphaned(self, parent_id: str, child_id: str, *, now_ms: int) -> None:
        """Cancel a child created just after its parent was cancelled.

        The parent lives in another slot, so the create cannot check it. A Cancel of the
        parent cascades to the children it finds after marking the parent: a child created
        too late for that is found here, since this look comes after the create.
        """
        if await self._parent_finished(parent_id):
            try:
                await cancel_instance(
                    self._store, child_id, reason=f"parent {parent_id} cancelled", now_ms=now_ms
                )
            except (NotFoundError, FailedPreconditionError):
                pass  # finished or cancelled by the cascade already

    async def _parent_finished(self, parent_id: str) -> bool:
        (status,) = await self._effects.instance_fields(parent_id, "status")
        return status is None or InstanceStatus(status) in FINISHED_STATUSES
