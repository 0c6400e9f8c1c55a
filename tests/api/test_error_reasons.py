"""Every reason a client can see, provoked through gRPC against a real sidecar.

Each test is named `test_<reason in lower case>`; `test_every_sent_reason_has_a_test` holds
the catalog in okra_sidecar/errors.py to that.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.errors import REASONS, Reason
from okra_sidecar.server import Sidecar
from okra_sidecar.store.embedded import EmbeddedRedis
from tests.helpers import (
    Stub,
    assert_reason,
    expect_rpc_error,
    make_settings,
    redis_fingerprint,
    running_sidecar,
    to_python,
    value,
    wait_for_status,
    with_host,
)
from tests.policy.support import (
    ADMIN,
    policed_sidecar,
    policy_settings,
    write_policies,
)

if TYPE_CHECKING:
    from okra_client.gen.schedule.v1.schedule_pb2_grpc import (
        ScheduleHostAPIAsyncStub as ScheduleStub,
    )
    from okra_client.gen.workflow.v1.operator_pb2_grpc import (
        WorkflowOperatorAPIAsyncStub as OperatorStub,
    )
else:
    ScheduleStub = spb_grpc.ScheduleHostAPIStub
    OperatorStub = opb_grpc.WorkflowOperatorAPIStub

SCHEDULED_DIR = Path(__file__).parent.parent / "workflows_scheduled"
OPERATOR_DIR = Path(__file__).parent / "workflows_operator"
NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"


def test_every_sent_reason_has_a_test() -> None:
    tested = {name for name in globals() if name.startswith("test_")}
    missing = [r for r, spec in REASONS.items() if spec.sent and f"test_{r.lower()}" not in tested]
    assert not missing, f"reasons no test provokes through gRPC: {missing}"


def test_reasons_are_upper_snake_case_and_named_once() -> None:
    for reason in Reason:
        assert reason.value == reason.name and reason.value.replace("_", "").isalpha()
        assert reason.isupper()
    assert set(REASONS) == set(Reason)


async def test_workflow_not_found(stub: Stub) -> None:
    error = await expect_rpc_error(
        stub.Run(pb.RunRequest(workflow_id="tests.nope.1.0.0")), grpc.StatusCode.NOT_FOUND
    )
    assert assert_reason(error, Reason.WORKFLOW_NOT_FOUND) == {"workflow": "tests.nope.1.0.0"}


async def test_instance_not_found(stub: Stub) -> None:
    error = await expect_rpc_error(
        stub.GetStatus(pb.GetStatusRequest(instance_id=NO_SUCH_ID)), grpc.StatusCode.NOT_FOUND
    )
    assert assert_reason(error, Reason.INSTANCE_NOT_FOUND) == {"instance": NO_SUCH_ID}


async def test_schedule_not_found(sidecar: tuple[Sidecar, Stub]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar[0].port}") as channel:
        schedules = ScheduleStub(channel)
        error = await expect_rpc_error(
            schedules.GetSchedule(spb.GetScheduleRequest(schedule_id=NO_SUCH_ID)),
            grpc.StatusCode.NOT_FOUND,
        )
    assert assert_reason(error, Reason.SCHEDULE_NOT_FOUND) == {"schedule": NO_SUCH_ID}


async def test_invalid_field(stub: Stub) -> None:
    error = await expect_rpc_error(
        stub.GetStatus(pb.GetStatusRequest(instance_id="nope")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert assert_reason(error, Reason.INVALID_FIELD) == {"field": "instance_id"}


async def test_input_schema_mismatch(stub: Stub) -> None:
    error = await expect_rpc_error(
        stub.Run(pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": -1}))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert assert_reason(error, Reason.INPUT_SCHEMA_MISMATCH) == {"field": "input.amount"}


async def test_invalid_policy_set(redis: Redis, redis_url: str) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        error = await expect_rpc_error(
            policed.admin.SetPolicies(
                admin_pb.SetPoliciesRequest(text='{"policy.workflow.run.rateLimit": "lots"}'),
                metadata=ADMIN,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    metadata = assert_reason(error, Reason.INVALID_POLICY_SET)
    assert metadata == {"field": "policy.workflow.run.rateLimit"}


async def test_token_missing(redis: Redis, redis_url: str) -> None:
    async with policed_sidecar(policy_settings(redis_url, mode="required")) as policed:
        error = await expect_rpc_error(
            policed.stub.ListWorkflows(pb.ListWorkflowsRequest()),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    assert_reason(error, Reason.TOKEN_MISSING)


async def test_token_invalid(redis: Redis, redis_url: str) -> None:
    async with policed_sidecar(policy_settings(redis_url, mode="required")) as policed:
        error = await expect_rpc_error(
            policed.stub.ListWorkflows(
                pb.ListWorkflowsRequest(), metadata=(("authorization", "Bearer not-a-jwt"),)
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    assert_reason(error, Reason.TOKEN_INVALID)


async def test_policy_denied(redis: Redis, redis_url: str, tmp_path: Path) -> None:
    policies = write_policies(tmp_path, '{"policy.workflow.run.blocked": ["*"]}')
    async with policed_sidecar(policy_settings(redis_url, policies)) as policed:
        error = await expect_rpc_error(
            policed.stub.Run(pb.RunRequest(workflow_id="test.smoke.1.0.0")),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    assert assert_reason(error, Reason.POLICY_DENIED) == {"policy": "policy.workflow.run.blocked"}


async def test_instance_already_finished(stub: Stub) -> None:
    started = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
    await stub.Cancel(pb.CancelRequest(instance_id=started.instance_id))
    error = await expect_rpc_error(
        stub.Signal(pb.SignalRequest(instance_id=started.instance_id, signal="never")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    metadata = assert_reason(error, Reason.INSTANCE_ALREADY_FINISHED)
    assert metadata == {"instance": started.instance_id, "status": "cancelled"}


async def test_instance_already_suspended(sidecar: tuple[Sidecar, Stub]) -> None:
    running, stub = sidecar
    started = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        operator = OperatorStub(channel)
        await operator.Suspend(opb.SuspendRequest(instance_id=started.instance_id))
        error = await expect_rpc_error(
            operator.Suspend(opb.SuspendRequest(instance_id=started.instance_id)),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    assert assert_reason(error, Reason.INSTANCE_ALREADY_SUSPENDED) == {
        "instance": started.instance_id
    }


async def test_instance_not_suspended(sidecar: tuple[Sidecar, Stub]) -> None:
    running, stub = sidecar
    started = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
    await wait_for_status(stub, started.instance_id, {pb.WORKFLOW_STATUS_WAITING})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        error = await expect_rpc_error(
            OperatorStub(channel).Resume(opb.ResumeRequest(instance_id=started.instance_id)),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    metadata = assert_reason(error, Reason.INSTANCE_NOT_SUSPENDED)
    assert metadata == {"instance": started.instance_id, "status": "waiting"}


async def test_instance_not_finished(sidecar: tuple[Sidecar, Stub]) -> None:
    running, stub = sidecar
    started = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
    await wait_for_status(stub, started.instance_id, {pb.WORKFLOW_STATUS_WAITING})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        error = await expect_rpc_error(
            OperatorStub(channel).Delete(opb.DeleteRequest(instance_id=started.instance_id)),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    metadata = assert_reason(error, Reason.INSTANCE_NOT_FINISHED)
    assert metadata == {"instance": started.instance_id, "status": "waiting"}


async def test_instance_not_failed(sidecar: tuple[Sidecar, Stub]) -> None:
    running, stub = sidecar
    started = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
    await stub.Cancel(pb.CancelRequest(instance_id=started.instance_id))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        error = await expect_rpc_error(
            OperatorStub(channel).Retry(opb.RetryRequest(instance_id=started.instance_id)),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    metadata = assert_reason(error, Reason.INSTANCE_NOT_FAILED)
    assert metadata == {"instance": started.instance_id, "status": "cancelled"}


async def test_nothing_to_retry(redis: Redis, redis_url: str) -> None:
    settings = make_settings(redis_url, workflows=OPERATOR_DIR)
    async with running_sidecar(settings) as (sidecar, stub):
        started = await stub.Run(pb.RunRequest(workflow_id="tests.expire.1.0.0"))
        await wait_for_status(stub, started.instance_id, {pb.WORKFLOW_STATUS_FAILED})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            error = await expect_rpc_error(
                OperatorStub(channel).Retry(opb.RetryRequest(instance_id=started.instance_id)),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
    assert assert_reason(error, Reason.NOTHING_TO_RETRY) == {"instance": started.instance_id}


async def test_bulk_operation_not_found(sidecar: tuple[Sidecar, Stub]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar[0].port}") as channel:
        error = await expect_rpc_error(
            OperatorStub(channel).GetBulkOperation(
                opb.GetBulkOperationRequest(operation_id=NO_SUCH_ID)
            ),
            grpc.StatusCode.NOT_FOUND,
        )
    assert assert_reason(error, Reason.BULK_OPERATION_NOT_FOUND) == {"operation": NO_SUCH_ID}


async def test_bulk_operation_finished(sidecar: tuple[Sidecar, Stub]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar[0].port}") as channel:
        operator = OperatorStub(channel)
        # Nothing matches: the operation is complete as soon as it starts.
        started = await operator.StartBulkOperation(
            opb.StartBulkOperationRequest(
                filter=pb.QueryRequest(tags={"none": "x"}), action=opb.BULK_ACTION_CANCEL
            )
        )
        error = await expect_rpc_error(
            operator.CancelBulkOperation(
                opb.CancelBulkOperationRequest(operation_id=started.operation_id)
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    metadata = assert_reason(error, Reason.BULK_OPERATION_FINISHED)
    assert metadata == {"operation": started.operation_id, "state": "completed"}


async def test_bulk_too_many_instances(redis: Redis, redis_url: str, tmp_path: Path) -> None:
    policies = write_policies(tmp_path, '{"policy.workflow.bulk.maxInstances": 1}')
    async with policed_sidecar(policy_settings(redis_url, policies)) as policed:
        for _ in range(2):
            await policed.stub.Run(pb.RunRequest(workflow_id="test.smoke.1.0.0"))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{policed.sidecar.port}") as channel:
            error = await expect_rpc_error(
                OperatorStub(channel).StartBulkOperation(
                    # A real run: a dry run answers over the limit, to preview it.
                    opb.StartBulkOperationRequest(action=opb.BULK_ACTION_CANCEL)
                ),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
    metadata = assert_reason(error, Reason.BULK_TOO_MANY_INSTANCES)
    assert metadata == {"limit": "1", "policy": "policy.workflow.bulk.maxInstances"}


async def test_changed_concurrently(redis: Redis, redis_url: str, tmp_path: Path) -> None:
    # A signal condition makes the policy layer read the instance before deciding; every
    # time it has read it, another writer moves the status, so signal.lua refuses each try.
    policies = write_policies(tmp_path, '{"policy.workflow.signal.condition": "true"}')
    async with policed_sidecar(policy_settings(redis_url, policies)) as policed:
        started = await policed.stub.Run(pb.RunRequest(workflow_id="test.smoke.1.0.0"))
        await wait_for_status(policed.stub, started.instance_id, {pb.WORKFLOW_STATUS_WAITING})
        store = policed.sidecar.store
        read = store.get_instance
        statuses = iter(["running", "waiting"] * 10)

        async def read_then_move(instance_id: str) -> Any:
            record = await read(instance_id)
            await redis.hset(store.keys.instance(instance_id), "status", next(statuses))
            return record

        store.get_instance = read_then_move  # type: ignore[method-assign]  # the other writer
        error = await expect_rpc_error(
            policed.stub.Signal(pb.SignalRequest(instance_id=started.instance_id, signal="go")),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    metadata = assert_reason(error, Reason.CHANGED_CONCURRENTLY)
    assert metadata["instance"] == started.instance_id


async def test_manual_runs_disabled(redis: Redis, redis_url: str) -> None:
    settings = with_host(make_settings(redis_url), enable_manual_triggers=False)
    async with running_sidecar(settings) as (_, stub):
        error = await expect_rpc_error(
            stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0")),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    assert assert_reason(error, Reason.MANUAL_RUNS_DISABLED) == {"workflow": "tests.steps.1.0.0"}


async def test_schedule_declared_by_workflow(redis: Redis, redis_url: str) -> None:
    settings = make_settings(redis_url, workflows=SCHEDULED_DIR)
    async with running_sidecar(settings) as (sidecar, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            error = await expect_rpc_error(
                ScheduleStub(channel).DeleteSchedule(
                    spb.DeleteScheduleRequest(schedule_id="workflow:sched.tick")
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
    metadata = assert_reason(error, Reason.SCHEDULE_DECLARED_BY_WORKFLOW)
    assert metadata["schedule"] == "workflow:sched.tick"


async def test_schedule_unreadable(sidecar: tuple[Sidecar, Stub], redis: Redis) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar[0].port}") as channel:
        schedules = ScheduleStub(channel)
        created = await schedules.TriggerWorkflow(
            spb.TriggerWorkflowRequest(
                workflow_id="tests.steps.1.0.0",
                input=value({"n": 1}),
                cron_expression="0 0 1 * *",
            )
        )
        key = sidecar[0].store.keys.schedule(created.schedule_id)
        await redis.hset(key, "r", "[]")
        error = await expect_rpc_error(
            schedules.GetSchedule(spb.GetScheduleRequest(schedule_id=created.schedule_id)),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    metadata = assert_reason(error, Reason.SCHEDULE_UNREADABLE)
    assert metadata == {"schedule": created.schedule_id}


async def test_rate_limited(redis: Redis, redis_url: str, tmp_path: Path) -> None:
    policies = write_policies(tmp_path, '{"policy.workflow.query.rateLimit": "1/minute"}')
    async with policed_sidecar(policy_settings(redis_url, policies)) as policed:
        await policed.stub.Query(pb.QueryRequest())
        error = await expect_rpc_error(
            policed.stub.Query(pb.QueryRequest()), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    metadata = assert_reason(error, Reason.RATE_LIMITED)
    assert metadata == {"policy": "policy.workflow.query.rateLimit"}


async def test_instance_limit_reached(redis: Redis, redis_url: str) -> None:
    settings = with_host(make_settings(redis_url), max_concurrent_instances=1)
    async with running_sidecar(settings) as (_, stub):
        await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
        error = await expect_rpc_error(
            stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
    assert assert_reason(error, Reason.INSTANCE_LIMIT_REACHED) == {
        "policy": "maxConcurrentInstances"
    }


async def test_redis_unavailable(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis")
    url = await server.start()
    try:
        async with running_sidecar(make_settings(url)) as (_, stub):
            await server.stop()
            error = await expect_rpc_error(
                stub.GetStatus(pb.GetStatusRequest(instance_id=NO_SUCH_ID)),
                grpc.StatusCode.UNAVAILABLE,
            )
    finally:
        await server.stop()
    assert_reason(error, Reason.REDIS_UNAVAILABLE)


async def test_replicas_not_acknowledged(redis: Redis, redis_url: str) -> None:
    # The test Redis has no replica, so a write that must reach one is never acknowledged.
    settings = make_settings(redis_url)
    settings = replace(settings, redis=replace(settings.redis, durability="replicas"))
    async with running_sidecar(settings) as (_, stub):
        error = await expect_rpc_error(
            stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0")),
            grpc.StatusCode.UNAVAILABLE,
        )
    assert assert_reason(error, Reason.REPLICAS_NOT_ACKNOWLEDGED) == {
        "acknowledged": "0",
        "required": "1",
    }


async def test_unimplemented(sidecar: tuple[Sidecar, Stub]) -> None:
    # grpcio's health servicer has no List: the sidecar answers for it.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar[0].port}") as channel:
        list_services = channel.unary_unary(
            "/grpc.health.v1.Health/List",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        error = await expect_rpc_error(
            list_services(health_pb2.HealthCheckRequest()), grpc.StatusCode.UNIMPLEMENTED
        )
    assert_reason(error, Reason.UNIMPLEMENTED)


async def test_internal(sidecar: tuple[Sidecar, Stub], caplog: pytest.LogCaptureFixture) -> None:
    server, stub = sidecar

    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    server.store.get_instance = broken  # type: ignore[method-assign]  # a bug in the store
    error = await expect_rpc_error(
        stub.GetStatus(pb.GetStatusRequest(instance_id=NO_SUCH_ID)), grpc.StatusCode.INTERNAL
    )
    assert assert_reason(error, Reason.INTERNAL) == {}
    assert "a bug" not in (error.details() or "")
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)


async def test_unknown_task(sidecar: tuple[Sidecar, Stub]) -> None:
    running, stub = sidecar
    started = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
    await wait_for_status(stub, started.instance_id, {pb.WORKFLOW_STATUS_WAITING})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        error = await expect_rpc_error(
            OperatorStub(channel).Reset(
                opb.ResetRequest(instance_id=started.instance_id, task="/do/1/later")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    metadata = assert_reason(error, Reason.UNKNOWN_TASK)
    assert metadata == {"field": "task", "workflow": "tests.forever.1.0.0", "tasks": "/do/0/hold"}


async def test_instance_not_resettable(sidecar: tuple[Sidecar, Stub]) -> None:
    running, stub = sidecar
    started = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
    await wait_for_status(stub, started.instance_id, {pb.WORKFLOW_STATUS_WAITING})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        operator = OperatorStub(channel)
        await operator.Suspend(opb.SuspendRequest(instance_id=started.instance_id))
        error = await expect_rpc_error(
            operator.Reset(opb.ResetRequest(instance_id=started.instance_id, task="/do/0/hold")),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    metadata = assert_reason(error, Reason.INSTANCE_NOT_RESETTABLE)
    assert metadata == {"instance": started.instance_id, "status": "suspended"}


async def test_task_not_reached(sidecar: tuple[Sidecar, Stub]) -> None:
    running, stub = sidecar
    started = await stub.Run(
        pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": 1}))
    )
    await wait_for_status(stub, started.instance_id, {pb.WORKFLOW_STATUS_WAITING})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        error = await expect_rpc_error(
            OperatorStub(channel).Reset(
                opb.ResetRequest(instance_id=started.instance_id, task="/do/1/decide")
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    metadata = assert_reason(error, Reason.TASK_NOT_REACHED)
    assert metadata == {"instance": started.instance_id, "task": "/do/1/decide"}


async def test_reset_point_not_kept(redis: Redis, redis_url: str) -> None:
    settings = make_settings(redis_url, workflows=OPERATOR_DIR)
    async with running_sidecar(settings) as (sidecar, stub):
        started = await stub.Run(pb.RunRequest(workflow_id="tests.bloat.1.0.0"))
        done = await wait_for_status(stub, started.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        assert to_python(done.output) == {"size": 1_500_000}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            operator = OperatorStub(channel)
            # Two points of 1.5 MB fit the 4 MiB budget; the third does not.
            error = await expect_rpc_error(
                operator.Reset(
                    opb.ResetRequest(instance_id=started.instance_id, task="/do/3/fourth")
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            await operator.Reset(
                opb.ResetRequest(instance_id=started.instance_id, task="/do/2/third")
            )
        await wait_for_status(stub, started.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
    metadata = assert_reason(error, Reason.RESET_POINT_NOT_KEPT)
    assert metadata == {"instance": started.instance_id, "task": "/do/3/fourth", "limit": "4194304"}


async def test_task_moved(sidecar: tuple[Sidecar, Stub], redis: Redis) -> None:
    # A task id of store layout 2 (`service/entry id`), held by a worker across a migration.
    running, _ = sidecar
    before = await redis_fingerprint(redis)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        worker = wpb_grpc.TaskWorkerStub(channel)
        error = await expect_rpc_error(
            worker.CompleteTask(wpb.CompleteTaskRequest(task_id="payments/1700000000000-0")),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        beat = await expect_rpc_error(
            worker.Heartbeat(
                wpb.HeartbeatRequest(worker_id="w1", task_ids=["payments/1700000000000-0"])
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    assert assert_reason(error, Reason.TASK_MOVED) == {"task": "payments/1700000000000-0"}
    assert assert_reason(beat, Reason.TASK_MOVED) == {"task": "payments/1700000000000-0"}
    assert "okra-sidecar migrate" in (error.details() or "")
    assert await redis_fingerprint(redis) == before


async def test_message_too_large(stub: Stub) -> None:
    # Over the sidecar's 8 MiB request limit (test_hostile_input.py tries each kind of rpc).
    error = await expect_rpc_error(
        stub.Run(pb.RunRequest(workflow_id="tests.nope.1.0.0", input=value("x" * 9 * 2**20))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert assert_reason(error, Reason.MESSAGE_TOO_LARGE)["limit"] == str(8 * 2**20)
