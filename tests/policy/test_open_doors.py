"""Every rpc is authenticated and decided by a policy; worker tasks go only to their lease."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.api.interceptors import GUARDED_SERVICES
from okra_sidecar.policy import document as keys
from tests.helpers import eventually, expect_rpc_error, to_python, value, wait_for_status
from tests.policy.support import (
    ADMIN,
    Metadata,
    Policed,
    bearer,
    denied_by,
    policed_sidecar,
    policy_settings,
    run,
    write_policies,
)

if TYPE_CHECKING:
    from okra_client.gen.schedule.v1.schedule_pb2_grpc import (
        ScheduleHostAPIAsyncStub as ScheduleStub,
    )
    from okra_client.gen.worker.v1.worker_pb2_grpc import TaskWorkerAsyncStub as WorkerStub
else:
    ScheduleStub = spb_grpc.ScheduleHostAPIStub
    WorkerStub = wpb_grpc.TaskWorkerStub

WORKFLOWS = Path(__file__).parent / "workflows_doors"
GUEST = bearer(sub="guest", role="guest")
WORKER = bearer(sub="payments-worker", role="worker")


@asynccontextmanager
async def doors_sidecar(
    redis_url: str, tmp_path: Path, policies: dict[str, Any], *, mode: str = "optional"
) -> AsyncIterator[tuple[Policed, ScheduleStub, WorkerStub, grpc.aio.Channel]]:
    settings = policy_settings(redis_url, write_policies(tmp_path, json.dumps(policies)), mode=mode)
    settings = replace(settings, workflows_dir=WORKFLOWS)
    async with policed_sidecar(settings) as policed:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{policed.sidecar.port}") as channel:
            yield (
                policed,
                spb_grpc.ScheduleHostAPIStub(channel),
                wpb_grpc.TaskWorkerStub(channel),
                channel,
            )


def guarded_methods() -> list[tuple[str, str, bool]]:
    """(service, method, server-streaming) for every rpc of the guarded services."""
    pool = descriptor_pool.Default()
    return sorted(
        (service, method.name, method.server_streaming)
        for service in GUARDED_SERVICES
        for method in pool.FindServiceByName(service).methods
    )


async def call_raw(
    channel: grpc.aio.Channel, service: str, method: str, streaming: bool, metadata: Metadata
) -> grpc.StatusCode:
    """Call an rpc with an empty request; the status it ends with."""
    path = f"/{service}/{method}"
    # Bytes in and out: an empty message, whatever the rpc's request type.
    raw: dict[str, Any] = {"request_serializer": bytes, "response_deserializer": bytes}
    try:
        if streaming:
            opened: Any = channel.unary_stream(path, **raw)
            stream = opened(b"", metadata=metadata, timeout=5)
            async for _ in stream:
                pass
        else:
            call: Any = channel.unary_unary(path, **raw)
            await call(b"", metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_every_rpc_needs_a_token_and_has_a_policy_check(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    methods = guarded_methods()
    assert ("okra.worker.v1.TaskWorker", "PollTasks", True) in methods
    async with doors_sidecar(redis_url, tmp_path, {}, mode="required") as (_, _, _, channel):
        for service, method, streaming in methods:
            code = await call_raw(channel, service, method, streaming, ())
            assert code is grpc.StatusCode.UNAUTHENTICATED, f"{service}/{method} without a token"
        for service, method, streaming in methods:
            # An rpc that no policy decides is refused as UNIMPLEMENTED: add its check.
            code = await call_raw(channel, service, method, streaming, GUEST)
            assert code is not grpc.StatusCode.UNIMPLEMENTED, f"{service}/{method}: no policy"


async def poll_one(worker: WorkerStub, metadata: Metadata, worker_id: str = "w-1") -> wpb.Task:
    stream = worker.PollTasks(
        wpb.PollTasksRequest(service="payments", worker_id=worker_id), metadata=metadata
    )
    try:
        async for reply in stream:
            return reply.task
    finally:
        stream.cancel()
    raise AssertionError("the stream ended without a task")


async def test_a_task_is_polled_and_finished_only_by_allowed_callers_with_its_lease(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    policies = {keys.TASK_CONDITION: "request.auth.claims.role == 'worker'"}
    async with doors_sidecar(redis_url, tmp_path, policies, mode="required") as doors:
        policed, _, worker, _ = doors
        instance_id = await run(policed.stub, "app.charge.1.0.0", {"amount": 5}, metadata=ADMIN)
        await wait_for_status(
            policed.stub, instance_id, {pb.WORKFLOW_STATUS_WAITING}, metadata=ADMIN
        )
        anonymous = worker.PollTasks(wpb.PollTasksRequest(service="payments", worker_id="x"))
        await expect_rpc_error(anonymous.read(), grpc.StatusCode.UNAUTHENTICATED)
        denied = worker.PollTasks(
            wpb.PollTasksRequest(service="payments", worker_id="x"), metadata=GUEST
        )
        error = await expect_rpc_error(denied.read(), grpc.StatusCode.PERMISSION_DENIED)
        assert denied_by(error) == keys.TASK_CONDITION

        task = await poll_one(worker, WORKER)
        forged = value({"charged": "forged"})
        error = await expect_rpc_error(
            worker.CompleteTask(
                wpb.CompleteTaskRequest(task_id=task.task_id, lease=task.lease, result=forged),
                metadata=GUEST,
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert denied_by(error) == keys.TASK_CONDITION
        tag = task.lease.rpartition(".")[2]
        for lease, code in (
            ("", grpc.StatusCode.INVALID_ARGUMENT),
            (f"w-2.{tag}", grpc.StatusCode.PERMISSION_DENIED),  # another worker's name
            ("w-1.AAAAAAAAAAAAAAAAAAAAAA", grpc.StatusCode.PERMISSION_DENIED),
        ):
            error = await expect_rpc_error(
                worker.FailTask(
                    wpb.FailTaskRequest(task_id=task.task_id, lease=lease), metadata=WORKER
                ),
                code,
            )
            assert "lease" in (error.details() or "")
        status = await policed.stub.GetStatus(
            pb.GetStatusRequest(instance_id=instance_id), metadata=ADMIN
        )
        assert status.status == pb.WORKFLOW_STATUS_WAITING  # nothing reached the instance

        done = await worker.CompleteTask(
            wpb.CompleteTaskRequest(
                task_id=task.task_id, lease=task.lease, result=value({"charged": 5})
            ),
            metadata=WORKER,
        )
        assert done.accepted
        finished = await wait_for_status(
            policed.stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED}, metadata=ADMIN
        )
        assert to_python(finished.output) == {"charged": 5}


async def test_a_policy_change_reaches_an_open_task_stream_before_its_next_task(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    allow = {keys.TASK_CONDITION: "request.auth.claims.role == 'worker'"}
    deny = {keys.TASK_CONDITION: "request.auth.claims.role == 'nobody'"}
    async with doors_sidecar(redis_url, tmp_path, allow, mode="required") as doors:
        policed, _, worker, _ = doors
        first = await run(policed.stub, "app.charge.1.0.0", {"amount": 1}, metadata=ADMIN)
        request = wpb.PollTasksRequest(service="payments", worker_id="w-1", max_in_flight=2)
        stream = worker.PollTasks(request, metadata=WORKER)
        try:
            handed = await stream.read()
            assert isinstance(handed, wpb.PollTasksResponse)
            assert handed.task.instance_id == first

            await set_policies(policed, deny)

            async def new_streams_denied() -> bool:
                fresh = worker.PollTasks(request, metadata=WORKER)
                try:
                    await fresh.read()
                except grpc.aio.AioRpcError as exc:
                    return exc.code() is grpc.StatusCode.PERMISSION_DENIED
                finally:
                    fresh.cancel()
                return False

            await eventually(new_streams_denied, what="the new policy is in force")
            second = await run(policed.stub, "app.charge.1.0.0", {"amount": 2}, metadata=ADMIN)
            # The stream opened under the old policy ends instead of handing out the new task.
            error = await expect_rpc_error(stream.read(), grpc.StatusCode.PERMISSION_DENIED)
            assert denied_by(error) == keys.TASK_CONDITION
        finally:
            stream.cancel()
        # The task went back at once, as never handed out: an allowed worker gets it next.
        await set_policies(policed, allow)
        retaken = await poll_one(worker, WORKER, worker_id="w-2")
        assert (retaken.instance_id, retaken.attempt) == (second, 1)


Case = Callable[[Policed, ScheduleStub, WorkerStub, dict[str, str]], Awaitable[Any]]


async def set_policies(policed: Policed, policies: dict[str, Any]) -> None:
    await policed.admin.SetPolicies(
        admin_pb.SetPoliciesRequest(text=json.dumps(policies)), metadata=ADMIN
    )


async def emit(policed: Policed, s: ScheduleStub, w: WorkerStub, ids: dict[str, str]) -> Any:
    request = pb.EmitRequest(type="order.created", source="shop")
    return await policed.stub.Emit(request, metadata=GUEST)


async def history(policed: Policed, s: ScheduleStub, w: WorkerStub, ids: dict[str, str]) -> Any:
    request = pb.GetHistoryRequest(instance_id=ids["instance"])
    return await policed.stub.GetHistory(request, metadata=GUEST)


async def get_schedule(
    policed: Policed, s: ScheduleStub, w: WorkerStub, ids: dict[str, str]
) -> Any:
    return await s.GetSchedule(spb.GetScheduleRequest(schedule_id=ids["schedule"]), metadata=GUEST)


async def delete_schedule(
    policed: Policed, s: ScheduleStub, w: WorkerStub, ids: dict[str, str]
) -> Any:
    request = spb.DeleteScheduleRequest(schedule_id=ids["schedule"])
    return await s.DeleteSchedule(request, metadata=GUEST)


async def heartbeat(policed: Policed, s: ScheduleStub, w: WorkerStub, ids: dict[str, str]) -> Any:
    request = wpb.HeartbeatRequest(worker_id="w-1", task_ids=["payments/0/1-0"])
    return await w.Heartbeat(request, metadata=GUEST)


NOT_GUEST = "request.auth.claims.role != 'guest'"
DENIALS: list[tuple[dict[str, Any], Case, str]] = [
    ({keys.EMIT_ALLOWED: False}, emit, keys.EMIT_ALLOWED),
    ({keys.EMIT_ALLOWED_TYPES: ["payment.*"]}, emit, keys.EMIT_ALLOWED_TYPES),
    ({keys.EMIT_CONDITION: "event.source != 'shop'"}, emit, keys.EMIT_CONDITION),
    ({keys.HISTORY_ALLOWED: False}, history, keys.HISTORY_ALLOWED),
    (
        {keys.HISTORY_CONDITION: "instance.workflow != 'app.charge.1.0.0'"},
        history,
        keys.HISTORY_CONDITION,
    ),
    # A caller GetStatus refuses may not read the instance's history either.
    ({keys.CONDITION: NOT_GUEST}, history, keys.CONDITION),
    ({keys.SCHEDULE_ALLOWED: False}, get_schedule, keys.SCHEDULE_ALLOWED),
    ({keys.SCHEDULE_OWNER_ONLY: True}, get_schedule, keys.SCHEDULE_OWNER_ONLY),
    ({keys.SCHEDULE_OWNER_ONLY: True}, delete_schedule, keys.SCHEDULE_OWNER_ONLY),
    (
        {keys.SCHEDULE_CONDITION: "schedule.owner.sub == request.auth.claims.sub"},
        delete_schedule,
        keys.SCHEDULE_CONDITION,
    ),
    ({keys.CONDITION: NOT_GUEST}, delete_schedule, keys.CONDITION),
    ({keys.TASK_ALLOWED: False}, heartbeat, keys.TASK_ALLOWED),
    ({keys.TASK_ALLOWED_QUEUES: ["shipping"]}, heartbeat, keys.TASK_ALLOWED_QUEUES),
    ({keys.TASK_CONDITION: "task.queue != 'payments'"}, heartbeat, keys.TASK_CONDITION),
]


async def test_each_key_denies_its_rpcs_and_changes_nothing(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with doors_sidecar(redis_url, tmp_path, {}) as (policed, schedules, worker, _):
        instance_id = await run(policed.stub, "app.charge.1.0.0", {"amount": 1}, metadata=ADMIN)
        created = await schedules.TriggerWorkflow(
            spb.TriggerWorkflowRequest(
                workflow_id="app.charge.1.0.0",
                cron_expression="0 * * * *",
                input=value({"amount": 1, "card": "4111111111111111"}),
            ),
            metadata=ADMIN,
        )
        ids = {"instance": instance_id, "schedule": created.schedule_id}
        # Allowed by default, as before these keys existed.
        await emit(policed, schedules, worker, ids)
        await history(policed, schedules, worker, ids)
        await get_schedule(policed, schedules, worker, ids)
        events_before = await redis.xlen("okra:events")
        for policies, case, key in DENIALS:
            await set_policies(policed, policies)
            error = await expect_rpc_error(
                case(policed, schedules, worker, ids), grpc.StatusCode.PERMISSION_DENIED
            )
            assert denied_by(error) == key, (policies, case.__name__)
            assert key in (error.details() or "")
        await set_policies(policed, {})
        assert await redis.xlen("okra:events") == events_before  # no denied Emit published
        kept = await schedules.GetSchedule(
            spb.GetScheduleRequest(schedule_id=created.schedule_id), metadata=ADMIN
        )
        assert kept.schedule.workflow_id == "app.charge.1.0.0"  # no denied delete happened


async def test_owner_only_lists_a_callers_own_schedules(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with doors_sidecar(redis_url, tmp_path, {keys.SCHEDULE_OWNER_ONLY: True}) as doors:
        _, schedules, _, _ = doors
        request = spb.TriggerWorkflowRequest(
            workflow_id="app.charge.1.0.0", cron_expression="0 * * * *", input=value({})
        )
        mine = await schedules.TriggerWorkflow(request, metadata=GUEST)
        await schedules.TriggerWorkflow(request, metadata=ADMIN)
        listed = await schedules.ListSchedules(spb.ListSchedulesRequest(), metadata=GUEST)
        assert [s.schedule_id for s in listed.schedules] == [mine.schedule_id]
        everything = await schedules.ListSchedules(spb.ListSchedulesRequest(), metadata=ADMIN)
        assert mine.schedule_id not in [s.schedule_id for s in everything.schedules]


@pytest.mark.parametrize(
    "key",
    sorted(
        k
        for k in keys.KNOWN_KEYS
        if ".emit." in k or ".history." in k or ".schedule." in k or ".task." in k
    ),
)
def test_every_new_key_has_a_denial_case(key: str) -> None:
    assert key in {k for _, _, k in DENIALS}


PARENT_ONLY_EXPORTERS = (
    "workflow.namespace != 'legacy' || "
    "(has(request.auth.claims.role) && request.auth.claims.role == 'exporter')"
)


async def test_a_child_run_passes_the_run_policies_as_its_parents_owner(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    policies = {keys.RUN_CONDITION: PARENT_ONLY_EXPORTERS}
    async with doors_sidecar(redis_url, tmp_path, policies) as (policed, _, _, _):
        stub = policed.stub
        denied = await run(stub, "app.parent.1.0.0", metadata=GUEST)
        failed = await wait_for_status(stub, denied, {pb.WORKFLOW_STATUS_FAILED})
        assert failed.error.type.endswith("/authorization") and failed.error.status == 403
        assert keys.RUN_CONDITION in failed.error.detail
        children = await stub.Query(
            pb.QueryRequest(workflow_id="legacy.export.1.0.0"), metadata=ADMIN
        )
        assert not children.instances  # no child was made

        exporter = bearer(sub="exporter", role="exporter")
        allowed = await run(stub, "app.parent.1.0.0", metadata=exporter)
        done = await wait_for_status(stub, allowed, {pb.WORKFLOW_STATUS_COMPLETED})
        assert to_python(done.output) == {"exported": True}


async def test_a_child_run_counts_against_the_instance_limits(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    policies = {keys.MAX_CONCURRENT_INSTANCES: 1}
    async with doors_sidecar(redis_url, tmp_path, policies) as (policed, _, _, _):
        parent = await run(policed.stub, "app.parent.1.0.0")
        failed = await wait_for_status(policed.stub, parent, {pb.WORKFLOW_STATUS_FAILED})
        assert failed.error.status == 429
        assert keys.MAX_CONCURRENT_INSTANCES in failed.error.detail
