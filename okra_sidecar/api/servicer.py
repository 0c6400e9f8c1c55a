"""WorkflowHostServicer: the WorkflowHostAPI rpcs, from protobuf to the store and engine."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Value
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from okra_sidecar.admission import CAUSE_ATTRIBUTE
from okra_sidecar.api.convert import (
    STATUS_FROM_PB,
    STATUS_TO_PB,
    check_statuses,
    history_event_to_pb,
    optional_time_ms,
    record_to_pb,
    value_to_python,
)
from okra_sidecar.api.gate import ParsedInput, PolicyGate, RunTarget
from okra_sidecar.api.instance_workflows import InstanceWorkflows
from okra_sidecar.api.request_checks import (
    MAX_REASON,
    check_request_id,
    check_tags,
    check_text,
    fields_under,
    query_filter,
)
from okra_sidecar.api.waiting import InstanceWaiting, await_budget, check_revision
from okra_sidecar.clock import Clock, now_ms
from okra_sidecar.config import HostSettings
from okra_sidecar.engine.definitions.dsl import WorkflowDefinition
from okra_sidecar.engine.definitions.tasks import SchemaCheck
from okra_sidecar.engine.interpreter.effects import signal_event
from okra_sidecar.engine.runtime.cancelling import cancel_instance
from okra_sidecar.engine.runtime.registry import RegisteredWorkflow, WorkflowRegistry
from okra_sidecar.engine.runtime.starter import admission, build_instance, timeout_fields
from okra_sidecar.errors import (
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    PreconditionViolation,
    Reason,
    instance_not_found,
)
from okra_sidecar.instances import (
    InstanceRecord,
    InstanceStatus,
    NewInstance,
    random_uuid,
    run_instance_id,
)
from okra_sidecar.policy import rules
from okra_sidecar.policy.causation import CAUSE_METADATA, CausationGuard
from okra_sidecar.policy.model import CallGrant, WorkflowRef, current_identity
from okra_sidecar.store.base import Store, WorkflowMismatchError
from okra_sidecar.store.change_feed import ChangeFeed
from okra_sidecar.store.effect_store import RedisEffectStore
from okra_sidecar.telemetry import SidecarMetrics, tracing

Context = grpc.aio.ServicerContext[Any, Any]
# Run ids derived from a request_id are stable, so a retried Run lands on the same instance.
CALLER_WORKFLOW_METADATA = "okra-caller-workflow"
RESERVED_EVENT_PREFIX = "io.okra."


def _run_metadata(context: Context) -> tuple[str, str]:
    """A Run's caller workflow and signed cause, in one pass over the call's metadata (grpc
    builds it afresh on every read)."""
    caller: str | None = None
    cause: str | None = None
    for key, value in context.invocation_metadata() or ():
        # The first value of each counts, as grpc's own lookups would.
        if key == CALLER_WORKFLOW_METADATA and caller is None:
            caller = value if isinstance(value, str) else value.decode()
        elif key == CAUSE_METADATA and cause is None:
            cause = value if isinstance(value, str) else value.decode()
    return caller or "", cause or ""


def _what_starts(triggers: tuple[str, ...]) -> str:
    """How a workflow starts when Run may not start it, from its definition's `schedule`."""
    starts = []
    timed = [t for t in triggers if t in ("cron", "every", "after")]
    if timed:
        starts.append(f"its schedule ({', '.join(timed)})")
    if "event" in triggers:
        starts.append("the events its schedule.on waits for")
    if starts:
        return "starts only from " + " and ".join(starts)
    return "has no schedule, so here it starts only as a child run of another workflow"


class WorkflowHostServicer(pb_grpc.WorkflowHostAPIServicer):
    """Validates each request by the code-level rules, then calls the store and engine."""

    def __init__(
        self,
        *,
        store: Store,
        registry: WorkflowRegistry,
        settings: HostSettings,
        metrics: SidecarMetrics | None = None,
        effects: RedisEffectStore | None = None,
        changes: ChangeFeed,
        gate: PolicyGate,
        causation: CausationGuard | None = None,
        clock: Clock = now_ms,
    ) -> None:
        self._gate = gate
        self._causation = causation
        self._waiting = InstanceWaiting(store=store, changes=changes)
        self._clock = clock
        self._store = store
        self._effects = effects
        self._registry = registry
        self._settings = settings
        self._metrics = metrics or SidecarMetrics()
        self._instance_workflows = InstanceWorkflows()

    async def _ancestors(self, signed: str, workflow_id: str) -> tuple[str, ...]:
        """The chain behind a Run that a workflow's gRPC call made (its signed `okra-cause`)."""
        if self._causation is None:
            return ()
        cause = await self._causation.verify(signed)
        return await self._causation.admit(cause, workflow_id)

    async def _run_target(
        self, request: pb.RunRequest, input_field: str = "input"
    ) -> tuple[RegisteredWorkflow | None, RunTarget]:
        """The workflow a Run names, looked up once for the policies and the instance
        (`namespace.name` is its newest version), and what the policies decide on. None when
        it is not registered: the policies decide first, and the Run then says NOT_FOUND."""
        try:
            registered = await self._registry.resolve(request.workflow_id)
            workflow = WorkflowRef.parse(registered.definition.id)
        except NotFoundError:
            registered, workflow = None, WorkflowRef.parse(request.workflow_id)
        return registered, RunTarget(
            workflow=workflow,
            instance_id=run_instance_id(workflow.full_id, request.request_id),
            tags=dict(request.tags),
            parsed=ParsedInput(request.input if request.HasField("input") else None, input_field),
        )

    async def _new_instance(
        self,
        request: pb.RunRequest,
        context: Context,
        registered: RegisteredWorkflow | None,
        target: RunTarget,
        grant: CallGrant,
    ) -> NewInstance:
        """The instance a Run request asks for, its request checked by the code-level rules."""
        parsed, instance_id = target.parsed, target.instance_id
        rules.check_input_size(parsed.size, self._settings.max_input_bytes)
        check_text(request.correlation_id, "correlation_id")
        check_text(request.request_id, "request_id")
        tags = target.tags
        check_tags(tags)
        # Not registered: resolving again raises its NOT_FOUND, now that the policies allowed.
        registered = registered or await self._registry.resolve(request.workflow_id)
        definition = registered.definition
        if not self._settings.enable_manual_triggers:
            raise FailedPreconditionError(
                "manual runs are disabled on this sidecar (enableManualTriggers: false); "
                f"workflow {definition.id} {_what_starts(definition.triggers)}",
                reason=Reason.MANUAL_RUNS_DISABLED,
                violation=PreconditionViolation(
                    "MANUAL_RUNS", f"workflow/{definition.id}", "enableManualTriggers must be true"
                ),
                metadata={"workflow": definition.id},
            )
        caller_workflow, signed_cause = _run_metadata(context)
        rules.check_not_self(definition.key, caller_workflow)
        # No coroutine for the usual Run, which no workflow's call made.
        ancestors = await self._ancestors(signed_cause, definition.id) if signed_cause else ()
        data = parsed.data if parsed.value is not None else {}
        rules.check_input_depth(data, self._settings.max_input_depth, encoded_bytes=parsed.size)
        rules.check_input_schema(data, registered.input_validator)
        created_us = time.time_ns() // 1000
        tracing.annotate(instance_id=instance_id)
        # The policy set that allowed this Run fixed its limits and timeouts (a CallGrant).
        limits = grant.run_limits
        return build_instance(
            definition,
            instance_id=instance_id,
            workflow_input=data,
            created_us=created_us,
            correlation_id=request.correlation_id,
            tags=tags,
            # Turns on any sidecar continue the trace of this Run.
            trace_context=tracing.dump_carrier(tracing.current_carrier()),
            owner=current_identity().claims,
            ancestors=ancestors,
            **timeout_fields(
                limits,
                created_ms=created_us // 1000,
                config_max_s=self._settings.max_instance_duration_s,
                config_step_s=self._settings.default_timeout_s,
            ),
        )

    def _admission(self, grant: CallGrant) -> dict[str, Any]:
        return admission(self._settings.max_concurrent_instances, grant.run_limits)

    async def Run(self, request: pb.RunRequest, context: Context) -> pb.RunResponse:
        rules.check_workflow_id(request.workflow_id)
        registered, target = await self._run_target(request)

        async def create(grant: CallGrant) -> pb.RunResponse:
            new = await self._new_instance(request, context, registered, target, grant)
            await self._store.create_instance(new, **self._admission(grant))
            self._instance_workflows.remember(new.instance_id, new.workflow_id)
            return pb.RunResponse(instance_id=new.instance_id)

        return await self._gate.run(context, target, create)

    def _signal_event(
        self,
        signal: str,
        payload_value: Value | None,
        signal_id: str,
        schema: SchemaCheck | None = None,
    ) -> dict[str, Any]:
        """The CloudEvent a signal is delivered as (its name checked before the policies),
        its fields checked by the code-level rules and its payload by the `schema` the
        workflow declares for it, if any."""
        size = payload_value.ByteSize() if payload_value is not None else 0
        rules.check_input_size(size, self._settings.max_input_bytes, field="payload")
        check_text(signal_id, "signal_id")
        payload = value_to_python(payload_value, "payload") if payload_value is not None else None
        rules.check_input_depth(
            payload, self._settings.max_input_depth, field="payload", encoded_bytes=size
        )
        if schema is not None:
            rules.check_input_schema(
                payload, schema.validator, field="payload", schema=f"signal {signal}'s payload"
            )
        event = signal_event(
            signal, payload, signal_id=signal_id or random_uuid(), sent_ms=self._clock()
        )
        # CloudEvents distributed tracing: the turn that consumes it links to this call.
        return {**event, **tracing.event_trace_fields()}

    def _delivery(
        self,
        request: pb.SignalRequest | pb.SignalWithStartRequest,
        grant: CallGrant,
        definition: WorkflowDefinition | None,
    ) -> dict[str, Any]:
        """The store's arguments for a signal: its CloudEvent, delivered once per id and only
        while the instance has the status the policy decided on."""
        payload = request.payload if request.HasField("payload") else None
        schema = definition.signal_payloads.get(request.signal) if definition else None
        event = self._signal_event(request.signal, payload, request.signal_id, schema)
        return {
            "signal_id": event["id"],
            "event": event,
            "now_ms": self._clock(),
            "expect_status": grant.expected_status,
        }

    async def _read_workflow(self, instance_id: str) -> str | None:
        """The instance's workflow (its payload schemas), read and then remembered; None when
        there is no instance (the policies or the store then say NOT_FOUND)."""
        workflow_id = await self._store.instance_workflow(instance_id)
        if workflow_id is not None:
            self._instance_workflows.remember(instance_id, workflow_id)
        return workflow_id

    async def Signal(self, request: pb.SignalRequest, context: Context) -> pb.SignalResponse:
        instance_id = rules.check_instance_id(request.instance_id)
        rules.check_signal_name(request.signal)
        # An instance never changes workflow, so a Signal to one this sidecar started or
        # signalled reads nothing (the store checks the remembered id as it writes; see
        # InstanceWorkflows), and awaits nothing for it.
        workflow_id = self._instance_workflows.get(instance_id)
        remembered = workflow_id is not None
        if not remembered:
            workflow_id = await self._read_workflow(instance_id)

        async def send(
            grant: CallGrant, workflow_id: str | None, remembered: bool
        ) -> pb.SignalResponse:
            definition = None
            if workflow_id is not None:
                definition = (await self._registry.get(workflow_id)).definition
            delivery = self._delivery(request, grant, definition)
            expect_workflow = workflow_id if remembered else None
            duplicate = await self._store.signal(
                instance_id, **delivery, expect_workflow=expect_workflow
            )
            if not duplicate:
                self._metrics.signal_delivered()
            return pb.SignalResponse(signal_id=delivery["signal_id"], duplicate=duplicate)

        async def deliver(grant: CallGrant) -> pb.SignalResponse:
            try:
                return await send(grant, workflow_id, remembered)
            except WorkflowMismatchError:
                # The instance runs another workflow than remembered: read it afresh.
                self._instance_workflows.forget(instance_id)
                return await send(grant, await self._read_workflow(instance_id), False)

        return await self._gate.on_instance(
            context, "Signal", instance_id, signal=request.signal, apply=deliver
        )

    async def SignalWithStart(
        self, request: pb.SignalWithStartRequest, context: Context
    ) -> pb.SignalWithStartResponse:
        run = request.run
        with fields_under("run."):
            rules.check_workflow_id(run.workflow_id)
            check_request_id(run.request_id)
        rules.check_signal_name(request.signal)
        registered, target = await self._run_target(run, "run.input")

        async def signal_or_start(grant: CallGrant) -> pb.SignalWithStartResponse:
            # Converted (if the gate did not) before fields_under: ParsedInput names run.input.
            _ = target.parsed.data
            with fields_under("run."):
                new = await self._new_instance(run, context, registered, target, grant)
            # _new_instance raised NOT_FOUND if the workflow is not registered.
            workflow = registered or await self._registry.resolve(run.workflow_id)
            delivery = self._delivery(request, grant, workflow.definition)
            started, duplicate = await self._store.signal_with_start(
                new, **delivery, **self._admission(grant)
            )
            # Its id derives from the workflow's full id, so it runs `new`'s workflow whether
            # this call started it or not: a Signal that follows reads nothing.
            self._instance_workflows.remember(new.instance_id, new.workflow_id)
            if not duplicate:
                self._metrics.signal_delivered()
            return pb.SignalWithStartResponse(
                instance_id=new.instance_id,
                started=started,
                signal_id=delivery["signal_id"],
                duplicate=duplicate,
            )

        return await self._gate.signal_with_start(context, target, request.signal, signal_or_start)

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.WorkflowInstance:
        instance_id = rules.check_instance_id(request.instance_id)
        record = await self._store.get_instance(instance_id)
        if record is None:
            raise instance_not_found(instance_id)
        await self._gate.read(context, "GetStatus", instance_id, record.workflow_id)
        return record_to_pb(record)

    async def AwaitInstance(
        self, request: pb.AwaitInstanceRequest, context: Context
    ) -> pb.AwaitInstanceResponse:
        instance_id = rules.check_instance_id(request.instance_id)
        # A malformed request is INVALID_ARGUMENT whether or not the instance exists.
        statuses = check_statuses(request.statuses, "statuses")
        revision = check_revision(request.revision if request.HasField("revision") else None)
        await self._gate.read_before_waiting(context, "AwaitInstance", instance_id)
        record = await self._waiting.await_instance(
            instance_id,
            statuses=statuses,
            revision=revision,
            budget_s=await_budget(context.time_remaining()),
        )
        return pb.AwaitInstanceResponse(instance=record_to_pb(record))

    def WatchInstance(
        self, request: pb.WatchInstanceRequest, context: Context
    ) -> AsyncIterator[pb.WatchInstanceResponse]:
        # Not a generator of its own: a held stream would keep one more frame for its life.
        instance_id = rules.check_instance_id(request.instance_id)
        decide = partial(self._gate.read_before_waiting, context, "WatchInstance", instance_id)
        return self._waiting.watch(instance_id, _watch_response, decide=decide)

    async def _decide_query(
        self, request: pb.QueryRequest | pb.CountRequest, context: Context, limit: int
    ) -> None:
        """Query's and Count's policies, which may narrow the request's statuses and page."""
        if request.workflow_id:
            rules.check_workflow_id(request.workflow_id)
        grant = await self._gate.query(
            context,
            "Count" if isinstance(request, pb.CountRequest) else "Query",
            workflow_id=request.workflow_id,
            tags=dict(request.tags),
            statuses=tuple(STATUS_FROM_PB[s].value for s in request.status if s in STATUS_FROM_PB),
            limit=limit,
        )
        if grant.query_statuses is not None and not request.status:
            request.status.extend(STATUS_TO_PB[InstanceStatus(s)] for s in grant.query_statuses)
        if grant.query_limit is not None and isinstance(request, pb.QueryRequest):
            request.limit = grant.query_limit

    async def Query(self, request: pb.QueryRequest, context: Context) -> pb.QueryResponse:
        rules.check_query_limit(request.limit)
        await self._decide_query(request, context, request.limit)
        limit = rules.check_query_limit(request.limit)
        page = await self._store.query(query_filter(request, limit=limit, cursor=request.cursor))
        return pb.QueryResponse(
            instances=[record_to_pb(r) for r in page.instances], cursor=page.cursor
        )

    async def Count(self, request: pb.CountRequest, context: Context) -> pb.CountResponse:
        await self._decide_query(request, context, 0)
        return pb.CountResponse(count=await self._store.count(query_filter(request)))

    async def Cancel(self, request: pb.CancelRequest, context: Context) -> pb.CancelResponse:
        instance_id = rules.check_instance_id(request.instance_id)

        async def cancel(grant: CallGrant) -> pb.CancelResponse:
            check_text(request.reason, "reason", MAX_REASON)
            workflow_id = await cancel_instance(
                self._store,
                instance_id,
                reason=request.reason,
                now_ms=self._clock(),
                expect_status=grant.expected_status,
            )
            self._metrics.instance_finished(workflow_id, "cancelled")
            return pb.CancelResponse()

        return await self._gate.on_instance(
            context, "Cancel", instance_id, reason=request.reason, apply=cancel
        )

    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: Context
    ) -> pb.ListWorkflowsResponse:
        manual = ["manual"] if self._settings.enable_manual_triggers else []
        definitions = await self._registry.list()
        # "The workflows they may run": what the run policies would refuse is hidden.
        shown = await self._gate.runnable(context, [d.id for d in definitions])
        return pb.ListWorkflowsResponse(
            workflows=[
                pb.WorkflowInfo(
                    workflow_id=d.id,
                    version=d.version,
                    triggers=[*manual, *d.triggers],
                    namespace=d.namespace,
                    name=d.name,
                    title=d.title,
                    summary=d.summary,
                )
                for d, show in zip(definitions, shown, strict=True)
                if show
            ]
        )

    async def Emit(self, request: pb.EmitRequest, context: Context) -> pb.EmitResponse:
        event_fields = {"type": request.type, "source": request.source, "subject": request.subject}
        await self._gate.emit(context, event_fields)
        if not request.type:
            raise InvalidInputError.for_field("type", "is required")
        if request.type.startswith(RESERVED_EVENT_PREFIX):
            raise InvalidInputError.for_field(
                "type", f"types starting {RESERVED_EVENT_PREFIX!r} are the sidecar's own"
            )
        if not request.source:
            raise InvalidInputError.for_field("source", "is required")
        for name, text in (("type", request.type), ("source", request.source)):
            check_text(text, name)
        check_text(request.id, "id")
        check_text(request.subject, "subject")
        rules.check_input_size(
            request.data.ByteSize(), self._settings.max_input_bytes, field="data"
        )
        # okracause says which instance emitted an event: only the engine sets it.
        reserved = {"specversion", "id", "source", "type", "subject", "time", "data"}
        reserved.add(CAUSE_ATTRIBUTE)
        for name in request.extensions:
            if not re.fullmatch(r"[a-z0-9]{1,20}", name) or name in reserved:
                raise InvalidInputError.for_field(
                    f"extensions.{name}",
                    "must be 1-20 lowercase letters or digits, not a core name",
                )
        given = optional_time_ms(request, "time")
        sent = self._clock() if given is None else given
        event: dict[str, Any] = {
            **dict(request.extensions),
            "specversion": "1.0",
            "id": request.id or str(uuid.uuid4()),
            "source": request.source,
            "type": request.type,
            "time": datetime.fromtimestamp(sent / 1000, UTC).isoformat(),
        }
        if request.subject:
            event["subject"] = request.subject
        if request.HasField("data"):
            event["datacontenttype"] = "application/json"
            event["data"] = value_to_python(request.data, "data")
            rules.check_input_depth(event["data"], self._settings.max_input_depth, field="data")
        if self._effects is None:
            raise FailedPreconditionError(
                "this sidecar does not route events",
                reason=Reason.EVENTS_NOT_ROUTED,
                violation=PreconditionViolation(
                    "EVENT_ROUTING", "sidecar", "the sidecar must run the event router"
                ),
                metadata={},
            )
        await self._effects.publish(event)
        return pb.EmitResponse(id=event["id"])

    async def GetHistory(
        self, request: pb.GetHistoryRequest, context: Context
    ) -> pb.GetHistoryResponse:
        instance_id = rules.check_instance_id(request.instance_id)
        # A malformed request is INVALID_ARGUMENT whether or not the instance exists.
        limit = rules.check_query_limit(request.limit)
        await self._gate.history(context, instance_id)
        page = await self._store.history(instance_id, after=request.cursor, limit=limit)
        return pb.GetHistoryResponse(
            events=[history_event_to_pb(eid, event) for eid, event in page.events],
            cursor=page.cursor,
        )


def _watch_response(record: InstanceRecord) -> pb.WatchInstanceResponse:
    return pb.WatchInstanceResponse(instance=record_to_pb(record))


__all__ = ["WorkflowHostServicer"]
