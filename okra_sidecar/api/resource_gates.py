"""ScheduleGate and TaskGate: the policy decisions of the ScheduleHostAPI and TaskWorker rpcs.

As PolicyGate does for instances, each describes the call (the schedule and its owner, the
task queue) for the PolicyEvaluator; the servicer calls it once, before it writes or reads
anything for its caller, so a denied call leaves Redis as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grpc

from okra_sidecar.api.gate import describe
from okra_sidecar.errors import FailedPreconditionError, Reason
from okra_sidecar.policy.document import PolicySet
from okra_sidecar.policy.evaluator import PolicyEvaluator
from okra_sidecar.policy.model import WorkflowRef
from okra_sidecar.schedules import ScheduleRecord, ScheduleSource

__all__ = ["ScheduleFilter", "ScheduleGate", "ScheduleReader", "TaskGate"]

Context = grpc.aio.ServicerContext[Any, Any]


class ScheduleReader(Protocol):
    """Reads one schedule (RedisScheduleStore); None when there is none."""

    async def get(self, schedule_id: str) -> ScheduleRecord | None: ...


def schedule_resource(record: ScheduleRecord) -> tuple[str, Mapping[str, Any]]:
    """A schedule as conditions read it; definition schedules belong to no caller."""
    fields: dict[str, Any] = {"id": record.schedule_id, "workflow": record.spec.workflow_id}
    if record.source is ScheduleSource.API:
        fields["owner"] = dict(record.owner)
    return ("schedule", fields)


class ScheduleGate:
    """Asks the PolicyEvaluator about one ScheduleHostAPI rpc."""

    def __init__(self, *, evaluator: PolicyEvaluator, schedules: ScheduleReader) -> None:
        self._evaluator = evaluator
        self._schedules = schedules

    async def _allow(self, method: str, context: Context, **fields: Any) -> None:
        call = describe(method, context, **fields)
        await self._evaluator.authorize(call, self._evaluator.policies)

    async def trigger(self, context: Context, workflow_id: str) -> None:
        """TriggerWorkflow: the schedule it makes. The run policies decide the workflow itself,
        as its creator, when the servicer checks the first firing."""
        schedule = {"id": "", "workflow": workflow_id}
        await self._allow(
            "TriggerWorkflow",
            context,
            workflow=WorkflowRef.parse(workflow_id),
            resource=("schedule", schedule),
        )

    async def one(self, context: Context, method: str, schedule_id: str) -> None:
        """GetSchedule, PauseSchedule, ResumeSchedule, DeleteSchedule: decided on the schedule
        as stored (its owner, its workflow)."""
        record = None
        if schedule_id:
            try:
                record = await self._schedules.get(schedule_id)
            except FailedPreconditionError as exc:
                if exc.reason is not Reason.SCHEDULE_UNREADABLE:
                    raise
                # Only its id can be trusted: conditions on its owner or workflow deny.
                await self._allow(method, context, resource=("schedule", {"id": schedule_id}))
                return
        if record is None:
            # Nothing to describe: the servicer refuses a bad or unknown id after the switch.
            await self._allow(method, context)
            return
        await self._allow(
            method,
            context,
            workflow=WorkflowRef.parse(record.spec.workflow_id),
            resource=schedule_resource(record),
        )

    async def listing(self, context: Context, workflow_id: str) -> ScheduleFilter:
        """ListSchedules: allowed or refused as a whole; the filter hides what the caller
        could not get one by one."""
        workflow = WorkflowRef.parse(workflow_id) if workflow_id else None
        policies = self._evaluator.policies
        call = describe("ListSchedules", context, workflow=workflow)
        await self._evaluator.authorize(call, policies)
        return ScheduleFilter(self._evaluator, context, policies)


class ScheduleFilter:
    """The schedules of one ListSchedules page that its caller may see."""

    def __init__(self, evaluator: PolicyEvaluator, context: Context, policies: PolicySet) -> None:
        self._evaluator = evaluator
        self._context = context
        self._policies = policies

    def shown(self, records: Sequence[ScheduleRecord]) -> list[ScheduleRecord]:
        if not self._evaluator.filters_schedules(self._policies):
            return list(records)
        return [
            record
            for record in records
            if self._evaluator.may_see(
                describe(
                    "GetSchedule",
                    self._context,
                    workflow=WorkflowRef.parse(record.spec.workflow_id),
                    resource=schedule_resource(record),
                ),
                self._policies,
            )
        ]


class TaskGate:
    """Asks the PolicyEvaluator about one TaskWorker rpc, by the task queues it names."""

    def __init__(self, *, evaluator: PolicyEvaluator) -> None:
        self._evaluator = evaluator

    async def queue(self, context: Context, method: str, queue: str) -> None:
        """PollTasks (before each task it hands out), CompleteTask and FailTask."""
        call = describe(method, context, resource=("task", {"queue": queue}))
        await self._evaluator.authorize(call, self._evaluator.policies)

    async def heartbeat(self, context: Context, queues: Sequence[str]) -> None:
        """Heartbeat: each queue its tasks come from, in order; a call with no task is
        decided without one."""
        for queue in queues:
            await self.queue(context, "Heartbeat", queue)
        if not queues:
            call = describe("Heartbeat", context)
            await self._evaluator.authorize(call, self._evaluator.policies)
