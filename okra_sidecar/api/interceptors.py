"""AuthInterceptor and PolicyInterceptor: grpc.aio adapters for policy/.

AuthInterceptor turns the `authorization` metadata into the caller's Identity (or
UNAUTHENTICATED) for everything below it, streaming rpcs included. PolicyInterceptor reads each
request of the guarded services, runs the code-level checks that identify its target, asks the
PolicyEvaluator, and hands what it allowed (instance limits, the instance status it checked,
narrowed query filters) to the servicer in a CallGrant; events, history, schedules and worker
tasks are described by resource_policies.py. An rpc of a guarded service without a check is
refused. Both wrap the returned handler, so they see the deserialized request.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.api.call_metadata import authorization_of, metadata_of
from okra_sidecar.api.convert import STATUS_FROM_PB, STATUS_TO_PB, check_statuses, value_to_python
from okra_sidecar.api.resource_policies import ResourceChecks, ScheduleReader
from okra_sidecar.api.servicer import check_request_id, fields_under
from okra_sidecar.api.status import status_code_for, status_metadata
from okra_sidecar.api.task_worker import POLL_GATE
from okra_sidecar.api.tls import peer_identity
from okra_sidecar.api.waiting import check_revision
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.errors import (
    InstanceChangedError,
    NotFoundError,
    OkraError,
    ResourceExhaustedError,
    instance_not_found,
)
from okra_sidecar.instances import InstanceStatus, run_instance_id
from okra_sidecar.policy import rules
from okra_sidecar.policy.audit import Call
from okra_sidecar.policy.auth import TokenVerifier
from okra_sidecar.policy.evaluator import PolicyEvaluator
from okra_sidecar.policy.model import (
    InstanceView,
    WorkflowRef,
    current_identity,
    reset_grant,
    reset_identity,
    set_grant,
    set_identity,
)
from okra_sidecar.store.base import Store
from okra_sidecar.telemetry import tracing

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]
if TYPE_CHECKING:
    Continuation = Callable[
        [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
    ]
WORKFLOW_SERVICE = pb.DESCRIPTOR.services_by_name["WorkflowHostAPI"].full_name
OPERATOR_SERVICE = opb.DESCRIPTOR.services_by_name["WorkflowOperatorAPI"].full_name
# Every rpc of these services is decided by a policy; tests/api/test_policy_coverage.py fails
# on an rpc that has no check here.
GUARDED_SERVICES = frozenset(
    {
        WORKFLOW_SERVICE,
        OPERATOR_SERVICE,
        spb.DESCRIPTOR.services_by_name["ScheduleHostAPI"].full_name,
        wpb.DESCRIPTOR.services_by_name["TaskWorker"].full_name,
    }
)
# A status a policy checked may move under a signal or cancel; decide again this often.
MAX_DECISIONS = 3


def _split_method(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


def _rewrap(
    handler: grpc.RpcMethodHandler[Any, Any], behavior: Behavior
) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _rewrap_stream(
    handler: grpc.RpcMethodHandler[Any, Any], behavior: StreamBehavior
) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_stream_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def abort_with(context: Context, exc: OkraError) -> NoReturn:
    """End a streaming call with the error's status, as ErrorInterceptor would."""
    code = status_code_for(exc)
    await context.abort(code, str(exc), status_metadata(code, str(exc), exc))
    raise AssertionError("unreachable")  # pragma: no cover - abort raises


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the bearer token of every rpc, streaming ones too, except health and reflection.

    With `peers` (mutual TLS), the client certificate's identity joins the token's claims.
    """

    def __init__(
        self, *, verifier: TokenVerifier, exempt_services: frozenset[str], peers: bool = False
    ) -> None:
        self._verifier = verifier
        self._exempt = exempt_services
        self._peers = peers

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        service, _ = _split_method(handler_call_details.method)
        if handler is None or service in self._exempt:
            return handler
        verifier = self._verifier
        peers = self._peers

        async def identify(context: Context) -> contextvars.Token[Any]:
            peer = peer_identity(context) if peers else ""
            # Keys from a URL may need fetching first; keys from files and secrets never do.
            if verifier.source is None:
                identity = verifier.identify(authorization_of(context), peer)
            else:
                identity = await verifier.identify_async(authorization_of(context), peer)
            if identity.authenticated:
                tracing.set_caller(identity.describe(), issuer=identity.issuer)
            return set_identity(identity)

        if handler.unary_unary is not None:
            behavior: Behavior = handler.unary_unary  # type: ignore[assignment]

            async def authenticated(request: Any, context: Context) -> Any:
                token = await identify(context)
                try:
                    return await behavior(request, context)
                finally:
                    reset_identity(token)

            return _rewrap(handler, authenticated)
        if handler.unary_stream is not None:
            stream: StreamBehavior = handler.unary_stream  # type: ignore[assignment]

            async def authenticated_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    token = await identify(context)
                except OkraError as exc:
                    await abort_with(context, exc)
                try:
                    async for item in stream(request, context):
                        yield item
                finally:
                    reset_identity(token)

            return _rewrap_stream(handler, authenticated_stream)
        # A client- or bidirectional-streaming rpc outside the exempt services: refuse it
        # (UNIMPLEMENTED) rather than let it pass unauthenticated.
        return None


class PolicyInterceptor(grpc.aio.ServerInterceptor):
    """Asks the PolicyEvaluator about every rpc of the guarded services before it runs."""

    def __init__(
        self,
        *,
        evaluator: PolicyEvaluator,
        store: Store,
        registry: WorkflowRegistry,
        schedules: ScheduleReader | None = None,
    ) -> None:
        self._evaluator = evaluator
        self._store = store
        self._registry = registry
        self._resources = ResourceChecks(evaluator=evaluator, store=store, schedules=schedules)
        self._checks: Mapping[str, Callable[[Behavior, Any, Context], Awaitable[Any]]] = {
            "Run": self._run,
            "Signal": self._act_on_instance,
            "Cancel": self._act_on_instance,
            "Suspend": self._act_on_instance,
            "Resume": self._act_on_instance,
            "Retry": self._act_on_instance,
            "StartBulkOperation": self._bulk,
            "GetBulkOperation": self._bulk,
            "CancelBulkOperation": self._bulk,
            "ListBulkOperations": self._bulk,
            "Delete": self._act_on_instance,
            "Query": self._query,
            "Count": self._query,
            "SignalWithStart": self._signal_with_start,
            "GetStatus": self._get_status,
            "AwaitInstance": self._await_instance,
            "ListWorkflows": self._list_workflows,
            **self._resources.unary,
        }
        self._stream_checks: Mapping[str, Callable[[Any, Context], Awaitable[None]]] = {
            "PollTasks": self._resources.check_poll,
            "WatchInstance": self._check_watch,
        }

    def covers(self, method: str) -> bool:
        """Whether an rpc (by its name) is decided by a policy."""
        return method in self._checks or method in self._stream_checks

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        service, method = _split_method(handler_call_details.method)
        if handler is None or service not in GUARDED_SERVICES:
            return handler
        check = self._checks.get(method)
        if handler.unary_unary is not None and check is not None:
            behavior: Behavior = handler.unary_unary  # type: ignore[assignment]

            async def checked(request: Any, context: Context) -> Any:
                return await check(behavior, request, context)

            return _rewrap(handler, checked)
        stream_check = self._stream_checks.get(method)
        if handler.unary_stream is not None and stream_check is not None:
            stream: StreamBehavior = handler.unary_stream  # type: ignore[assignment]

            async def checked_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    await stream_check(request, context)
                except OkraError as exc:
                    await abort_with(context, exc)

                async def check_again() -> None:
                    await stream_check(request, context)

                # The servicer runs the check again before each task it hands out. Each rpc
                # runs in a task of its own, so the value ends with the call.
                POLL_GATE.set(check_again)
                async for item in stream(request, context):
                    yield item

            return _rewrap_stream(handler, checked_stream)
        # An rpc of a guarded service that no policy decides: fail closed (UNIMPLEMENTED).
        logger.error("no policy check for %s; refusing it", handler_call_details.method)
        return None

    async def _call_with(self, grant: Any, behavior: Behavior, request: Any, ctx: Context) -> Any:
        token = set_grant(grant)
        try:
            return await behavior(request, ctx)
        finally:
            reset_grant(token)

    async def _workflow_ref(self, workflow_id: str) -> WorkflowRef:
        """The workflow a Run names; `namespace.name` resolves to its newest version."""
        workflow = WorkflowRef.parse(workflow_id)
        if workflow.version:
            return workflow
        try:
            registered = await self._registry.resolve(workflow_id)
        except NotFoundError:
            return workflow  # the servicer says NOT_FOUND once the policies allow the call
        return WorkflowRef.parse(registered.definition.id)

    async def _run(self, behavior: Behavior, request: pb.RunRequest, context: Context) -> Any:
        rules.check_workflow_id(request.workflow_id)
        policies = self._evaluator.policies
        data = None
        if policies.run_required_input_fields and request.HasField("input"):
            data = value_to_python(request.input)
        workflow = await self._workflow_ref(request.workflow_id)
        call = Call(
            method="Run",
            identity=current_identity(),
            metadata=metadata_of(context),
            workflow=workflow,
            instance_id=run_instance_id(workflow.full_id, request.request_id),
            tags=dict(request.tags),
            input_bytes=request.input.ByteSize(),
            input=data,
        )
        # Recorded once the outcome is known: an instance limit refuses it after the policies.
        grant = await self._evaluator.authorize(call, policies, record=False)
        try:
            response = await self._call_with(grant, behavior, request, context)
        except ResourceExhaustedError as exc:
            await self._evaluator.record(
                call, policies, allowed=False, policy=exc.policy, message=str(exc)
            )
            raise
        except OkraError:
            await self._evaluator.record(call, policies, allowed=True)  # refused elsewhere
            raise
        await self._evaluator.record(call, policies, allowed=True)
        return response

    async def _act_on_instance(self, behavior: Behavior, request: Any, context: Context) -> Any:
        """Signal, Cancel and the operator's rpcs on one instance: decide on the instance as
        it is, and apply only if it still is."""
        method = type(request).__name__.removesuffix("Request")
        request.instance_id = rules.check_instance_id(request.instance_id)
        if method == "Signal":
            rules.check_signal_name(request.signal)
        for attempt in range(1, MAX_DECISIONS + 1):
            policies = self._evaluator.policies
            instance = None
            if self._evaluator.needs_instance(method, policies):
                record = await self._store.get_instance(request.instance_id)
                if record is None:
                    raise instance_not_found(request.instance_id)
                instance = InstanceView(
                    record.instance_id, record.status.value, record.workflow_id, record.tags
                )
            call = Call(
                method=method,
                identity=current_identity(),
                metadata=metadata_of(context),
                workflow=WorkflowRef.parse(instance.workflow_id) if instance else None,
                instance=instance,
                instance_id=request.instance_id,
                signal=request.signal if method == "Signal" else "",
                reason=getattr(request, "reason", ""),
            )
            grant = await self._evaluator.authorize(call, policies)
            try:
                return await self._call_with(grant, behavior, request, context)
            except InstanceChangedError:
                if attempt == MAX_DECISIONS:
                    raise
                logger.debug("instance %s moved during %s; deciding again", call.target, method)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _bulk(self, behavior: Behavior, request: Any, context: Context) -> Any:
        """The bulk rpcs: decided on the operation (its action, or its id), not an instance."""
        method = type(request).__name__.removesuffix("Request")
        bulk: dict[str, Any] = {"id": getattr(request, "operation_id", "")}
        workflow = None
        if isinstance(request, opb.StartBulkOperationRequest):
            action = opb.BulkAction.Name(request.action).removeprefix("BULK_ACTION_").lower()
            bulk = {"action": action, "dryRun": request.dry_run}
            if request.filter.workflow_id:
                rules.check_workflow_id(request.filter.workflow_id)
                workflow = WorkflowRef.parse(request.filter.workflow_id)
        call = Call(
            method=method,
            identity=current_identity(),
            metadata=metadata_of(context),
            workflow=workflow,
            reason=getattr(request, "reason", ""),
            resource=("bulk", bulk),
        )
        grant = await self._evaluator.authorize(call, self._evaluator.policies)
        return await self._call_with(grant, behavior, request, context)

    async def _query(
        self, behavior: Behavior, request: pb.QueryRequest | pb.CountRequest, context: Context
    ) -> Any:
        """Query and Count: the same filters, the same policies (Count has no page)."""
        counting = isinstance(request, pb.CountRequest)
        limit = 0 if isinstance(request, pb.CountRequest) else request.limit
        if not counting:
            rules.check_query_limit(limit)
        if request.workflow_id:
            rules.check_workflow_id(request.workflow_id)
        statuses = tuple(STATUS_FROM_PB[s].value for s in request.status if s in STATUS_FROM_PB)
        call = Call(
            method="Count" if counting else "Query",
            identity=current_identity(),
            metadata=metadata_of(context),
            workflow=WorkflowRef.parse(request.workflow_id) if request.workflow_id else None,
            tags=dict(request.tags),
            query_statuses=statuses,
            query_limit=limit,
        )
        grant = await self._evaluator.authorize(call, self._evaluator.policies)
        if grant.query_statuses is not None and not request.status:
            request.status.extend(STATUS_TO_PB[InstanceStatus(s)] for s in grant.query_statuses)
        if grant.query_limit is not None and isinstance(request, pb.QueryRequest):
            request.limit = grant.query_limit
        return await self._call_with(grant, behavior, request, context)

    async def _signal_with_start(
        self, behavior: Behavior, request: pb.SignalWithStartRequest, context: Context
    ) -> Any:
        """Decided as the Run it may be and as the Signal it is, on the instance as it is (or
        as it will be, pending, when the call starts it); applied only if that still holds."""
        run = request.run
        with fields_under("run."):
            rules.check_workflow_id(run.workflow_id)
            check_request_id(run.request_id)
        rules.check_signal_name(request.signal)
        workflow = await self._workflow_ref(run.workflow_id)
        instance_id = run_instance_id(workflow.full_id, run.request_id)
        tags = dict(run.tags)
        for attempt in range(1, MAX_DECISIONS + 1):
            policies = self._evaluator.policies
            run_call = Call(
                method="Run",
                identity=current_identity(),
                metadata=metadata_of(context),
                workflow=workflow,
                instance_id=instance_id,
                tags=tags,
                input_bytes=run.input.ByteSize(),
                input=value_to_python(run.input)
                if policies.run_required_input_fields and run.HasField("input")
                else None,
            )
            run_grant = await self._evaluator.authorize(run_call, policies, record=False)
            status = None
            instance = None
            if self._evaluator.needs_instance("Signal", policies):
                record = await self._store.get_instance(instance_id)
                status = record.status.value if record else InstanceStatus.PENDING.value
                instance = InstanceView(
                    instance_id, status, workflow.full_id, record.tags if record else tags
                )
            signal_call = Call(
                method="Signal",
                identity=current_identity(),
                metadata=metadata_of(context),
                workflow=workflow,
                instance=instance,
                instance_id=instance_id,
                signal=request.signal,
            )
            try:
                await self._evaluator.authorize(signal_call, policies)
            except OkraError:
                await self._evaluator.record(run_call, policies, allowed=True)
                raise
            grant = replace(run_grant, expected_status=status)
            try:
                response = await self._call_with(grant, behavior, request, context)
            except ResourceExhaustedError as exc:
                await self._evaluator.record(
                    run_call, policies, allowed=False, policy=exc.policy, message=str(exc)
                )
                raise
            except InstanceChangedError:
                await self._evaluator.record(run_call, policies, allowed=True)
                if attempt == MAX_DECISIONS:
                    raise
                continue
            except OkraError:
                await self._evaluator.record(run_call, policies, allowed=True)
                raise
            await self._evaluator.record(run_call, policies, allowed=True)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get_status(
        self, behavior: Behavior, request: pb.GetStatusRequest, context: Context
    ) -> Any:
        # A read has no side effect, so the policy decides on the instance the servicer read.
        response: pb.WorkflowInstance = await behavior(request, context)
        policies = self._evaluator.policies
        if not self._evaluator.decides_reads(policies):
            return response  # GetStatus is the hottest rpc: skip describing an allowed call
        call = Call(
            method="GetStatus",
            identity=current_identity(),
            metadata=metadata_of(context),
            workflow=WorkflowRef.parse(response.workflow_id),
            instance_id=request.instance_id,
        )
        await self._evaluator.authorize(call, policies)
        return response

    async def _authorize_read(self, method: str, instance_id: str, context: Context) -> None:
        """AwaitInstance and WatchInstance read one instance as GetStatus does, but for long:
        the policy decides before they wait, on the instance as it is."""
        policies = self._evaluator.policies
        if not self._evaluator.decides_reads(policies):
            return
        record = await self._store.get_instance(instance_id)
        if record is None:
            raise instance_not_found(instance_id)
        call = Call(
            method=method,
            identity=current_identity(),
            metadata=metadata_of(context),
            workflow=WorkflowRef.parse(record.workflow_id),
            instance_id=instance_id,
        )
        await self._evaluator.authorize(call, policies)

    async def _await_instance(
        self, behavior: Behavior, request: pb.AwaitInstanceRequest, context: Context
    ) -> Any:
        request.instance_id = rules.check_instance_id(request.instance_id)
        # A malformed request is INVALID_ARGUMENT whether or not the instance exists.
        check_statuses(request.statuses, "statuses")
        check_revision(request.revision if request.HasField("revision") else None)
        await self._authorize_read("AwaitInstance", request.instance_id, context)
        return await behavior(request, context)

    async def _check_watch(self, request: pb.WatchInstanceRequest, context: Context) -> None:
        request.instance_id = rules.check_instance_id(request.instance_id)
        await self._authorize_read("WatchInstance", request.instance_id, context)

    async def _list_workflows(
        self, behavior: Behavior, request: pb.ListWorkflowsRequest, context: Context
    ) -> Any:
        policies = self._evaluator.policies
        response: pb.ListWorkflowsResponse = await behavior(request, context)
        call = Call(
            method="ListWorkflows", identity=current_identity(), metadata=metadata_of(context)
        )
        await self._evaluator.authorize(call, policies)
        if policies.document:
            # "The workflows they may run": hide what the run policies would refuse.
            runnable = [
                w
                for w in response.workflows
                if self._evaluator.may_run(call, policies, WorkflowRef.parse(w.workflow_id))
            ]
            del response.workflows[:]
            response.workflows.extend(runnable)
        return response


__all__ = ["GUARDED_SERVICES", "AuthInterceptor", "PolicyInterceptor", "abort_with", "metadata_of"]
