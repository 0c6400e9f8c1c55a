"""Bad input to the TaskWorker, ScheduleHostAPI and PolicyAdminService rpcs: one table each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2, timestamp_pb2
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from redis.asyncio import Redis

from okra_sidecar.server import Sidecar
from tests.api.rejections import BIG, INVALID, LONG, Case, assert_rejected, tags, ts
from tests.helpers import (
    Stub,
    value,
)
from tests.policy.support import ADMIN, AdminStub, policed_sidecar, policy_settings

if TYPE_CHECKING:
    from okra_client.gen.schedule.v1.schedule_pb2_grpc import (
        ScheduleHostAPIAsyncStub as ScheduleStub,
    )
    from okra_client.gen.worker.v1.worker_pb2_grpc import TaskWorkerAsyncStub as WorkerStub
    from okra_client.gen.workflow.v1.operator_pb2_grpc import (
        WorkflowOperatorAPIAsyncStub as OperatorStub,
    )
else:
    ScheduleStub = spb_grpc.ScheduleHostAPIStub
    WorkerStub = wpb_grpc.TaskWorkerStub
    OperatorStub = opb_grpc.WorkflowOperatorAPIStub


MISSING_SCHEDULE = "00000000-0000-4000-8000-000000000001"
MISSING_INSTANCE = "00000000-0000-4000-8000-000000000000"


@pytest_asyncio.fixture
async def channel(sidecar: tuple[Sidecar, Stub]) -> AsyncIterator[grpc.aio.Channel]:
    """A second channel to the sidecar, for the services other than WorkflowHostAPI."""
    opened = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar[0].port}")
    try:
        yield opened
    finally:
        await opened.close()


def poll(request: wpb.PollTasksRequest) -> Callable[[WorkerStub], Awaitable[object]]:
    # A streaming call fails when its first message is read.
    return lambda w: w.PollTasks(request).read()


WORKER_CASES: list[Case[WorkerStub]] = [
    Case(
        "poll: bad service",
        poll(wpb.PollTasksRequest(service="Orders!", worker_id="w1")),
        INVALID,
        "must be a lowercase label",
        ("service",),
    ),
    Case(
        "poll: no worker id",
        poll(wpb.PollTasksRequest(service="orders")),
        INVALID,
        "must be 1 to 128 letters, digits or ._:@/-",
        ("worker_id",),
    ),
    Case(
        "poll: worker id too long",
        poll(wpb.PollTasksRequest(service="orders", worker_id="w" * 129)),
        INVALID,
        "must be 1 to 128",
        ("worker_id",),
    ),
    Case(
        "poll: negative max in flight",
        poll(wpb.PollTasksRequest(service="orders", worker_id="w1", max_in_flight=-1)),
        INVALID,
        "must be from 0 to 1000",
        ("max_in_flight",),
    ),
    Case(
        "poll: max in flight over 1000",
        poll(wpb.PollTasksRequest(service="orders", worker_id="w1", max_in_flight=1001)),
        INVALID,
        "must be from 0 to 1000",
        ("max_in_flight",),
    ),
    Case(
        "complete: malformed task id",
        lambda w: w.CompleteTask(wpb.CompleteTaskRequest(task_id="orders")),
        INVALID,
        "is not a task id PollTasks handed out",
        ("task_id",),
    ),
    Case(
        "complete: bad entry in task id",
        lambda w: w.CompleteTask(wpb.CompleteTaskRequest(task_id="orders/abc")),
        INVALID,
        "is not a task id PollTasks handed out",
        ("task_id",),
    ),
    Case(
        "complete: a partition the store does not have",
        lambda w: w.CompleteTask(wpb.CompleteTaskRequest(task_id="orders/99/1-0", lease="w1.x")),
        INVALID,
        "is not a task id PollTasks handed out",
        ("task_id",),
    ),
    Case(
        # (`orders/1-0`, a layout 2 id, is TASK_MOVED: test_error_reasons.test_task_moved.)
        "complete: a partition that is not a number",
        lambda w: w.CompleteTask(wpb.CompleteTaskRequest(task_id="orders/p1/1-0", lease="w1.x")),
        INVALID,
        "is not a task id PollTasks handed out",
        ("task_id",),
    ),
    Case(
        "complete: no lease",
        lambda w: w.CompleteTask(wpb.CompleteTaskRequest(task_id="orders/0/1-0")),
        INVALID,
        "is required: echo the Task.lease that PollTasks handed out",
        ("lease",),
    ),
    Case(
        "complete: a lease not handed out with the task",
        lambda w: w.CompleteTask(
            wpb.CompleteTaskRequest(task_id="orders/0/1-0", lease="w1.forged")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "the lease does not belong to task orders/0/1-0",
    ),
    Case(
        "fail: a lease not handed out with the task",
        lambda w: w.FailTask(wpb.FailTaskRequest(task_id="orders/0/1-0", lease="w1.forged")),
        grpc.StatusCode.PERMISSION_DENIED,
        "the lease does not belong to task orders/0/1-0",
    ),
    Case(
        "fail: malformed task id",
        lambda w: w.FailTask(wpb.FailTaskRequest(task_id="")),
        INVALID,
        "is not a task id PollTasks handed out",
        ("task_id",),
    ),
    Case(
        "fail: status above 599",
        lambda w: w.FailTask(wpb.FailTaskRequest(task_id="orders/0/1-0", status=700)),
        INVALID,
        "700 is not an HTTP status code (100 to 599; 0 means 500)",
        ("status",),
    ),
    Case(
        "fail: negative status",
        lambda w: w.FailTask(wpb.FailTaskRequest(task_id="orders/0/1-0", status=-1)),
        INVALID,
        "-1 is not an HTTP status code",
        ("status",),
    ),
    Case(
        "fail: type not a URI",
        lambda w: w.FailTask(wpb.FailTaskRequest(task_id="orders/0/1-0", type="timeout")),
        INVALID,
        "'timeout' is not an absolute URI",
        ("type",),
    ),
    Case(
        "fail: type too long",
        lambda w: w.FailTask(
            wpb.FailTaskRequest(task_id="orders/0/1-0", type="https://errors.test/" + LONG)
        ),
        INVALID,
        "at most 256 characters",
        ("type",),
    ),
    Case(
        "heartbeat: no worker id",
        lambda w: w.Heartbeat(wpb.HeartbeatRequest(task_ids=["orders/0/1-0"])),
        INVALID,
        "must be the id given to PollTasks",
        ("worker_id",),
    ),
    Case(
        "heartbeat: no lease for a task",
        lambda w: w.Heartbeat(wpb.HeartbeatRequest(worker_id="w1", task_ids=["orders/0/1-0"])),
        INVALID,
        "must hold the Task.lease of each task",
        ("leases",),
    ),
    Case(
        "heartbeat: malformed task id",
        lambda w: w.Heartbeat(
            wpb.HeartbeatRequest(worker_id="w1", task_ids=["orders/0/1-0", "x"], leases=["a", "b"])
        ),
        INVALID,
        "is not a task id PollTasks handed out",
        ("task_ids[1]",),
    ),
]


@pytest.mark.parametrize("case", WORKER_CASES, ids=[c.name for c in WORKER_CASES])
async def test_worker_rejection(
    case: Case[WorkerStub], channel: grpc.aio.Channel, redis: Redis
) -> None:
    await assert_rejected(case, WorkerStub(channel), redis)


def trigger(**fields: object) -> spb.TriggerWorkflowRequest:
    """A TriggerWorkflowRequest that is valid but for `fields`."""
    request = spb.TriggerWorkflowRequest(
        workflow_id="tests.steps.1.0.0", cron_expression="0 * * * *"
    )
    for name, field_value in fields.items():
        if isinstance(field_value, dict):
            getattr(request, name).update(field_value)
        elif isinstance(field_value, timestamp_pb2.Timestamp | struct_pb2.Value):
            getattr(request, name).CopyFrom(field_value)
        else:
            setattr(request, name, field_value)
    return request


SCHEDULE_CASES: list[Case[ScheduleStub]] = [
    Case(
        "trigger: malformed workflow id",
        lambda c: c.TriggerWorkflow(trigger(workflow_id="Orders/Process")),
        INVALID,
        "is not a workflow id",
        ("workflow_id",),
    ),
    Case(
        "trigger: unknown workflow",
        lambda c: c.TriggerWorkflow(trigger(workflow_id="tests.nope.1.0.0")),
        grpc.StatusCode.NOT_FOUND,
        "workflow tests.nope.1.0.0 is not registered",
    ),
    Case(
        "trigger: bad cron",
        lambda c: c.TriggerWorkflow(trigger(cron_expression="61 * * * *")),
        INVALID,
        "'61 * * * *' is not a valid cron expression",
        ("cron_expression",),
    ),
    Case(
        "trigger: no cron",
        lambda c: c.TriggerWorkflow(trigger(cron_expression="")),
        INVALID,
        "a cron expression is required, e.g. '0 0 * * *'",
        ("cron_expression",),
    ),
    Case(
        "trigger: unknown time zone",
        lambda c: c.TriggerWorkflow(trigger(time_zone="Mars/Olympus")),
        INVALID,
        "'Mars/Olympus' is not an IANA time zone",
        ("time_zone",),
    ),
    Case(
        "trigger: start after end",
        lambda c: c.TriggerWorkflow(trigger(start_time=ts(200), end_time=ts(100))),
        INVALID,
        "must be earlier than end_time",
        ("start_time",),
    ),
    Case(
        "trigger: request id too long",
        lambda c: c.TriggerWorkflow(trigger(request_id=LONG)),
        INVALID,
        "request_id: is 257 characters; at most 256",
        ("request_id",),
    ),
    Case(
        "trigger: too many tags",
        lambda c: c.TriggerWorkflow(trigger(tags=tags(63))),
        INVALID,
        "has 63 tags; at most 62",
        ("tags",),
    ),
    Case(
        "trigger: the schedule's own tag",
        lambda c: c.TriggerWorkflow(trigger(tags={"okra.schedule": "mine"})),
        INVALID,
        "is set by the schedule itself",
        ("tags.okra.schedule",),
    ),
    Case(
        "trigger: unknown overlap policy",
        lambda c: c.TriggerWorkflow(trigger(overlap_policy=99)),
        INVALID,
        "is not an OverlapPolicy",
        ("overlap_policy",),
    ),
    Case(
        "trigger: unknown catch-up policy",
        lambda c: c.TriggerWorkflow(trigger(catch_up_policy=99)),
        INVALID,
        "is not a CatchUpPolicy",
        ("catch_up_policy",),
    ),
    Case(
        "trigger: input over 1 MiB",
        lambda c: c.TriggerWorkflow(trigger(input=value({"x": BIG}))),
        INVALID,
        "the limit is 1048576 bytes",
        ("input",),
    ),
    Case(
        "trigger: schema violation",
        lambda c: c.TriggerWorkflow(
            trigger(workflow_id="tests.approval.1.0.0", input=value({"amount": -5}))
        ),
        INVALID,
        "input.amount does not match the workflow's input schema",
        ("input.amount",),
    ),
    Case(
        "list: negative limit",
        lambda c: c.ListSchedules(spb.ListSchedulesRequest(limit=-1)),
        INVALID,
        "must be 0 to 1000",
        ("limit",),
    ),
    Case(
        "list: limit over 1000",
        lambda c: c.ListSchedules(spb.ListSchedulesRequest(limit=1001)),
        INVALID,
        "must be 0 to 1000",
        ("limit",),
    ),
    Case(
        "list: bad workflow id",
        lambda c: c.ListSchedules(spb.ListSchedulesRequest(workflow_id="no dots")),
        INVALID,
        "is not a workflow id",
        ("workflow_id",),
    ),
    Case(
        "list: too many fire times",
        lambda c: c.ListSchedules(spb.ListSchedulesRequest(next_fire_count=51)),
        INVALID,
        "must be 0 to 50",
        ("next_fire_count",),
    ),
    Case(
        "get: bad id",
        lambda c: c.GetSchedule(spb.GetScheduleRequest(schedule_id="../x")),
        INVALID,
        "is not a schedule id",
        ("schedule_id",),
    ),
    Case(
        "get: negative fire times",
        lambda c: c.GetSchedule(
            spb.GetScheduleRequest(schedule_id=MISSING_SCHEDULE, next_fire_count=-1)
        ),
        INVALID,
        "must be 0 to 50",
        ("next_fire_count",),
    ),
    Case(
        "get: unknown",
        lambda c: c.GetSchedule(spb.GetScheduleRequest(schedule_id=MISSING_SCHEDULE)),
        grpc.StatusCode.NOT_FOUND,
        MISSING_SCHEDULE,
    ),
    Case(
        "pause: bad id",
        lambda c: c.PauseSchedule(spb.PauseScheduleRequest(schedule_id="")),
        INVALID,
        "is not a schedule id",
        ("schedule_id",),
    ),
    Case(
        "pause: unknown",
        lambda c: c.PauseSchedule(spb.PauseScheduleRequest(schedule_id=MISSING_SCHEDULE)),
        grpc.StatusCode.NOT_FOUND,
        MISSING_SCHEDULE,
    ),
    Case(
        "resume: bad id",
        lambda c: c.ResumeSchedule(spb.ResumeScheduleRequest(schedule_id="workflow:Bad")),
        INVALID,
        "is not a schedule id",
        ("schedule_id",),
    ),
    Case(
        "resume: unknown",
        lambda c: c.ResumeSchedule(spb.ResumeScheduleRequest(schedule_id=MISSING_SCHEDULE)),
        grpc.StatusCode.NOT_FOUND,
        MISSING_SCHEDULE,
    ),
    Case(
        "delete: bad id",
        lambda c: c.DeleteSchedule(spb.DeleteScheduleRequest(schedule_id="42")),
        INVALID,
        "is not a schedule id",
        ("schedule_id",),
    ),
    Case(
        "delete: unknown",
        lambda c: c.DeleteSchedule(spb.DeleteScheduleRequest(schedule_id=MISSING_SCHEDULE)),
        grpc.StatusCode.NOT_FOUND,
        MISSING_SCHEDULE,
    ),
]


@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=[c.name for c in SCHEDULE_CASES])
async def test_schedule_rejection(
    case: Case[ScheduleStub], channel: grpc.aio.Channel, redis: Redis
) -> None:
    await assert_rejected(case, ScheduleStub(channel), redis)


@pytest_asyncio.fixture
async def admin(tmp_path: Path, redis: Redis, redis_url: str) -> AsyncIterator[AdminStub]:
    """The admin stub of a sidecar that verifies tokens (the admin api needs one)."""
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        yield policed.admin


def set_policies(text: str) -> Callable[[AdminStub], Awaitable[object]]:
    return lambda a: a.SetPolicies(admin_pb.SetPoliciesRequest(text=text), metadata=ADMIN)


ADMIN_CASES: list[Case[AdminStub]] = [
    Case(
        "set policies: not JSON or YAML",
        set_policies('{"policy.workflow.run.allowed": ['),
        INVALID,
        "refused, the set in force stays: is neither JSON nor YAML",
        ("SetPolicies",),
    ),
    Case(
        "set policies: unknown key",
        set_policies('{"policy.workflow.run.alowed": []}'),
        INVALID,
        "policy.workflow.run.alowed",
        ("policy.workflow.run.alowed",),
    ),
    Case(
        "set policies: condition does not compile",
        set_policies('{"policy.workflow.run.condition": "request.auth.claims.role =="}'),
        INVALID,
        "refused, the set in force stays",
        ("policy.workflow.run.condition",),
    ),
    Case(
        "set policies: neither form",
        lambda a: a.SetPolicies(admin_pb.SetPoliciesRequest(), metadata=ADMIN),
        INVALID,
        "the request carries no policy document: set `text` or `policies`",
        ("document",),
    ),
    Case(
        "audit: limit over 1000",
        lambda a: a.ListAuditRecords(admin_pb.ListAuditRecordsRequest(limit=1001), metadata=ADMIN),
        INVALID,
        "must be 1 to 1000 (0: 100), not 1001",
        ("limit",),
    ),
    Case(
        "audit: negative limit",
        lambda a: a.ListAuditRecords(admin_pb.ListAuditRecordsRequest(limit=-1), metadata=ADMIN),
        INVALID,
        "must be 1 to 1000 (0: 100), not -1",
        ("limit",),
    ),
]


@pytest.mark.parametrize("case", ADMIN_CASES, ids=[c.name for c in ADMIN_CASES])
async def test_admin_rejection(case: Case[AdminStub], admin: AdminStub, redis: Redis) -> None:
    await assert_rejected(case, admin, redis)


# -- The operator service. -------------------------------------------------------------------

OperatorCall = Callable[[OperatorStub], Awaitable[object]]
OPERATOR_VERBS = ("Suspend", "Resume", "Retry", "Reset", "Delete")


def on_instance(verb: str, instance_id: str) -> OperatorCall:
    """The operator rpc `verb` on one instance id."""
    if verb == "Suspend":
        return lambda o: o.Suspend(opb.SuspendRequest(instance_id=instance_id))
    if verb == "Resume":
        return lambda o: o.Resume(opb.ResumeRequest(instance_id=instance_id))
    if verb == "Retry":
        return lambda o: o.Retry(opb.RetryRequest(instance_id=instance_id))
    if verb == "Reset":
        return lambda o: o.Reset(opb.ResetRequest(instance_id=instance_id, task="/do/0/a"))
    return lambda o: o.Delete(opb.DeleteRequest(instance_id=instance_id))


OPERATOR_CASES: list[Case[OperatorStub]] = [
    *(
        Case(f"{verb.lower()}: {what}", on_instance(verb, given), INVALID, says, ("instance_id",))
        for verb in OPERATOR_VERBS
        for what, given, says in (
            ("no instance id", "", "'' is not an instance id"),
            ("malformed instance id", "not-a-uuid", "is not an instance id"),
        )
    ),
    *(
        Case(
            f"{verb.lower()}: reason too long",
            call,
            INVALID,
            "reason: is 1025 characters; at most 1024",
            ("reason",),
        )
        for verb, call in (
            (
                "Suspend",
                lambda o: o.Suspend(
                    opb.SuspendRequest(instance_id=MISSING_INSTANCE, reason="x" * 1025)
                ),
            ),
            (
                "Resume",
                lambda o: o.Resume(
                    opb.ResumeRequest(instance_id=MISSING_INSTANCE, reason="x" * 1025)
                ),
            ),
            (
                "Retry",
                lambda o: o.Retry(
                    opb.RetryRequest(instance_id=MISSING_INSTANCE, reason="x" * 1025)
                ),
            ),
            (
                "Reset",
                lambda o: o.Reset(
                    opb.ResetRequest(instance_id=MISSING_INSTANCE, reason="x" * 1025)
                ),
            ),
        )
    ),
    *(
        Case(
            f"{verb.lower()}: unknown instance",
            on_instance(verb, MISSING_INSTANCE),
            grpc.StatusCode.NOT_FOUND,
            f"instance {MISSING_INSTANCE} does not exist",
        )
        for verb in OPERATOR_VERBS
    ),
]


@pytest.mark.parametrize("case", OPERATOR_CASES, ids=[c.name for c in OPERATOR_CASES])
async def test_operator_rejection(
    case: Case[OperatorStub], channel: grpc.aio.Channel, redis: Redis
) -> None:
    await assert_rejected(case, OperatorStub(channel), redis)
