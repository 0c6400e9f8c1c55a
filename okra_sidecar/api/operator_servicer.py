"""WorkflowOperatorServicer: suspend, resume, retry, reset and delete instances, from protobuf
to the store."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc

from okra_sidecar.api.convert import (
    STATUS_TO_PB,
    bulk_action_from_pb,
    bulk_to_pb,
    value_to_python,
)
from okra_sidecar.api.gate import PolicyGate
from okra_sidecar.api.request_checks import MAX_REASON, check_text, query_filter
from okra_sidecar.bulks import BulkAction, BulkSpec
from okra_sidecar.clock import Clock, now_ms
from okra_sidecar.config import HostSettings
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.engine.runtime.resetting import reset_instance
from okra_sidecar.engine.runtime.retrying import retry_instance
from okra_sidecar.errors import (
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    PreconditionViolation,
    Reason,
    ResourceExhaustedError,
)
from okra_sidecar.instances import INSTANCE_ID_RE, QueryFilter
from okra_sidecar.policy import rules
from okra_sidecar.policy.document import BULK_MAX_INSTANCES
from okra_sidecar.policy.model import CallGrant, WorkflowRef
from okra_sidecar.store.base import Store
from okra_sidecar.store.bulk_store import RedisBulkStore
from okra_sidecar.telemetry import tracing

__all__ = ["WorkflowOperatorServicer"]

Context = grpc.aio.ServicerContext[Any, Any]
# The most instances one bulk operation acts on when no policy says otherwise.
DEFAULT_BULK_MAX_INSTANCES = 10_000
MAX_PER_SECOND = 10_000
SAMPLE_SIZE = 10
# StartBulkOperationResponse.matched is an int32.
INT32_MAX = 2**31 - 1
QUERY_PAGE = 1000


class WorkflowOperatorServicer(opb_grpc.WorkflowOperatorAPIServicer):
    """Checks each request like the WorkflowHostAPI does, then applies it in one script."""

    def __init__(
        self,
        *,
        store: Store,
        bulks: RedisBulkStore,
        registry: WorkflowRegistry,
        settings: HostSettings,
        gate: PolicyGate,
        clock: Clock = now_ms,
    ) -> None:
        self._gate = gate
        self._store = store
        self._bulks = bulks
        self._registry = registry
        self._settings = settings
        self._clock = clock

    async def Suspend(self, request: opb.SuspendRequest, context: Context) -> opb.SuspendResponse:
        await self._change_status("Suspend", request, context, self._store.suspend)
        return opb.SuspendResponse()

    async def Resume(self, request: opb.ResumeRequest, context: Context) -> opb.ResumeResponse:
        await self._change_status("Resume", request, context, self._store.resume)
        return opb.ResumeResponse()

    async def _change_status(
        self,
        method: str,
        request: opb.SuspendRequest | opb.ResumeRequest,
        context: Context,
        change: Callable[..., Awaitable[str]],
    ) -> None:
        """Suspend or Resume: one script, applied only if the status the policy decided on
        still holds."""
        instance_id = rules.check_instance_id(request.instance_id)

        async def apply(grant: CallGrant) -> None:
            check_text(request.reason, "reason", MAX_REASON)
            workflow_id = await change(
                instance_id,
                reason=request.reason,
                now_ms=self._clock(),
                expect_status=grant.expected_status,
            )
            tracing.annotate(workflow_id=workflow_id)

        await self._gate.on_instance(
            context, method, instance_id, reason=request.reason, apply=apply
        )

    async def Retry(self, request: opb.RetryRequest, context: Context) -> opb.RetryResponse:
        instance_id = rules.check_instance_id(request.instance_id)

        async def retry(grant: CallGrant) -> opb.RetryResponse:
            # retry.lua applies it under the revision it read, whatever the policies saw.
            check_text(request.reason, "reason", MAX_REASON)
            variables: dict[str, Any] = {}
            if request.HasField("variables"):
                rules.check_input_size(
                    request.variables.ByteSize(), self._settings.max_input_bytes, field="variables"
                )
                variables = {
                    k: value_to_python(v, f"variables.{k}")
                    for k, v in request.variables.fields.items()
                }
                rules.check_input_depth(
                    variables, self._settings.max_input_depth, field="variables"
                )
            workflow_id, task = await retry_instance(
                self._store,
                instance_id,
                reason=request.reason,
                now_ms=self._clock(),
                variables=variables,
            )
            tracing.annotate(workflow_id=workflow_id)
            return opb.RetryResponse(task=task)

        return await self._gate.on_instance(
            context, "Retry", instance_id, reason=request.reason, apply=retry
        )

    async def Reset(self, request: opb.ResetRequest, context: Context) -> opb.ResetResponse:
        instance_id = rules.check_instance_id(request.instance_id)

        async def reset(grant: CallGrant) -> opb.ResetResponse:
            # reset.lua applies it under the revision it read, and refuses a busy instance.
            check_text(request.reason, "reason", MAX_REASON)
            workflow_id, previous = await reset_instance(
                self._store,
                self._registry,
                instance_id,
                task=request.task,
                reason=request.reason,
                now_ms=self._clock(),
                expect_status=grant.expected_status,
            )
            tracing.annotate(workflow_id=workflow_id)
            return opb.ResetResponse(task=request.task, previous_status=STATUS_TO_PB[previous])

        return await self._gate.on_instance(
            context, "Reset", instance_id, reason=request.reason, apply=reset
        )

    async def Delete(self, request: opb.DeleteRequest, context: Context) -> opb.DeleteResponse:
        instance_id = rules.check_instance_id(request.instance_id)

        async def delete(grant: CallGrant) -> opb.DeleteResponse:
            await self._store.delete(instance_id)
            return opb.DeleteResponse()

        return await self._gate.on_instance(context, "Delete", instance_id, apply=delete)

    async def StartBulkOperation(
        self, request: opb.StartBulkOperationRequest, context: Context
    ) -> opb.StartBulkOperationResponse:
        # Decided on the action and the filter's workflow before any other field is checked;
        # an action number the enum does not name has no name to decide on.
        action = bulk_action_from_pb(request.action).value
        workflow = None
        if request.filter.workflow_id:
            rules.check_workflow_id(request.filter.workflow_id)
            workflow = WorkflowRef.parse(request.filter.workflow_id)
        grant = await self._gate.bulk(
            context,
            "StartBulkOperation",
            {"action": action, "dryRun": request.dry_run},
            workflow=workflow,
            reason=request.reason,
        )
        # Each instance is decided in the bulk runner as its caller's own call would be.
        spec = replace(
            self._bulk_spec(request),
            owner=dict(grant.identity.claims),
            owner_peer=grant.identity.peer,
        )
        if request.filter.limit or request.filter.cursor:
            field = "filter.limit" if request.filter.limit else "filter.cursor"
            raise InvalidInputError.for_field(
                field, "must be unset: a bulk operation acts on every matching instance"
            )
        matching = query_filter(request.filter, limit=QUERY_PAGE, field="filter.")
        granted = grant.bulk_max_instances
        limit = granted or DEFAULT_BULK_MAX_INSTANCES
        workflows = await self._matching(matching, limit)
        over = len(workflows) > limit
        if over and not request.dry_run:
            raise _too_many_instances(limit, policy_set=granted is not None)
        instance_ids = list(workflows)
        if spec.action is BulkAction.SIGNAL:
            await self._check_payload(spec, set(workflows.values()))
        matched = len(instance_ids)
        if over:
            # A dry run is a preview: past the limit it counts from the indexes rather than
            # reading every match, and says the limit a real run would be refused over.
            matched = max(matched, await self._store.count(matching))
        response = opb.StartBulkOperationResponse(
            matched=min(matched, INT32_MAX),
            sample_instance_ids=instance_ids[:SAMPLE_SIZE],
            max_instances=limit,
        )
        if request.dry_run:
            return response
        operation_id = str(uuid.uuid4())
        tracing.annotate(bulk_id=operation_id)
        await self._bulks.create(
            operation_id,
            spec,
            instance_ids,
            now_ms=self._clock(),
            # Each instance's payload schema, handed to the runner with its claim.
            workflows=workflows if spec.action is BulkAction.SIGNAL else None,
        )
        response.operation_id = operation_id
        return response

    def _bulk_spec(self, request: opb.StartBulkOperationRequest) -> BulkSpec:
        action = bulk_action_from_pb(request.action)
        check_text(request.reason, "reason", MAX_REASON)
        if not 0 <= request.max_per_second <= MAX_PER_SECOND:
            raise InvalidInputError.for_field(
                "max_per_second", f"must be 0 (no limit) to {MAX_PER_SECOND}"
            )
        payload = None
        if action is BulkAction.SIGNAL:
            rules.check_signal_name(request.signal)
            rules.check_input_size(
                request.payload.ByteSize(), self._settings.max_input_bytes, field="payload"
            )
            if request.HasField("payload"):
                payload = value_to_python(request.payload, "payload")
            rules.check_input_depth(payload, self._settings.max_input_depth, field="payload")
        elif request.signal or request.HasField("payload"):
            field = "signal" if request.signal else "payload"
            raise InvalidInputError.for_field(field, "is only for BULK_ACTION_SIGNAL")
        return BulkSpec(
            action=action,
            reason=request.reason,
            signal=request.signal,
            payload=payload,
            max_per_second=request.max_per_second,
        )

    async def _check_payload(self, spec: BulkSpec, workflow_ids: set[str]) -> None:
        """A bulk SIGNAL's payload, refused when every matched workflow declares a schema for
        the signal that refuses it: nothing could take it. Otherwise the runner checks it per
        instance against its own workflow's schema and skips the instances it does not fit."""
        refusals: list[InvalidInputError] = []
        for workflow_id in sorted(workflow_ids):
            definition = (await self._registry.get(workflow_id)).definition
            schema = definition.signal_payloads.get(spec.signal)
            if schema is None:
                return
            try:
                rules.check_input_schema(
                    spec.payload,
                    schema.validator,
                    field="payload",
                    schema=f"signal {spec.signal}'s payload in {workflow_id}",
                )
            except InvalidInputError as exc:
                refusals.append(exc)
            else:
                return
        if refusals:
            raise refusals[0]

    async def _matching(self, matching: QueryFilter, limit: int) -> dict[str, str]:
        """Every matching instance id, newest first, with its workflow; past `limit` it stops
        reading, so more than `limit` entries mean the filter matches too many."""
        found: dict[str, str] = {}
        cursor = ""
        while True:
            page = await self._store.query(replace(matching, cursor=cursor))
            found.update((r.instance_id, r.workflow_id) for r in page.instances)
            if len(found) > limit or not page.cursor:
                return found
            cursor = page.cursor

    async def GetBulkOperation(
        self, request: opb.GetBulkOperationRequest, context: Context
    ) -> opb.GetBulkOperationResponse:
        await self._gate.bulk(context, "GetBulkOperation", {"id": request.operation_id})
        operation_id = _check_operation_id(request.operation_id)
        record = await self._bulks.get(operation_id)
        if record is None:
            raise _operation_not_found(operation_id)
        return opb.GetBulkOperationResponse(operation=bulk_to_pb(record))

    async def CancelBulkOperation(
        self, request: opb.CancelBulkOperationRequest, context: Context
    ) -> opb.CancelBulkOperationResponse:
        await self._gate.bulk(context, "CancelBulkOperation", {"id": request.operation_id})
        operation_id = _check_operation_id(request.operation_id)
        outcome = await self._bulks.cancel(operation_id, now_ms=self._clock())
        if outcome[0] == "missing":
            raise _operation_not_found(operation_id)
        if outcome[0] == "finished":
            raise FailedPreconditionError(
                f"bulk operation {operation_id} is {outcome[1]} already; nothing is left to cancel",
                reason=Reason.BULK_OPERATION_FINISHED,
                violation=PreconditionViolation(
                    "BULK_OPERATION_STATE",
                    f"bulk/{operation_id}",
                    "the operation must be running",
                ),
                metadata={"operation": operation_id, "state": outcome[1]},
            )
        return opb.CancelBulkOperationResponse()

    async def ListBulkOperations(
        self, request: opb.ListBulkOperationsRequest, context: Context
    ) -> opb.ListBulkOperationsResponse:
        await self._gate.bulk(context, "ListBulkOperations", {"id": ""})
        return opb.ListBulkOperationsResponse(
            operations=[bulk_to_pb(r) for r in await self._bulks.recent()]
        )


def _too_many_instances(limit: int, *, policy_set: bool) -> ResourceExhaustedError:
    source = f" ({BULK_MAX_INSTANCES})" if policy_set else ""
    return ResourceExhaustedError(
        f"the filter matches more than {limit} instances, the most one bulk "
        f"operation may act on{source}; narrow the filter or split the work",
        reason=Reason.BULK_TOO_MANY_INSTANCES,
        policy=BULK_MAX_INSTANCES if policy_set else "",
        metadata={"limit": str(limit)},
    )


def _check_operation_id(operation_id: str) -> str:
    operation_id = operation_id.lower()
    if not INSTANCE_ID_RE.fullmatch(operation_id):
        raise InvalidInputError.for_field(
            "operation_id",
            f"{operation_id[:100]!r} is not a bulk operation id: expected the UUID that "
            "StartBulkOperation returned",
        )
    return operation_id


def _operation_not_found(operation_id: str) -> NotFoundError:
    return NotFoundError(
        f"bulk operation {operation_id} does not exist",
        reason=Reason.BULK_OPERATION_NOT_FOUND,
        metadata={"operation": operation_id},
    )
