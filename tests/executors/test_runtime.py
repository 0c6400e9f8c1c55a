"""The effect runtime in a real sidecar: effects committed with a turn come back as results.

The turns here are committed by hand (what an interpreter turn asking for outside work
commits), so these tests pin the runtime's side of the effect contract on their own.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import grpc
import pytest
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.engine.interpreter.effects import RESULT_EVENT_TYPE, Effect, EffectKind
from okra_sidecar.executors.children import child_instance_id
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.policy.causation import CAUSE_METADATA, CausationGuard
from okra_sidecar.server import Sidecar
from okra_sidecar.store.base import Subscriptions, TurnCommit, TurnExtras
from okra_sidecar.store.effect_store import RedisEffectStore
from okra_sidecar.store.keys import WORKER_GROUP
from tests.helpers import (
    KEYS,
    Stub,
    eventually,
    expect_rpc_error,
    make_settings,
    running_sidecar,
    subscribed,
    to_python,
    value,
    wait_for_status,
)

from .stand_in import http_stand_in


async def start_waiting(stub: Stub) -> str:
    reply = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
    await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_WAITING})
    return reply.instance_id


async def commit_extras(sidecar: Sidecar, instance_id: str, extras: TurnExtras) -> None:
    """Commit a turn that asks for `extras`, as a turn would.

    It also suspends the instance, so no interpreter turn consumes what arrives in its inbox
    (an interpreter drops results it does not await): the test reads them there.
    """
    store = sidecar.store
    for _ in range(20):
        snapshot = await store.load_turn(instance_id)
        assert snapshot is not None
        commit = TurnCommit(
            status=InstanceStatus.SUSPENDED,
            state=snapshot.state,
            current_step="hold",
            context={},
            output=None,
            error=None,
            consumed=[],
            wake_at_ms=None,
            requeue=False,
            history=[],
            now_ms=int(time.time() * 1000),
            extras=extras,
        )
        if await store.commit_turn(snapshot, commit):
            return
    raise AssertionError("could not commit")


async def inbox_events(redis: Redis, instance_id: str) -> list[dict[str, Any]]:
    entries: Any = await redis.xrange(KEYS.inbox(instance_id))
    return [json.loads(fields[b"e"]) for _, fields in entries]


async def wait_for_result(redis: Redis, instance_id: str, effect_id: str) -> dict[str, Any]:
    for _ in range(300):
        for event in await inbox_events(redis, instance_id):
            if event["type"] == RESULT_EVENT_TYPE and event["data"]["effectId"] == effect_id:
                return dict(event["data"])
        await asyncio.sleep(0.02)
    raise AssertionError(f"no result for {effect_id}")


async def read_task(call: Any) -> wpb.Task:
    reply = await call.read()
    assert isinstance(reply, wpb.PollTasksResponse)
    return reply.task


async def wait_created(redis: Redis, instance_id: str) -> None:
    for _ in range(300):
        if await redis.exists(KEYS.instance(instance_id)):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{instance_id} never created")


def effect(effect_id: str, kind: EffectKind, request: dict[str, Any]) -> dict[str, Any]:
    return Effect(effect_id, kind, "/do/0/hold", request).to_json()


async def test_http_effect_result_reaches_the_inbox(
    sidecar: tuple[Sidecar, Stub], redis: Redis
) -> None:
    running, stub = sidecar
    instance_id = await start_waiting(stub)
    with http_stand_in() as (base, _):
        extras = TurnExtras(
            effects=[
                effect("get#1", EffectKind.HTTP, {"method": "get", "uri": f"{base}/pets/5"}),
                effect("miss#1", EffectKind.HTTP, {"method": "get", "uri": f"{base}/nope"}),
            ]
        )
        await commit_extras(running, instance_id, extras)
        ok = await wait_for_result(redis, instance_id, "get#1")
        failed = await wait_for_result(redis, instance_id, "miss#1")
    assert ok == {"effectId": "get#1", "ok": True, "value": {"id": 5, "name": "Rex"}, "error": None}
    assert failed["ok"] is False and failed["error"]["status"] == 404
    # Delivered means acknowledged: nothing is left pending on the effects streams.
    for partition in range(8):
        assert await redis.xlen(KEYS.effects(partition)) == 0


async def test_http_calls_carry_the_signed_cause_of_their_instance(
    sidecar: tuple[Sidecar, Stub], redis: Redis
) -> None:
    running, stub = sidecar
    instance_id = await start_waiting(stub)
    with http_stand_in() as (base, recorder):
        # A header the workflow sets cannot stand in for the sidecar's signed one.
        request = {"method": "get", "uri": f"{base}/echo", "headers": {"Okra-Cause": "forged"}}
        extras = TurnExtras(effects=[effect("call#1", EffectKind.HTTP, request)])
        await commit_extras(running, instance_id, extras)
        assert (await wait_for_result(redis, instance_id, "call#1"))["ok"] is True
    (sent,) = recorder.requests
    effects = RedisEffectStore(redis=redis, keys=KEYS)
    guard = CausationGuard(
        instances=effects, limiter=None, secret=effects.shared_secret, per_minute=0
    )
    assert await guard.verify(sent["headers"][CAUSE_METADATA]) == instance_id


async def test_emit_publishes_and_routes_to_matching_listeners(
    sidecar: tuple[Sidecar, Stub], redis: Redis
) -> None:
    running, stub = sidecar
    paid, other = await start_waiting(stub), await start_waiting(stub)
    for instance_id, order in ((paid, "o-1"), (other, "o-2")):
        subs = Subscriptions(
            ("com.example.paid",),
            [
                {
                    "with": {"type": "com.example.paid"},
                    "correlate": {"order": {"from": ".data.order", "expect": order}},
                }
            ],
        )
        await commit_extras(running, instance_id, TurnExtras(subscriptions=subs))
    await expect_rpc_error(
        stub.Emit(pb.EmitRequest(type="io.okra.effect.result", source="me")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_rpc_error(stub.Emit(pb.EmitRequest(type="x.y")), grpc.StatusCode.INVALID_ARGUMENT)
    request = pb.EmitRequest(type="com.example.paid", source="shop", data=value({"order": "o-1"}))
    first = await stub.Emit(request)
    request.id = first.id
    await stub.Emit(request)  # the same event again: delivered once
    for _ in range(200):
        if await inbox_events(redis, paid):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    delivered = await inbox_events(redis, paid)
    assert [e["data"] for e in delivered] == [{"order": "o-1"}]
    assert delivered[0]["id"] == first.id and delivered[0]["source"] == "shop"
    assert await inbox_events(redis, other) == []
    # An emit effect that reached the executors is published there (turns publish theirs in
    # the commit, see test_outbox).
    event = {"source": "wf", "type": "com.example.paid", "data": {"order": "o-2"}}
    await commit_extras(
        running, paid, TurnExtras(effects=[effect("emit#1", EffectKind.EMIT, {"event": event})])
    )
    result = await wait_for_result(redis, paid, "emit#1")
    assert result["value"]["type"] == "com.example.paid" and result["value"]["id"]

    async def delivered_to_other() -> bool:
        return bool(await inbox_events(redis, other))

    await eventually(delivered_to_other, what="the event in the other instance's inbox")
    assert [e["data"] for e in await inbox_events(redis, other)] == [{"order": "o-2"}]
    # Cancelling drops the subscriptions.
    await stub.Cancel(pb.CancelRequest(instance_id=other))
    assert await subscribed(redis, "com.example.paid") == {paid.encode()}


async def test_child_run_reports_to_its_parent_and_recursion_is_refused(
    sidecar: tuple[Sidecar, Stub], redis: Redis
) -> None:
    running, stub = sidecar
    parent = await start_waiting(stub)
    steps = {"namespace": "tests", "name": "steps", "version": "1.0.0"}
    forever = {"namespace": "tests", "name": "forever", "version": "1.0.0"}
    approval = {"namespace": "tests", "name": "approval", "version": "1.0.0"}
    extras = TurnExtras(
        effects=[
            effect("child#1", EffectKind.CHILD, {"workflow": steps, "input": {"n": 1}}),
            effect("self#1", EffectKind.CHILD, {"workflow": forever, "input": {}}),
            effect("mid#1", EffectKind.CHILD, {"workflow": approval, "input": {"amount": 2}}),
        ]
    )
    await commit_extras(running, parent, extras)
    done = await wait_for_result(redis, parent, "child#1")
    assert done["ok"] is True and done["value"] == {"n": 22, "done": True}
    child = await stub.GetStatus(
        pb.GetStatusRequest(instance_id=child_instance_id(parent, "child#1"))
    )
    assert to_python(child.output) == {"n": 22, "done": True}
    refused = await wait_for_result(redis, parent, "self#1")
    assert refused["ok"] is False and refused["error"]["status"] == 508
    assert "tests.forever.1.0.0 -> tests.forever.1.0.0" in refused["error"]["detail"]


async def test_cancelling_a_parent_cancels_its_children(
    sidecar: tuple[Sidecar, Stub], redis: Redis
) -> None:
    running, stub = sidecar
    grandparent = await start_waiting(stub)
    approval = {"namespace": "tests", "name": "approval", "version": "1.0.0"}
    await commit_extras(
        running,
        grandparent,
        TurnExtras(
            effects=[
                effect("c#1", EffectKind.CHILD, {"workflow": approval, "input": {"amount": 1}})
            ]
        ),
    )
    child_id = child_instance_id(grandparent, "c#1")
    await wait_created(redis, child_id)
    await wait_for_status(stub, child_id, {pb.WORKFLOW_STATUS_WAITING})
    await stub.Cancel(pb.CancelRequest(instance_id=grandparent, reason="enough"))
    child = await stub.GetStatus(pb.GetStatusRequest(instance_id=child_id))
    assert child.status == pb.WORKFLOW_STATUS_CANCELLED
    assert child.cancel_reason == f"parent {grandparent} cancelled"


async def idle_ms(redis: Redis, task: wpb.Task) -> int:
    """How long ago the task was handed out or its lease extended (XPENDING)."""
    service, partition, entry_id = task.task_id.split("/", 2)
    pending: Any = await redis.xpending_range(
        KEYS.tasks(service, int(partition)), WORKER_GROUP, entry_id, entry_id, 1
    )
    return int(pending[0]["time_since_delivered"])


async def test_a_heartbeat_extends_only_its_own_leases_and_none_that_ran_out(
    redis: Redis, redis_url: str
) -> None:
    settings = make_settings(redis_url)
    settings = replace(settings, effects=replace(settings.effects, task_lease_ms=400))
    async with running_sidecar(settings) as (running, stub):
        instance_id = await start_waiting(stub)
        work = {"function": "charge", "arguments": {"amount": 3}, "service": "payments"}
        extras = TurnExtras(
            effects=[
                effect("charge#1", EffectKind.WORKER, work),
                effect("charge#2", EffectKind.WORKER, work),
            ]
        )
        await commit_extras(running, instance_id, extras)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            worker = wpb_grpc.TaskWorkerStub(channel)
            poll = worker.PollTasks(
                wpb.PollTasksRequest(service="payments", worker_id="w1", max_in_flight=2)
            )
            first, second = [await read_task(poll) for _ in range(2)]
            poll.cancel()

            async def beat(worker_id: str, *pairs: tuple[str, str]) -> Any:
                request = wpb.HeartbeatRequest(
                    worker_id=worker_id,
                    task_ids=[task_id for task_id, _ in pairs],
                    leases=[lease for _, lease in pairs],
                )
                return await worker.Heartbeat(request)

            async def first_idle() -> bool:
                return await idle_ms(redis, first) >= 100

            await eventually(first_idle, what="the first lease ages")
            no_lease = wpb.HeartbeatRequest(worker_id="w1", task_ids=[first.task_id])
            await expect_rpc_error(worker.Heartbeat(no_lease), grpc.StatusCode.INVALID_ARGUMENT)
            for worker_id, pairs in (
                ("w1", [(first.task_id, second.lease)]),  # another task's lease
                ("w2", [(first.task_id, first.lease)]),  # another worker's lease
                ("w1", [(first.task_id, first.lease), (second.task_id, "w1.AAAAAAAAAAAA")]),
            ):
                error = await expect_rpc_error(
                    beat(worker_id, *pairs), grpc.StatusCode.PERMISSION_DENIED
                )
                assert "lease" in (error.details() or "")
            # Refused whole: not even the good lease of the last call was extended.
            assert await idle_ms(redis, first) >= 100
            held = await beat("w1", (first.task_id, first.lease))
            assert list(held.held_task_ids) == [first.task_id]

            async def second_expired() -> bool:
                return await idle_ms(redis, second) > 400

            await eventually(second_expired, what="the second lease runs out")
            late = await beat("w1", (second.task_id, second.lease))
            assert list(late.held_task_ids) == []  # an expired lease is not revived
            other = worker.PollTasks(
                wpb.PollTasksRequest(service="payments", worker_id="w2", max_in_flight=2)
            )
            retaken = await read_task(other)
            other.cancel()
            assert retaken.task_id == second.task_id and retaken.attempt == 2


async def test_worker_tasks_are_leased_completed_and_failed(redis: Redis, redis_url: str) -> None:
    settings = make_settings(redis_url)
    settings = type(settings)(
        **{**settings.__dict__, "effects": type(settings.effects)(task_lease_ms=400)}
    )
    async with running_sidecar(settings) as (running, stub):
        instance_id = await start_waiting(stub)
        work = {"function": "charge", "arguments": {"amount": 3}}
        await commit_extras(
            running,
            instance_id,
            TurnExtras(
                effects=[
                    effect("charge#1", EffectKind.WORKER, {**work, "service": "payments"}),
                    effect("charge#2", EffectKind.WORKER, {**work, "service": "payments"}),
                ]
            ),
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            worker = wpb_grpc.TaskWorkerStub(channel)
            dead = worker.PollTasks(
                wpb.PollTasksRequest(service="payments", worker_id="dead", max_in_flight=1)
            )
            abandoned = await read_task(dead)
            dead.cancel()  # holds charge#1 and never finishes it
            alive = worker.PollTasks(
                wpb.PollTasksRequest(service="payments", worker_id="alive", max_in_flight=2)
            )
            seen = [await read_task(alive) for _ in range(2)]
            alive.cancel()
        assert {t.effect_id for t in seen} == {"charge#1", "charge#2"}
        retried = next(t for t in seen if t.task_id == abandoned.task_id)
        assert retried.attempt == 2 and to_python(retried.arguments) == {"amount": 3}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            worker = wpb_grpc.TaskWorkerStub(channel)
            other = next(t for t in seen if t.task_id != abandoned.task_id)
            done = await worker.CompleteTask(
                wpb.CompleteTaskRequest(
                    task_id=retried.task_id, lease=retried.lease, result=value({"paid": True})
                )
            )
            late = await worker.CompleteTask(
                wpb.CompleteTaskRequest(
                    task_id=retried.task_id, lease=retried.lease, result=value({"paid": 2})
                )
            )
            failed = await worker.FailTask(
                wpb.FailTaskRequest(
                    task_id=other.task_id, lease=other.lease, status=402, detail="card declined"
                )
            )
            assert (done.accepted, late.accepted, failed.accepted) == (True, False, True)
            await expect_rpc_error(
                worker.CompleteTask(wpb.CompleteTaskRequest(task_id="bogus")),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        paid = await wait_for_result(redis, instance_id, retried.effect_id)
        declined = await wait_for_result(redis, instance_id, other.effect_id)
        assert paid["value"] == {"paid": True}
        assert declined["error"]["status"] == 402 and declined["error"]["detail"] == "card declined"


async def test_get_history_pages_through_lifecycle_events(stub: Stub) -> None:
    reply = await stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1})))
    await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
    events: list[pb.HistoryEvent] = []
    cursor = ""
    while True:
        page = await stub.GetHistory(
            pb.GetHistoryRequest(instance_id=reply.instance_id, limit=2, cursor=cursor)
        )
        events.extend(page.events)
        assert len(page.events) <= 2
        if not page.cursor:
            break
        cursor = page.cursor
    types = [e.type for e in events]
    assert types[0] == "workflow.created" and types[-1] == "workflow.completed"
    assert types.count("workflow.completed") == 1
    assert any(e.task for e in events if e.type == "task.started")
    assert events[0].time.ToMilliseconds() > 0
    await expect_rpc_error(
        stub.GetHistory(pb.GetHistoryRequest(instance_id=reply.instance_id, cursor="x")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_rpc_error(
        stub.GetHistory(pb.GetHistoryRequest(instance_id="00000000-0000-0000-0000-000000000000")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_poller_gets_every_partitions_tasks_within_its_capacity(
    sidecar: tuple[Sidecar, Stub], redis: Redis
) -> None:
    """One read takes tasks of several partitions at once; one at a time still go out."""
    running, stub = sidecar
    keys = running.store.keys
    by_partition: dict[int, str] = {}
    while len(by_partition) < 3:
        instance_id = await start_waiting(stub)
        by_partition.setdefault(keys.partition(instance_id), instance_id)
    work = {"function": "pack", "arguments": {}, "service": "packing"}
    for instance_id in by_partition.values():
        extras = TurnExtras(effects=[effect("pack#1", EffectKind.WORKER, work)])
        await commit_extras(running, instance_id, extras)

    async def all_enqueued() -> bool:
        lengths = [await redis.xlen(keys.tasks("packing", p)) for p in by_partition]
        return all(lengths)

    await eventually(all_enqueued, what="a task in each of three partitions")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        worker = wpb_grpc.TaskWorkerStub(channel)
        poll = worker.PollTasks(
            wpb.PollTasksRequest(service="packing", worker_id="w1", max_in_flight=1)
        )
        seen: list[wpb.Task] = []
        for _ in by_partition:
            task = await read_task(poll)
            seen.append(task)
            done = await worker.CompleteTask(
                wpb.CompleteTaskRequest(task_id=task.task_id, lease=task.lease)
            )
            assert done.accepted
        poll.cancel()
    assert sorted(t.instance_id for t in seen) == sorted(by_partition.values())
    assert {t.attempt for t in seen} == {1}
    assert {int(t.task_id.split("/")[1]) for t in seen} == set(by_partition)
    for partition, instance_id in by_partition.items():
        assert await redis.xlen(keys.tasks("packing", partition)) == 0
        await wait_for_result(redis, instance_id, "pack#1")


@pytest.mark.parametrize("bad", ["", "Payments", "a/b"])
async def test_poll_tasks_rejects_a_bad_service(
    stub: Stub, sidecar: tuple[Sidecar, Stub], bad: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar[0].port}") as channel:
        call = wpb_grpc.TaskWorkerStub(channel).PollTasks(
            wpb.PollTasksRequest(service=bad, worker_id="w")
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
