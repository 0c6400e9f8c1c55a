"""PolicyGate: the policy decisions of the WorkflowHostAPI and WorkflowOperatorAPI rpcs.

Each servicer method checks its request, then calls its gate method once with what it parsed
(the instance id, the resolved workflow, the input), and gets back what the policies allowed
(a CallGrant: instance limits, the status it decided on, narrowed query filters). Decisions
that depend on the outcome take the servicer's work as `apply`: a Run's audit record waits
for the instance limit, and a decision on an instance's status is taken again when the
status moved before the store applied the call. Schedules and worker tasks have their gates
in resource_gates.py.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
from google.protobuf.struct_pb2 import Value

from okra_sidecar.api.call_metadata import metadata_of
from okra_sidecar.api.convert import value_to_python
from okra_sidecar.errors import (
    InstanceChangedError,
    OkraError,
    ResourceExhaustedError,
    instance_not_found,
)
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.policy.audit import Call
from okra_sidecar.policy.document import PolicySet
from okra_sidecar.policy.evaluator import PolicyEvaluator
from okra_sidecar.policy.model import CallGrant, InstanceView, WorkflowRef, current_identity
from okra_sidecar.store.base import Store

__all__ = ["MAX_DECISIONS", "ParsedInput", "PolicyGate", "RunTarget", "describe"]

logger = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
Apply = Callable[[CallGrant], Awaitable[T]]
# A status a policy checked may move under a signal or cancel; decide again this often.
MAX_DECISIONS = 3


def describe(method: str, context: Context, **fields: Any) -> Call:
    """The call as policies see it: the caller (from AuthInterceptor), its metadata, `fields`."""
    return Call(method=method, identity=current_identity(), metadata=metadata_of(context), **fields)


class ParsedInput:
    """A request's input Value, converted to Python at most once, by whichever of the gate
    (a `run.requiredInputFields` policy) and the servicer needs it first.

    Plain slots rather than `functools.cached_property`, which takes a lock on every first
    read: a Run reads both once.
    """

    __slots__ = ("_data", "_converted", "field", "size", "value")

    def __init__(self, value: Value | None, field: str = "input") -> None:
        self.value = value
        self.field = field  # its name in the request, for a refusal (`run.input.amount`)
        # The input's size in bytes: the gate and the servicer's size rule both ask for it.
        self.size = value.ByteSize() if value is not None else 0
        self._data: Any = None
        self._converted = False

    @property
    def data(self) -> Any:
        """The input as JSON data; None when the request has none.

        Raises:
            InvalidInputError: the input holds NaN or an infinity (named under `field`).
        """
        if not self._converted:
            self._data = value_to_python(self.value, self.field) if self.value is not None else None
            self._converted = True
        return self._data


@dataclass(frozen=True)
class RunTarget:
    """What a Run (or SignalWithStart's) names, parsed once by the servicer: the workflow
    (its newest version when the id names none), the instance id, chosen before the decision
    so that its record names it, the tags and the input."""

    workflow: WorkflowRef
    instance_id: str
    tags: dict[str, str]
    parsed: ParsedInput


class PolicyGate:
    """Asks the PolicyEvaluator about one rpc of WorkflowHostAPI or WorkflowOperatorAPI."""

    def __init__(self, *, evaluator: PolicyEvaluator, store: Store) -> None:
        self._evaluator = evaluator
        self._store = store

    async def _instance(self, instance_id: str) -> InstanceView:
        """The instance as policies see it.

        Raises:
            NotFoundError: there is no such instance.
        """
        record = await self._store.get_instance(instance_id)
        if record is None:
            raise instance_not_found(instance_id)
        return InstanceView(
            record.instance_id, record.status.value, record.workflow_id, record.tags
        )

    # -- starting instances ----------------------------------------------------------------------

    @staticmethod
    def _run_call(context: Context, policies: PolicySet, target: RunTarget) -> Call:
        return describe(
            "Run",
            context,
            workflow=target.workflow,
            instance_id=target.instance_id,
            tags=target.tags,
            input_bytes=target.parsed.size,
            # Converted only for a policy that reads it; the servicer reuses the conversion.
            input=target.parsed.data if policies.run_required_input_fields else None,
        )

    async def run(self, context: Context, target: RunTarget, apply: Apply[T]) -> T:
        """Decide a Run, then `apply` it with the grant (its limits, its instance id).

        The decision is recorded once the outcome is known: an instance limit, which the
        store applies, refuses it after the policies allowed it.
        """
        policies = self._evaluator.policies
        call = self._run_call(context, policies, target)
        grant = await self._evaluator.authorize(call, policies, record=False)
        if policies.audit_level == "none":
            return await apply(grant)  # nothing to record: no coroutine of _recorded's
        return await self._recorded(call, policies, apply, grant)

    async def _recorded(
        self, call: Call, policies: PolicySet, apply: Apply[T], grant: CallGrant
    ) -> T:
        """`apply(grant)`, then the Run's audit record: refused only by an instance limit."""
        if policies.audit_level == "none":
            return await apply(grant)  # nothing to record, whatever the outcome
        try:
            result = await apply(grant)
        except ResourceExhaustedError as exc:
            await self._evaluator.record(
                call, policies, allowed=False, policy=exc.policy, message=str(exc)
            )
            raise
        except OkraError:
            await self._evaluator.record(call, policies, allowed=True)  # refused elsewhere
            raise
        await self._evaluator.record(call, policies, allowed=True)
        return result

    async def signal_with_start(
        self, context: Context, target: RunTarget, signal: str, apply: Apply[T]
    ) -> T:
        """Decided as the Run it may be and as the Signal it is, on the instance as it is (or
        as it will be, pending, when the call starts it); applied only if that still holds."""
        for attempt in range(1, MAX_DECISIONS + 1):
            policies = self._evaluator.policies
            run_call = self._run_call(context, policies, target)
            run_grant = await self._evaluator.authorize(run_call, policies, record=False)
            status = None
            instance = None
            if self._evaluator.needs_instance("Signal", policies):
                record = await self._store.get_instance(target.instance_id)
                status = record.status.value if record else InstanceStatus.PENDING.value
                tags = record.tags if record else target.tags
                instance = InstanceView(target.instance_id, status, target.workflow.full_id, tags)
            signal_call = describe(
                "Signal",
                context,
                workflow=target.workflow,
                instance=instance,
                instance_id=target.instance_id,
                signal=signal,
            )
            try:
                await self._evaluator.authorize(signal_call, policies)
            except OkraError:
                await self._evaluator.record(run_call, policies, allowed=True)
                raise
            grant = replace(run_grant, expected_status=status)
            try:
                return await self._recorded(run_call, policies, apply, grant)
            except InstanceChangedError:
                if attempt == MAX_DECISIONS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- acting on instances ---------------------------------------------------------------------

    async def on_instance(
        self,
        context: Context,
        method: str,
        instance_id: str,
        *,
        apply: Apply[T],
        signal: str = "",
        reason: str = "",
    ) -> T:
        """Signal, Cancel and the operator's rpcs on one instance: decide on the instance as it
        is, and `apply` only if it still is (the grant's `expected_status`)."""
        for attempt in range(1, MAX_DECISIONS + 1):
            policies = self._evaluator.policies
            instance = None
            if self._evaluator.needs_instance(method, policies):
                instance = await self._instance(instance_id)
            call = describe(
                method,
                context,
                workflow=WorkflowRef.parse(instance.workflow_id) if instance else None,
                instance=instance,
                instance_id=instance_id,
                signal=signal,
                reason=reason,
            )
            grant = await self._evaluator.authorize(call, policies)
            try:
                return await apply(grant)
            except InstanceChangedError:
                if attempt == MAX_DECISIONS:
                    raise
                logger.debug("instance %s moved during %s; deciding again", call.target, method)
        raise AssertionError("unreachable")  # pragma: no cover

    async def bulk(
        self,
        context: Context,
        method: str,
        bulk: dict[str, Any],
        *,
        workflow: WorkflowRef | None = None,
        reason: str = "",
    ) -> CallGrant:
        """The bulk rpcs: decided on the operation (its action, or its id), not an instance."""
        call = describe(method, context, workflow=workflow, reason=reason, resource=("bulk", bulk))
        return await self._evaluator.authorize(call, self._evaluator.policies)

    # -- reading ---------------------------------------------------------------------------------

    async def query(
        self,
        context: Context,
        method: str,
        *,
        workflow_id: str,
        tags: dict[str, str],
        statuses: tuple[str, ...],
        limit: int,
    ) -> CallGrant:
        """Query and Count: the same filters, the same policies (Count has no page)."""
        call = describe(
            method,
            context,
            workflow=WorkflowRef.parse(workflow_id) if workflow_id else None,
            tags=tags,
            query_statuses=statuses,
            query_limit=limit,
        )
        return await self._evaluator.authorize(call, self._evaluator.policies)

    async def read(self, context: Context, method: str, instance_id: str, workflow_id: str) -> None:
        """GetStatus, on the instance the servicer read: a read has no side effect."""
        policies = self._evaluator.policies
        if not self._evaluator.decides_reads(policies):
            return  # GetStatus is the hottest rpc: skip describing an allowed call
        call = describe(
            method, context, workflow=WorkflowRef.parse(workflow_id), instance_id=instance_id
        )
        await self._evaluator.authorize(call, policies)

    async def read_before_waiting(self, context: Context, method: str, instance_id: str) -> None:
        """AwaitInstance and WatchInstance read one instance as GetStatus does, but for long:
        the policy decides before they wait, on the instance as it is."""
        if not self._evaluator.decides_reads(self._evaluator.policies):
            return
        record = await self._store.get_instance(instance_id)
        if record is None:
            raise instance_not_found(instance_id)
        await self.read(context, method, instance_id, record.workflow_id)

    async def history(self, context: Context, instance_id: str) -> None:
        """GetHistory, decided on the instance whose history it reads."""
        instance = await self._instance(instance_id)
        call = describe(
            "GetHistory",
            context,
            workflow=WorkflowRef.parse(instance.workflow_id),
            instance=instance,
            instance_id=instance_id,
        )
        await self._evaluator.authorize(call, self._evaluator.policies)

    async def runnable(self, context: Context, workflow_ids: Sequence[str]) -> list[bool]:
        """ListWorkflows: allowed or refused as a whole, then "the workflows they may run",
        hiding what the run policies would refuse (one flag per id)."""
        policies = self._evaluator.policies
        call = describe("ListWorkflows", context)
        await self._evaluator.authorize(call, policies)
        if not policies.document:
            return [True] * len(workflow_ids)
        return [
            self._evaluator.may_run(call, policies, WorkflowRef.parse(workflow_id))
            for workflow_id in workflow_ids
        ]

    async def emit(self, context: Context, event: dict[str, Any]) -> None:
        """Emit, decided on the event's type, source and subject before any is checked."""
        await self._evaluator.authorize(
            describe("Emit", context, resource=("event", event)), self._evaluator.policies
        )
