"""Policy checks for the rpcs that act on events, history, schedules and worker tasks.

The PolicyInterceptor routes Emit, GetHistory, every ScheduleHostAPI rpc and every TaskWorker
rpc here. Each check describes the call (the event type, the instance, the schedule and its
owner, the task queue) for the PolicyEvaluator before the servicer runs, so a denied call
writes nothing and reads nothing for its caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import grpc
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.api.call_metadata import metadata_of
from okra_sidecar.api.task_worker import parse_task_id
from okra_sidecar.errors import FailedPreconditionError, Reason, instance_not_found
from okra_sidecar.policy import rules
from okra_sidecar.policy.audit import Call
from okra_sidecar.policy.evaluator import PolicyEvaluator
from okra_sidecar.policy.model import InstanceView, WorkflowRef, current_identity
from okra_sidecar.schedules import ScheduleRecord, ScheduleSource
from okra_sidecar.store.base import Store

__all__ = ["ResourceChecks", "ScheduleReader"]

Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]
Check = Callable[[Behavior, Any, Context], Awaitable[Any]]


class ScheduleReader(Protocol):
    """Reads one schedule (RedisScheduleStore); None when there is none."""

    async def get(self, schedule_id: str) -> ScheduleRecord | None: ...


def schedule_resource(record: ScheduleRecord) -> tuple[str, Mapping[str, Any]]:
    """A schedule as conditions read it; definition schedules belong to no caller."""
    fields: dict[str, Any] = {"id": record.schedule_id, "workflow": record.spec.workflow_id}
    if record.source is ScheduleSource.API:
        fields["owner"] = dict(record.owner)
    return ("schedule", fields)


class ResourceChecks:
    """One check per rpc, by method name; `stream_checks` for the server-streaming ones."""

    def __init__(
        self, *, evaluator: PolicyEvaluator, store: Store, schedules: ScheduleReader | None
    ) -> None:
        self._evaluator = evaluator
        self._store = store
        self._schedules = schedules
        self.unary: Mapping[str, Check] = {
            "Emit": self._emit,
            "GetHistory": self._history,
            "TriggerWorkflow": self._trigger,
            "ListSchedules": self._list_schedules,
            "GetSchedule": self._one_schedule,
            "PauseSchedule": self._one_schedule,
            "ResumeSchedule": self._one_schedule,
            "DeleteSchedule": self._one_schedule,
            "CompleteTask": self._finish_task,
            "FailTask": self._finish_task,
            "Heartbeat": self._heartbeat,
        }

    def _call(self, method: str, context: Context, **fields: Any) -> Call:
        return Call(
            method=method, identity=current_identity(), metadata=metadata_of(context), **fields
        )

    async def _allow(self, call: Call) -> None:
        await self._evaluator.authorize(call, self._evaluator.policies)

    # -- WorkflowHostAPI -------------------------------------------------------------------------

    async def _emit(self, behavior: Behavior, request: pb.EmitRequest, context: Context) -> Any:
        event = {"type": request.type, "source": request.source, "subject": request.subject}
        await self._allow(self._call("Emit", context, resource=("event", event)))
        return await behavior(request, context)

    async def _history(
        self, behavior: Behavior, request: pb.GetHistoryRequest, context: Context
    ) -> Any:
        request.instance_id = rules.check_instance_id(request.instance_id)
        # A malformed request is INVALID_ARGUMENT whether or not the instance exists.
        rules.check_query_limit(request.limit)
        record = await self._store.get_instance(request.instance_id)
        if record is None:
            raise instance_not_found(request.instance_id)
        instance = InstanceView(
            record.instance_id, record.status.value, record.workflow_id, record.tags
        )
        call = self._call(
            "GetHistory",
            context,
            workflow=WorkflowRef.parse(record.workflow_id),
            instance=instance,
            instance_id=request.instance_id,
        )
        await self._allow(call)
        return await behavior(request, context)

    # -- ScheduleHostAPI -------------------------------------------------------------------------

    async def _trigger(
        self, behavior: Behavior, request: spb.TriggerWorkflowRequest, context: Context
    ) -> Any:
        # The run policies decide the workflow itself, as its creator, inside the servicer.
        rules.check_workflow_id(request.workflow_id)
        schedule = {"id": "", "workflow": request.workflow_id}
        call = self._call(
            "TriggerWorkflow",
            context,
            workflow=WorkflowRef.parse(request.workflow_id),
            resource=("schedule", schedule),
        )
        await self._allow(call)
        return await behavior(request, context)

    async def _one_schedule(self, behavior: Behavior, request: Any, context: Context) -> Any:
        method = type(request).__name__.removesuffix("Request")
        record = None
        if self._schedules is not None and request.schedule_id:
            try:
                record = await self._schedules.get(request.schedule_id)
            except FailedPreconditionError as exc:
                if exc.reason is not Reason.SCHEDULE_UNREADABLE:
                    raise
                # Only its id can be trusted: conditions on its owner or workflow deny.
                unreadable = ("schedule", {"id": request.schedule_id})
                await self._allow(self._call(method, context, resource=unreadable))
                return await behavior(request, context)
        if record is None:
            # Nothing to describe: the servicer refuses a bad or unknown id after the switch.
            await self._allow(self._call(method, context))
            return await behavior(request, context)
        call = self._call(
            method,
            context,
            workflow=WorkflowRef.parse(record.spec.workflow_id),
            resource=schedule_resource(record),
        )
        await self._allow(call)
        return await behavior(request, context)

    async def _list_schedules(
        self, behavior: Behavior, request: spb.ListSchedulesRequest, context: Context
    ) -> Any:
        workflow = WorkflowRef.parse(request.workflow_id) if request.workflow_id else None
        call = self._call("ListSchedules", context, workflow=workflow)
        policies = self._evaluator.policies
        await self._evaluator.authorize(call, policies)
        response: spb.ListSchedulesResponse = await behavior(request, context)
        if self._schedules is None or not self._evaluator.filters_schedules(policies):
            return response
        # A caller sees only the schedules it could get one by one.
        shown = []
        for schedule in response.schedules:
            try:
                record = await self._schedules.get(schedule.schedule_id)
            except FailedPreconditionError:
                continue  # damaged since the listing read it
            if record is None:
                continue
            probe = self._call(
                "GetSchedule",
                context,
                workflow=WorkflowRef.parse(record.spec.workflow_id),
                resource=schedule_resource(record),
            )
            if self._evaluator.may_see(probe, policies):
                shown.append(schedule)
        del response.schedules[:]
        response.schedules.extend(shown)
        return response

    # -- TaskWorker ------------------------------------------------------------------------------

    async def check_poll(self, request: wpb.PollTasksRequest, context: Context) -> None:
        """PollTasks, decided before the stream hands out a task."""
        call = self._call("PollTasks", context, resource=("task", {"queue": request.service}))
        await self._allow(call)

    async def _finish_task(self, behavior: Behavior, request: Any, context: Context) -> Any:
        method = "CompleteTask" if isinstance(request, wpb.CompleteTaskRequest) else "FailTask"
        queue, _ = parse_task_id(request.task_id)
        await self._allow(self._call(method, context, resource=("task", {"queue": queue})))
        return await behavior(request, context)

    async def _heartbeat(
        self, behavior: Behavior, request: wpb.HeartbeatRequest, context: Context
    ) -> Any:
        queues = sorted(
            {
                parse_task_id(task_id, field=f"task_ids[{index}]")[0]
                for index, task_id in enumerate(request.task_ids)
            }
        )
        for queue in queues:
            await self._allow(self._call("Heartbeat", context, resource=("task", {"queue": queue})))
        if not queues:
            await self._allow(self._call("Heartbeat", context))
        return await behavior(request, context)
