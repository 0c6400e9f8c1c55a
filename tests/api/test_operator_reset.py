"""Reset end to end: instances taken back to a top-level task, against a real sidecar."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.errors import Reason
from okra_sidecar.server import Sidecar
from okra_sidecar.store.base import TurnCommit, TurnSnapshot
from tests.api.test_operator import operator
from tests.api.test_operator_retry import WORKFLOWS, FlakyPayments, payments
from tests.helpers import (
    FAST_ENGINE,
    KEYS,
    Stub,
    assert_reason,
    eventually,
    expect_rpc_error,
    make_settings,
    redis_fingerprint,
    running_sidecar,
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

__all__ = ["operator", "payments"]  # the fixtures, used by name

COMPLETED = pb.WORKFLOW_STATUS_COMPLETED
FAILED = pb.WORKFLOW_STATUS_FAILED
WAITING = pb.WORKFLOW_STATUS_WAITING


async def history(stub: Stub, instance_id: str) -> list[pb.HistoryEvent]:
    page = await stub.GetHistory(pb.GetHistoryRequest(instance_id=instance_id, limit=1000))
    return list(page.events)


def started_tasks(events: list[pb.HistoryEvent]) -> list[str]:
    return [e.task for e in events if e.type == "task.started"]


async def test_a_completed_instance_reset_to_its_second_step_runs_on_from_there(
    stub: Stub, operator: OperatorStub
) -> None:
    started = await stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1})))
    instance_id = started.instance_id
    done = await wait_for_status(stub, instance_id, {COMPLETED})
    assert to_python(done.output) == {"n": 22, "done": True}

    reset = await operator.Reset(
        opb.ResetRequest(instance_id=instance_id, task="/do/1/second", reason="rerun the tail")
    )
    assert reset.task == "/do/1/second" and reset.previous_status == COMPLETED
    again = await wait_for_status(stub, instance_id, {COMPLETED})
    # The second step got {n: 2}, the data it first had, not the output {n: 22}.
    assert to_python(again.output) == {"n": 22, "done": True}
    events = await history(stub, instance_id)
    assert started_tasks(events) == [
        *("/do/0/first", "/do/1/second", "/do/2/third"),
        *("/do/1/second", "/do/2/third"),
    ]
    types = [e.type for e in events]
    assert types.count("workflow.completed") == 2
    assert types.index("workflow.reset") == types.index("workflow.completed") + 1
    event = next(e for e in events if e.type == "workflow.reset")
    details = json_format.MessageToDict(event.details)
    assert event.task == "/do/1/second"
    assert details["reason"] == "rerun the tail" and details["from"] == "completed"
    assert "not undone" in details["note"]
    completed = await stub.Query(pb.QueryRequest(status=[COMPLETED]))
    assert [i.instance_id for i in completed.instances] == [instance_id]


async def test_a_waiting_instance_reset_waits_again_and_takes_a_signal(
    stub: Stub, operator: OperatorStub
) -> None:
    started = await stub.Run(
        pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": 3}))
    )
    instance_id = started.instance_id
    await wait_for_status(stub, instance_id, {WAITING})
    reset = await operator.Reset(
        opb.ResetRequest(instance_id=instance_id, task="/do/0/askForApproval", reason="again")
    )
    assert reset.previous_status == WAITING
    waiting = await wait_for_status(stub, instance_id, {WAITING})
    assert waiting.current_step == "/do/0/askForApproval"
    await stub.Signal(
        pb.SignalRequest(instance_id=instance_id, signal="approve", payload=value({"by": "ann"}))
    )
    done = await wait_for_status(stub, instance_id, {COMPLETED})
    assert to_python(done.output) == {"amount": 3, "approvedBy": "ann"}
    events = await history(stub, instance_id)
    assert started_tasks(events).count("/do/0/askForApproval") == 2
    reset_event = next(e for e in events if e.type == "workflow.reset")
    assert json_format.MessageToDict(reset_event.details)["from"] == "waiting"


async def test_a_failed_instance_reset_to_its_first_step_runs_it_again(
    redis: Redis,
    redis_url: str,
    payments: tuple[FlakyPayments, str],
) -> None:
    flaky, url = payments
    async with running_sidecar(make_settings(redis_url, workflows=WORKFLOWS)) as (sidecar, stub):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            operator = OperatorStub(channel)
            started = await stub.Run(
                pb.RunRequest(
                    workflow_id="tests.charge.1.0.0", input=value({"url": url, "order": 4})
                )
            )
            instance_id = started.instance_id
            await wait_for_status(stub, instance_id, {FAILED})
            # Never reached: the instance failed before /do/2/done.
            before = await redis_fingerprint(redis)
            error = await expect_rpc_error(
                operator.Reset(opb.ResetRequest(instance_id=instance_id, task="/do/2/done")),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            assert "never reached /do/2/done" in (error.details() or "")
            assert_reason(error, Reason.TASK_NOT_REACHED)
            assert await redis_fingerprint(redis) == before

            reset = await operator.Reset(
                opb.ResetRequest(instance_id=instance_id, task="/do/0/prepare", reason="again")
            )
            assert reset.previous_status == FAILED
            done = await wait_for_status(stub, instance_id, {COMPLETED})
    assert to_python(done.output) == {"receipt": "r-2", "attempt": "first"}
    assert flaky.bodies == [{"order": 4}, {"order": 4}]


async def test_reset_refusals_name_the_cause_and_write_nothing(
    stub: Stub, operator: OperatorStub, redis: Redis
) -> None:
    started = await stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1})))
    instance_id = started.instance_id
    await wait_for_status(stub, instance_id, {COMPLETED})
    before = await redis_fingerprint(redis)
    error = await expect_rpc_error(
        operator.Reset(opb.ResetRequest(instance_id=instance_id, task="/do/1/nope")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    message = error.details() or ""
    assert "'/do/1/nope' is not a top-level task of tests.steps.1.0.0" in message
    assert "/do/0/first, /do/1/second, /do/2/third" in message
    metadata = assert_reason(error, Reason.UNKNOWN_TASK)
    assert metadata["tasks"] == "/do/0/first, /do/1/second, /do/2/third"
    error = await expect_rpc_error(
        operator.Reset(opb.ResetRequest(instance_id=instance_id)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "must name a top-level task" in (error.details() or "")
    await expect_rpc_error(
        operator.Reset(
            opb.ResetRequest(instance_id="0" * 8 + "-0000-4000-8000-" + "0" * 12, task="/do/0/x")
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await redis_fingerprint(redis) == before

    waiting = await stub.Run(
        pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": 1}))
    )
    await wait_for_status(stub, waiting.instance_id, {WAITING})
    await operator.Suspend(opb.SuspendRequest(instance_id=waiting.instance_id))
    before = await redis_fingerprint(redis)
    error = await expect_rpc_error(
        operator.Reset(
            opb.ResetRequest(instance_id=waiting.instance_id, task="/do/0/askForApproval")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "is suspended; only a completed, failed, cancelled or waiting" in (error.details() or "")
    assert "Resume it first" in (error.details() or "")
    assert assert_reason(error, Reason.INSTANCE_NOT_RESETTABLE)["status"] == "suspended"
    assert await redis_fingerprint(redis) == before


async def test_a_running_instance_is_refused(redis: Redis, redis_url: str) -> None:
    # One task per turn: the first turn commits `running` and queues the next, held here.
    settings = make_settings(redis_url, engine=replace(FAST_ENGINE, max_steps_per_turn=1))
    async with running_sidecar(settings) as (sidecar, stub):
        store = sidecar.store
        real_commit = store.commit_turn
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold_running(snapshot: TurnSnapshot, commit: TurnCommit) -> bool:
            if snapshot.status.value == "running" and not held.is_set():
                held.set()
                await asyncio.wait_for(release.wait(), 10)
            return await real_commit(snapshot, commit)

        store.commit_turn = hold_running  # type: ignore[method-assign]  # holds a turn
        try:
            started = await stub.Run(
                pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1}))
            )
            await asyncio.wait_for(held.wait(), 10)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
                before = await redis_fingerprint(redis)
                error = await expect_rpc_error(
                    OperatorStub(channel).Reset(
                        opb.ResetRequest(instance_id=started.instance_id, task="/do/0/first")
                    ),
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
                assert "is running; only a completed, failed, cancelled or waiting" in (
                    error.details() or ""
                )
                assert assert_reason(error, Reason.INSTANCE_NOT_RESETTABLE)["status"] == "running"
                assert await redis_fingerprint(redis) == before
        finally:
            release.set()
            store.commit_turn = real_commit  # type: ignore[method-assign]
        await wait_for_status(stub, started.instance_id, {COMPLETED})


async def test_a_reset_between_a_turns_load_and_commit_refuses_the_stale_commit(
    sidecar: tuple[Sidecar, Stub], operator: OperatorStub, redis: Redis
) -> None:
    running, stub = sidecar
    started = await stub.Run(
        pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": 5}))
    )
    instance_id = started.instance_id
    await wait_for_status(stub, instance_id, {WAITING})
    store = running.store
    real_commit = store.commit_turn
    raced: list[bool] = []

    async def reset_then_commit(snapshot: TurnSnapshot, commit: TurnCommit) -> bool:
        # The turn has loaded the instance and consumed the signal: the Reset lands first.
        if snapshot.instance_id == instance_id and not raced:
            await operator.Reset(
                opb.ResetRequest(instance_id=instance_id, task="/do/0/askForApproval")
            )
            committed = await real_commit(snapshot, commit)
            raced.append(committed)
            return committed
        return await real_commit(snapshot, commit)

    async def tried() -> bool:
        return bool(raced)

    store.commit_turn = reset_then_commit  # type: ignore[method-assign]  # the race
    try:
        await stub.Signal(
            pb.SignalRequest(instance_id=instance_id, signal="approve", payload=value({"by": "x"}))
        )
        await eventually(tried, what="the turn tried to commit")
        done = await wait_for_status(stub, instance_id, {COMPLETED})
    finally:
        store.commit_turn = real_commit  # type: ignore[method-assign]
    assert raced == [False]  # the revision guard refused the turn loaded before the reset
    # The turn after the reset listened again and took the signal kept in the inbox.
    assert to_python(done.output) == {"amount": 5, "approvedBy": "x"}
    events = await history(stub, instance_id)
    assert [e.type for e in events].count("workflow.reset") == 1
    assert await redis.xlen(KEYS.inbox(instance_id)) == 0


async def test_reset_points_are_purged_with_the_instance(
    stub: Stub, operator: OperatorStub, redis: Redis
) -> None:
    started = await stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1})))
    instance_id = started.instance_id
    await wait_for_status(stub, instance_id, {COMPLETED})
    points = await redis.hgetall(KEYS.reset_points(instance_id))
    assert sorted(points) == [b"/do/0/first", b"/do/1/second", b"/do/2/third", b"bytes"]
    assert int(points[b"bytes"]) == sum(len(v) for k, v in points.items() if k != b"bytes")
    await operator.Delete(opb.DeleteRequest(instance_id=instance_id))
    assert not await redis.exists(KEYS.reset_points(instance_id))
