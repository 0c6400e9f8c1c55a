"""The WorkflowOperatorAPI end to end: Suspend, Resume and Delete against a real sidecar."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest_asyncio
from google.protobuf import json_format
from google.rpc import error_details_pb2
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.errors import Reason
from okra_sidecar.server import Sidecar
from okra_sidecar.store.base import TurnCommit, TurnSnapshot
from tests.helpers import (
    KEYS,
    Stub,
    assert_reason,
    eventually,
    expect_rpc_error,
    redis_fingerprint,
    rich_status,
    to_python,
    value,
    wait_for_status,
)

if TYPE_CHECKING:
    from okra_client.gen.workflow.v1.operator_pb2_grpc import (
        WorkflowOperatorAPIAsyncStub as OperatorStub,
    )
else:
    OperatorStub = opb_grpc.WorkflowOperatorAPIStub

WAITING = pb.WORKFLOW_STATUS_WAITING
SUSPENDED = pb.WORKFLOW_STATUS_SUSPENDED
COMPLETED = pb.WORKFLOW_STATUS_COMPLETED


@pytest_asyncio.fixture
async def operator(sidecar: tuple[Sidecar, Stub]) -> AsyncIterator[OperatorStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar[0].port}") as channel:
        yield OperatorStub(channel)


async def start_waiting(stub: Stub) -> str:
    """An approval instance blocked in its `listen` for `approve`."""
    started = await stub.Run(
        pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": 3}))
    )
    await wait_for_status(stub, started.instance_id, {WAITING})
    return started.instance_id


async def history_types(stub: Stub, instance_id: str) -> list[str]:
    page = await stub.GetHistory(pb.GetHistoryRequest(instance_id=instance_id, limit=1000))
    return [event.type for event in page.events]


async def work_drained(redis: Redis) -> bool:
    """Every work item of every partition has been read and acknowledged."""
    for partition in range(KEYS.partitions):
        stream = KEYS.work(partition)
        if await redis.xlen(stream):
            return False
    return True


async def test_a_suspended_instance_keeps_its_signals_and_runs_them_on_resume(
    stub: Stub, operator: OperatorStub, redis: Redis
) -> None:
    instance_id = await start_waiting(stub)
    await operator.Suspend(opb.SuspendRequest(instance_id=instance_id, reason="audit"))
    assert (await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))).status == SUSPENDED
    await stub.Signal(
        pb.SignalRequest(instance_id=instance_id, signal="approve", payload=value({"by": "ann"}))
    )
    # The signal's work item is taken and answered without a turn: the signal stays kept.
    await eventually(lambda: work_drained(redis), what="the signal's work item was handled")
    instance = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
    assert instance.status == SUSPENDED
    assert instance.current_step == "/do/0/askForApproval"
    assert await redis.xlen(KEYS.inbox(instance_id)) == 1

    await operator.Resume(opb.ResumeRequest(instance_id=instance_id, reason="audit done"))
    done = await wait_for_status(stub, instance_id, {COMPLETED})
    assert to_python(done.output) == {"amount": 3, "approvedBy": "ann"}
    types = await history_types(stub, instance_id)
    assert types.index("workflow.suspended") < types.index("workflow.resumed")
    assert types.index("workflow.resumed") < types.index("workflow.completed")
    page = await stub.GetHistory(pb.GetHistoryRequest(instance_id=instance_id, limit=1000))
    reasons = [json_format.MessageToDict(e.details).get("reason") for e in page.events]
    assert "audit" in reasons and "audit done" in reasons


async def test_a_timer_that_expires_while_suspended_fires_on_resume(
    stub: Stub, operator: OperatorStub, redis: Redis
) -> None:
    started = await stub.Run(pb.RunRequest(workflow_id="tests.timer.1.0.0"))
    instance_id = started.instance_id
    await wait_for_status(stub, instance_id, {WAITING})
    await operator.Suspend(opb.SuspendRequest(instance_id=instance_id))
    state = json.loads(await redis.hget(KEYS.instance(instance_id), "state") or "{}")
    due_ms = state["task"]["due"]

    async def timer_taken() -> bool:
        # timers.lua moved it to the work stream, and that item was answered.
        timers = KEYS.timers(KEYS.partition(instance_id))
        return await redis.zscore(timers, instance_id) is None and await work_drained(redis)

    await eventually(timer_taken, what="the timer came due and its work was handled")
    now_ms = int((await redis.time())[0]) * 1000
    assert now_ms >= due_ms - 1000  # the timer fired on the Redis clock
    assert (await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))).status == SUSPENDED
    await operator.Resume(opb.ResumeRequest(instance_id=instance_id))
    done = await wait_for_status(stub, instance_id, {COMPLETED})
    assert to_python(done.output) == {"woke": True}


async def test_suspend_racing_a_commit_in_flight_wins(
    sidecar: tuple[Sidecar, Stub], operator: OperatorStub, redis: Redis
) -> None:
    running, stub = sidecar
    instance_id = await start_waiting(stub)
    store = running.store
    real_commit = store.commit_turn
    raced: list[bool] = []

    async def suspend_then_commit(snapshot: TurnSnapshot, commit: TurnCommit) -> bool:
        # The turn has loaded the instance and consumed the signal: the operator's Suspend
        # lands before its commit does.
        if snapshot.instance_id == instance_id and not raced:
            await operator.Suspend(opb.SuspendRequest(instance_id=instance_id, reason="race"))
            committed = await real_commit(snapshot, commit)
            raced.append(committed)
            return committed
        return await real_commit(snapshot, commit)

    async def tried() -> bool:
        return bool(raced)

    store.commit_turn = suspend_then_commit  # type: ignore[method-assign]  # the race
    try:
        await stub.Signal(
            pb.SignalRequest(instance_id=instance_id, signal="approve", payload=value({"by": "x"}))
        )
        await eventually(tried, what="the turn tried to commit")
        await eventually(lambda: work_drained(redis), what="the turn gave up on the instance")
    finally:
        store.commit_turn = real_commit  # type: ignore[method-assign]
    assert raced == [False]  # the revision guard refused the turn loaded before the suspend
    instance = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
    assert instance.status == SUSPENDED
    assert await redis.xlen(KEYS.inbox(instance_id)) == 1  # the signal is kept
    await operator.Resume(opb.ResumeRequest(instance_id=instance_id))
    done = await wait_for_status(stub, instance_id, {COMPLETED})
    assert to_python(done.output)["approvedBy"] == "x"


async def test_suspending_a_finished_instance_is_refused_and_writes_nothing(
    stub: Stub, operator: OperatorStub, redis: Redis
) -> None:
    started = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
    await stub.Cancel(pb.CancelRequest(instance_id=started.instance_id))
    before = await redis_fingerprint(redis)
    error = await expect_rpc_error(
        operator.Suspend(opb.SuspendRequest(instance_id=started.instance_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "is already cancelled and cannot be suspended" in (error.details() or "")
    metadata = assert_reason(error, Reason.INSTANCE_ALREADY_FINISHED)
    assert metadata == {"instance": started.instance_id, "status": "cancelled"}
    failure = error_details_pb2.PreconditionFailure()
    assert any(d.Unpack(failure) for d in rich_status(error).details)
    assert failure.violations[0].subject == f"instance/{started.instance_id}"
    assert await redis_fingerprint(redis) == before


async def test_refusals_on_live_instances_write_nothing(
    stub: Stub, operator: OperatorStub, redis: Redis
) -> None:
    instance_id = await start_waiting(stub)
    before = await redis_fingerprint(redis)
    error = await expect_rpc_error(
        operator.Resume(opb.ResumeRequest(instance_id=instance_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "is waiting, not suspended" in (error.details() or "")
    error = await expect_rpc_error(
        operator.Delete(opb.DeleteRequest(instance_id=instance_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "is waiting; only a completed, failed or cancelled instance" in (error.details() or "")
    assert await redis_fingerprint(redis) == before
    await operator.Suspend(opb.SuspendRequest(instance_id=instance_id))
    before = await redis_fingerprint(redis)
    error = await expect_rpc_error(
        operator.Suspend(opb.SuspendRequest(instance_id=instance_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "is suspended already" in (error.details() or "")
    assert await redis_fingerprint(redis) == before


async def test_a_suspended_instance_can_be_cancelled(stub: Stub, operator: OperatorStub) -> None:
    instance_id = await start_waiting(stub)
    await operator.Suspend(opb.SuspendRequest(instance_id=instance_id))
    await stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="no longer wanted"))
    instance = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
    assert instance.status == pb.WORKFLOW_STATUS_CANCELLED
    query = await stub.Query(pb.QueryRequest(status=[SUSPENDED]))
    assert instance_id not in [i.instance_id for i in query.instances]


async def test_query_finds_suspended_instances(stub: Stub, operator: OperatorStub) -> None:
    instance_id = await start_waiting(stub)
    await operator.Suspend(opb.SuspendRequest(instance_id=instance_id))
    suspended = await stub.Query(pb.QueryRequest(status=[SUSPENDED]))
    assert [i.instance_id for i in suspended.instances] == [instance_id]
    await operator.Resume(opb.ResumeRequest(instance_id=instance_id))
    waiting = await stub.Query(pb.QueryRequest(status=[WAITING]))
    assert [i.instance_id for i in waiting.instances] == [instance_id]
    assert not (await stub.Query(pb.QueryRequest(status=[SUSPENDED]))).instances


async def test_delete_removes_a_finished_instance_its_history_and_its_index_entries(
    stub: Stub, operator: OperatorStub, redis: Redis
) -> None:
    kept = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0", tags={"k": "v"}))
    started = await stub.Run(
        pb.RunRequest(workflow_id="tests.forever.1.0.0", tags={"k": "v"}, correlation_id="c-1")
    )
    instance_id = started.instance_id
    await stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="done"))
    await operator.Delete(opb.DeleteRequest(instance_id=instance_id))
    await expect_rpc_error(
        stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id)), grpc.StatusCode.NOT_FOUND
    )
    await expect_rpc_error(
        stub.GetHistory(pb.GetHistoryRequest(instance_id=instance_id)), grpc.StatusCode.NOT_FOUND
    )
    listed = await stub.Query(pb.QueryRequest(tags={"k": "v"}))
    assert [i.instance_id for i in listed.instances] == [kept.instance_id]
    keys = [k async for k in redis.scan_iter(match=f"*{instance_id}*")]
    assert keys == []
    for key in [k async for k in redis.scan_iter(match="okra:*idx:*")]:
        members = await redis.zrange(key, 0, -1)
        assert not any(instance_id.encode() in m for m in members), key
    await expect_rpc_error(
        operator.Delete(opb.DeleteRequest(instance_id=instance_id)), grpc.StatusCode.NOT_FOUND
    )


async def test_watchers_see_suspend_and_resume(stub: Stub, operator: OperatorStub) -> None:
    instance_id = await start_waiting(stub)
    stream = stub.WatchInstance(pb.WatchInstanceRequest(instance_id=instance_id), timeout=30)
    try:
        first = await stream.read()
        assert isinstance(first, pb.WatchInstanceResponse)
        assert first.instance.status == WAITING
        await operator.Suspend(opb.SuspendRequest(instance_id=instance_id))
        suspended = await stream.read()
        assert isinstance(suspended, pb.WatchInstanceResponse)
        assert suspended.instance.status == SUSPENDED
        await operator.Resume(opb.ResumeRequest(instance_id=instance_id))
        resumed = await stream.read()
        assert isinstance(resumed, pb.WatchInstanceResponse)
        assert resumed.instance.status == WAITING
    finally:
        stream.cancel()


async def test_a_verb_given_no_reason_records_none_in_the_history(
    stub: Stub, operator: OperatorStub
) -> None:
    waiting = await start_waiting(stub)
    await operator.Suspend(opb.SuspendRequest(instance_id=waiting))
    await operator.Resume(opb.ResumeRequest(instance_id=waiting))
    await operator.Suspend(opb.SuspendRequest(instance_id=waiting))
    started = await operator.StartBulkOperation(
        opb.StartBulkOperationRequest(
            filter=pb.QueryRequest(status=[SUSPENDED]), action=opb.BULK_ACTION_RESUME
        )
    )

    async def resumed_by_bulk() -> bool:
        return (await history_types(stub, waiting)).count("workflow.resumed") == 2

    await eventually(resumed_by_bulk, what="the bulk operation resumed the instance")
    await stub.Cancel(pb.CancelRequest(instance_id=waiting))
    failed = await stub.Run(
        pb.RunRequest(workflow_id="tests.order.1.0.0", input=value({"kind": "crate"}))
    )
    await wait_for_status(stub, failed.instance_id, {pb.WORKFLOW_STATUS_FAILED})
    await operator.Retry(opb.RetryRequest(instance_id=failed.instance_id))
    await wait_for_status(stub, failed.instance_id, {pb.WORKFLOW_STATUS_FAILED})
    await operator.Reset(opb.ResetRequest(instance_id=failed.instance_id, task="/do/0/route"))

    verbs = {"workflow.suspended", "workflow.resumed", "workflow.cancelled"}
    verbs |= {"workflow.retried", "workflow.reset"}
    recorded = []
    for instance_id in (waiting, failed.instance_id):
        page = await stub.GetHistory(pb.GetHistoryRequest(instance_id=instance_id, limit=1000))
        for event in page.events:
            if event.type in verbs:
                recorded.append((event.type, json_format.MessageToDict(event.details)))
    assert sorted(t for t, _ in recorded) == sorted(
        ["workflow.suspended"] * 2
        + ["workflow.resumed"] * 2
        + ["workflow.cancelled", "workflow.retried", "workflow.reset"]
    )
    for event_type, details in recorded:
        assert "reason" not in details, (event_type, details)
    bulk_events = [d for _, d in recorded if "bulkOperation" in d]
    assert [d["bulkOperation"] for d in bulk_events] == [started.operation_id]
