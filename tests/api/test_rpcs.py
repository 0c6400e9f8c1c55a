"""The six rpcs against a real sidecar and Redis: the paths that succeed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import grpc
from google.protobuf import timestamp_pb2
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from tests.helpers import (
    KEYS,
    WORKFLOWS_DIR,
    Stub,
    expect_rpc_error,
    index_size,
    make_settings,
    running_sidecar,
    to_python,
    value,
    wait_for_status,
    with_host,
)

DONE = {pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED}


async def run(stub: Stub, workflow_id: str, data: object = None, **kw: object) -> str:
    request = pb.RunRequest(workflow_id=workflow_id, **kw)  # type: ignore[arg-type]
    if data is not None:
        request.input.CopyFrom(value(data))
    return (await stub.Run(request)).instance_id


async def test_run_returns_before_tasks_and_completes(stub: Stub) -> None:
    instance_id = await run(stub, "tests.steps.1.0.0", {"n": 1})
    first = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
    assert first.workflow_id == "tests.steps.1.0.0"
    assert first.status in {pb.WORKFLOW_STATUS_PENDING, pb.WORKFLOW_STATUS_COMPLETED}
    assert to_python(first.input) == {"n": 1}
    done = await wait_for_status(stub, instance_id, DONE)
    assert done.status == pb.WORKFLOW_STATUS_COMPLETED
    assert to_python(done.output) == {"n": 22, "done": True}
    assert done.end_time.ToMilliseconds() >= done.start_time.ToMilliseconds() > 0
    assert done.version == "1.0.0"


async def test_signal_resumes_a_waiting_instance(stub: Stub) -> None:
    instance_id = await run(stub, "tests.approval.1.0.0", {"amount": 120})
    waiting = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
    assert waiting.current_step == "/do/0/askForApproval"
    reply = await stub.Signal(
        pb.SignalRequest(instance_id=instance_id, signal="approve", payload=value({"by": "bo"}))
    )
    assert reply.signal_id and not reply.duplicate
    done = await wait_for_status(stub, instance_id, DONE)
    assert to_python(done.output) == {"amount": 120, "approvedBy": "bo"}


async def test_signal_sent_before_the_listen_is_kept(stub: Stub) -> None:
    instance_id = await run(stub, "tests.late.1.0.0")
    await stub.Signal(
        pb.SignalRequest(instance_id=instance_id, signal="go", payload=value({"x": 1}))
    )
    done = await wait_for_status(stub, instance_id, DONE)
    assert to_python(done.output) == [{"x": 1}]


async def test_repeated_signal_id_is_delivered_once(stub: Stub, redis: Redis) -> None:
    instance_id = await run(stub, "tests.forever.1.0.0")
    request = pb.SignalRequest(instance_id=instance_id, signal="other", signal_id="s-1")
    first, again = await stub.Signal(request), await stub.Signal(request)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert await redis.xlen(KEYS.inbox(instance_id)) == 1


async def test_durable_wait_completes_after_its_duration(stub: Stub) -> None:
    started = time.monotonic()
    instance_id = await run(stub, "tests.timer.1.0.0")
    waiting = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING, *DONE})
    assert waiting.current_step in {"/do/0/pause", ""}
    done = await wait_for_status(stub, instance_id, DONE)
    assert time.monotonic() - started >= 0.4
    assert to_python(done.output) == {"woke": True}


async def test_switch_and_raise(stub: Stub) -> None:
    ok = await run(stub, "tests.order.1.0.0", {"kind": "digital"})
    bad = await run(stub, "tests.order.1.0.0", {"kind": "boat"})
    assert to_python((await wait_for_status(stub, ok, DONE)).output) == {"delivered": True}
    failed = await wait_for_status(stub, bad, DONE)
    assert failed.status == pb.WORKFLOW_STATUS_FAILED
    assert failed.error.type == "https://okra.dev/errors/unknown-kind"
    assert failed.error.status == 400
    assert failed.error.title == "Unknown order kind"
    assert failed.error.detail == "cannot deliver a boat order"
    assert failed.error.instance == "/do/2/reject"


async def test_request_id_makes_run_idempotent(stub: Stub, redis: Redis) -> None:
    first = await run(stub, "tests.forever.1.0.0", request_id="order-7")
    again = await run(stub, "tests.forever.1.0.0", request_id="order-7")
    other = await run(stub, "tests.forever.1.0.0", request_id="order-8")
    assert first == again != other
    assert await index_size(redis, KEYS.index_all) == 2


async def test_versions_run_side_by_side(stub: Stub) -> None:
    v1 = await run(stub, "tests.approval.1.0.0", {"amount": 1})
    latest = await run(stub, "tests.approval")
    assert (await stub.GetStatus(pb.GetStatusRequest(instance_id=latest))).workflow_id == (
        "tests.approval.2.0.0"
    )
    assert to_python((await wait_for_status(stub, latest, DONE)).output) == {"version": 2}
    status = await stub.GetStatus(pb.GetStatusRequest(instance_id=v1))
    assert status.workflow_id == "tests.approval.1.0.0"


async def test_cancel_records_reason_and_refuses_finished(stub: Stub) -> None:
    instance_id = await run(stub, "tests.forever.1.0.0")
    await stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="customer left"))
    cancelled = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
    assert cancelled.status == pb.WORKFLOW_STATUS_CANCELLED
    assert cancelled.cancel_reason == "customer left"
    error = await expect_rpc_error(
        stub.Cancel(pb.CancelRequest(instance_id=instance_id)), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "already cancelled" in (error.details() or "")
    await expect_rpc_error(
        stub.Signal(pb.SignalRequest(instance_id=instance_id, signal="x")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    # The engine never brings a cancelled instance back.
    await asyncio.sleep(0.3)
    after = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
    assert after.status == pb.WORKFLOW_STATUS_CANCELLED


async def test_list_workflows(stub: Stub) -> None:
    listed = await stub.ListWorkflows(pb.ListWorkflowsRequest())
    ids = [w.workflow_id for w in listed.workflows]
    assert "tests.approval.1.0.0" in ids and "tests.approval.2.0.0" in ids
    approval = next(w for w in listed.workflows if w.workflow_id == "tests.approval.1.0.0")
    assert (approval.version, list(approval.triggers)) == ("1.0.0", ["manual"])
    assert (approval.namespace, approval.name) == ("tests", "approval")


async def test_manual_triggers_disabled(redis: Redis, redis_url: str) -> None:
    settings = with_host(make_settings(redis_url), enable_manual_triggers=False)
    async with running_sidecar(settings) as (_, stub):
        listed = await stub.ListWorkflows(pb.ListWorkflowsRequest())
        assert all("manual" not in w.triggers for w in listed.workflows)
        error = await expect_rpc_error(
            stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0")),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert "enableManualTriggers" in (error.details() or "")
        # It says what does start the workflow: here nothing but another workflow.
        assert "has no schedule, so here it starts only as a child run" in (error.details() or "")
    scheduled = replace(settings, workflows_dir=WORKFLOWS_DIR.parent / "workflows_scheduled")
    async with running_sidecar(scheduled) as (_, stub):
        error = await expect_rpc_error(
            stub.Run(pb.RunRequest(workflow_id="sched.nightly.1.0.0")),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert "starts only from its schedule (cron)" in (error.details() or "")


async def test_concurrent_instance_limit(redis: Redis, redis_url: str) -> None:
    settings = with_host(make_settings(redis_url), max_concurrent_instances=2)
    async with running_sidecar(settings) as (_, stub):
        first = await run(stub, "tests.forever.1.0.0")
        await run(stub, "tests.forever.1.0.0")
        error = await expect_rpc_error(
            stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert "limit of 2" in (error.details() or "")
        await stub.Cancel(pb.CancelRequest(instance_id=first))
        await run(stub, "tests.forever.1.0.0")


def ts(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


async def test_query_filters_newest_first(stub: Stub) -> None:
    ids = []
    for i in range(6):
        ids.append(
            await run(
                stub,
                "tests.forever.1.0.0" if i % 2 else "tests.steps.1.0.0",
                {"n": i},
                tags={"team": "a" if i < 3 else "b", "i": str(i)},
                correlation_id=f"c-{i % 3}",
            )
        )
        await asyncio.sleep(0.003)

    async def query(**kw: object) -> list[str]:
        reply = await stub.Query(pb.QueryRequest(**kw))  # type: ignore[arg-type]
        return [i.instance_id for i in reply.instances]

    assert await query() == ids[::-1]
    assert await query(workflow_id="tests.forever.1.0.0") == [ids[5], ids[3], ids[1]]
    assert await query(tags={"team": "b"}) == [ids[5], ids[4], ids[3]]
    assert await query(tags={"team": "b", "i": "4"}) == [ids[4]]
    assert await query(correlation_id="c-1") == [ids[4], ids[1]]
    for steps_id in (ids[0], ids[2], ids[4]):
        await wait_for_status(stub, steps_id, DONE)
    assert await query(status=[pb.WORKFLOW_STATUS_COMPLETED]) == [ids[4], ids[2], ids[0]]
    assert (
        await query(
            status=[
                pb.WORKFLOW_STATUS_COMPLETED,
                pb.WORKFLOW_STATUS_PENDING,
                pb.WORKFLOW_STATUS_WAITING,
            ]
        )
        == ids[::-1]
    )
    third = await stub.GetStatus(pb.GetStatusRequest(instance_id=ids[2]))
    after = third.start_time.ToMilliseconds()
    assert await query(started_after=ts(after)) == [ids[5], ids[4], ids[3]]
    assert await query(started_before=ts(after)) == [ids[1], ids[0]]


async def test_query_cursor_is_stable_while_instances_are_added(
    stub: Stub,
) -> None:
    ids = [await run(stub, "tests.forever.1.0.0") for _ in range(7)]
    seen: list[str] = []
    cursor = ""
    while True:
        page = await stub.Query(pb.QueryRequest(limit=3, cursor=cursor))
        seen.extend(i.instance_id for i in page.instances)
        await run(stub, "tests.forever.1.0.0")  # newer instances must not shift the pages
        if not page.cursor:
            break
        cursor = page.cursor
    assert seen == ids[::-1]


async def test_an_uppercase_instance_id_is_the_same_instance(stub: Stub) -> None:
    instance_id = await run(stub, "tests.forever.1.0.0")
    shouted = instance_id.upper()
    status = await stub.GetStatus(pb.GetStatusRequest(instance_id=shouted))
    assert status.instance_id == instance_id
    await stub.Cancel(pb.CancelRequest(instance_id=shouted, reason="done"))
    history = await stub.GetHistory(pb.GetHistoryRequest(instance_id=shouted))
    assert history.events[-1].type == "workflow.cancelled"
