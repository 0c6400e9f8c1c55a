"""AwaitInstance and WatchInstance against a real sidecar and Redis: waiting without polling."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis, RedisCluster

from okra_sidecar.api.waiting import InstanceWaiting
from okra_sidecar.errors import Reason
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.server import Sidecar
from tests.helpers import (
    Stub,
    assert_reason,
    command_calls,
    eventually,
    expect_rpc_error,
    to_python,
    value,
)
from tests.helpers import (
    change_subscribers as subscribers,
)

APPROVAL = "tests.approval.1.0.0"
FINAL = {pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED, pb.WORKFLOW_STATUS_CANCELLED}
# Bounds for the test only (a hung call fails the test instead of hanging it).
CALL_TIMEOUT_S = 20.0


async def await_instance(
    stub: Stub, request: pb.AwaitInstanceRequest, deadline_s: float = CALL_TIMEOUT_S
) -> pb.WorkflowInstance:
    return (await stub.AwaitInstance(request, timeout=deadline_s)).instance


async def watched(stream: Any) -> AsyncIterator[pb.WorkflowInstance]:
    """The instances a WatchInstance stream carries."""
    async for message in stream:
        yield message.instance


async def read_one(stream: Any) -> pb.WorkflowInstance | None:
    """The next instance of a WatchInstance stream, None at its end."""
    message = await stream.read()
    if message == grpc.aio.EOF:
        return None
    assert isinstance(message, pb.WatchInstanceResponse)
    return message.instance


async def start_waiting(stub: Stub) -> pb.WorkflowInstance:
    """An approval instance parked in its listen, as AwaitInstance returns it."""
    run = await stub.Run(pb.RunRequest(workflow_id=APPROVAL, input=value({"amount": 5})))
    return await start_waiting_id(stub, run.instance_id)


async def approve(stub: Stub, instance_id: str, by: str = "bo") -> None:
    await stub.Signal(
        pb.SignalRequest(instance_id=instance_id, signal="approve", payload=value({"by": by}))
    )


async def pubsub_clients(redis: Redis) -> list[dict[str, Any]]:
    """The pub/sub connections to the Redis: on a Cluster, those of every node."""
    if not isinstance(redis, RedisCluster):
        return list(await redis.client_list(_type="pubsub"))
    nodes = redis.get_nodes()
    replies = [await redis.client_list(_type="pubsub", target_nodes=node) for node in nodes]
    return [client for reply in replies for client in reply]


async def test_revision_grows_with_every_commit_and_cancel(stub: Stub) -> None:
    run = await stub.Run(pb.RunRequest(workflow_id=APPROVAL, input=value({"amount": 1})))
    created = await stub.GetStatus(pb.GetStatusRequest(instance_id=run.instance_id))
    assert created.revision >= 0
    waiting = await start_waiting_id(stub, run.instance_id)
    assert waiting.revision > created.revision or created.status == pb.WORKFLOW_STATUS_WAITING
    await stub.Cancel(pb.CancelRequest(instance_id=run.instance_id, reason="no"))
    cancelled = await stub.GetStatus(pb.GetStatusRequest(instance_id=run.instance_id))
    assert cancelled.status == pb.WORKFLOW_STATUS_CANCELLED
    assert cancelled.revision == waiting.revision + 1


async def start_waiting_id(stub: Stub, instance_id: str) -> pb.WorkflowInstance:
    return await await_instance(
        stub,
        pb.AwaitInstanceRequest(instance_id=instance_id, statuses=[pb.WORKFLOW_STATUS_WAITING]),
    )


async def test_await_returns_once_final_and_not_before(stub: Stub, redis: Redis) -> None:
    waiting = await start_waiting(stub)
    instance_id = waiting.instance_id
    call = asyncio.ensure_future(
        await_instance(stub, pb.AwaitInstanceRequest(instance_id=instance_id))
    )

    async def waited_on() -> bool:
        return await subscribers(redis, instance_id) == 1

    await eventually(waited_on, what="AwaitInstance subscribed")
    assert not call.done(), "AwaitInstance answered while the instance still waits"
    await approve(stub, instance_id)
    done = await call
    assert done.status == pb.WORKFLOW_STATUS_COMPLETED
    assert to_python(done.output) == {"amount": 5, "approvedBy": "bo"}
    assert done.revision > waiting.revision

    async def unsubscribed() -> bool:
        return await subscribers(redis, instance_id) == 0

    await eventually(unsubscribed, what="the channel left once nobody waits")


async def test_await_returns_on_a_change_since_the_revision(stub: Stub) -> None:
    waiting = await start_waiting(stub)
    request = pb.AwaitInstanceRequest(
        instance_id=waiting.instance_id,
        statuses=[pb.WORKFLOW_STATUS_COMPLETED],
        revision=waiting.revision - 1,
    )
    # Already past that revision: answered at once, with the instance as it is.
    now = await await_instance(stub, request)
    assert now.status == pb.WORKFLOW_STATUS_WAITING
    assert now.revision == waiting.revision
    request.revision = waiting.revision
    call = asyncio.ensure_future(await_instance(stub, request))
    await stub.Cancel(pb.CancelRequest(instance_id=waiting.instance_id, reason="changed"))
    changed = await call
    assert changed.revision == waiting.revision + 1
    assert changed.status == pb.WORKFLOW_STATUS_CANCELLED


async def test_await_answers_before_its_deadline_with_the_instance_as_it_is(stub: Stub) -> None:
    waiting = await start_waiting(stub)
    # A short deadline: the call answers in time, with the waiting instance, instead of
    # failing with DEADLINE_EXCEEDED; a client calls again.
    instance = await await_instance(
        stub, pb.AwaitInstanceRequest(instance_id=waiting.instance_id), deadline_s=0.5
    )
    assert instance.status == pb.WORKFLOW_STATUS_WAITING
    assert instance.revision == waiting.revision


async def test_await_of_a_final_instance_answers_at_once(stub: Stub) -> None:
    waiting = await start_waiting(stub)
    await approve(stub, waiting.instance_id)
    done = await await_instance(stub, pb.AwaitInstanceRequest(instance_id=waiting.instance_id))
    again = await await_instance(stub, pb.AwaitInstanceRequest(instance_id=waiting.instance_id))
    assert again == done


async def test_watch_streams_each_change_and_ends_after_the_final_one(stub: Stub) -> None:
    waiting = await start_waiting(stub)
    stream = stub.WatchInstance(
        pb.WatchInstanceRequest(instance_id=waiting.instance_id), timeout=CALL_TIMEOUT_S
    )
    seen: list[pb.WorkflowInstance] = []
    async for instance in watched(stream):
        seen.append(instance)
        if len(seen) == 1:
            assert instance == waiting
            await approve(stub, waiting.instance_id, by="al")
    assert seen[-1].status == pb.WORKFLOW_STATUS_COMPLETED
    assert to_python(seen[-1].output) == {"amount": 5, "approvedBy": "al"}
    revisions = [i.revision for i in seen]
    assert revisions == sorted(set(revisions)), revisions
    assert all(i.status not in FINAL for i in seen[:-1])
    assert await stream.code() == grpc.StatusCode.OK


async def test_watch_of_a_final_instance_sends_it_once(stub: Stub) -> None:
    waiting = await start_waiting(stub)
    await stub.Cancel(pb.CancelRequest(instance_id=waiting.instance_id, reason="r"))
    seen = [
        i
        async for i in watched(
            stub.WatchInstance(
                pb.WatchInstanceRequest(instance_id=waiting.instance_id), timeout=CALL_TIMEOUT_S
            )
        )
    ]
    assert [i.status for i in seen] == [pb.WORKFLOW_STATUS_CANCELLED]
    assert seen[0].cancel_reason == "r"


async def test_waiters_share_one_subscription_connection(
    sidecar: tuple[Sidecar, Stub], redis: Redis
) -> None:
    _, stub = sidecar
    instances = [await start_waiting(stub) for _ in range(3)]
    streams = [
        stub.WatchInstance(pb.WatchInstanceRequest(instance_id=i.instance_id)) for i in instances
    ]
    awaits = [
        asyncio.ensure_future(
            await_instance(stub, pb.AwaitInstanceRequest(instance_id=i.instance_id))
        )
        for i in instances
    ]
    for stream in streams:
        await read_one(stream)  # the current instance: the stream is subscribed

    async def all_subscribed() -> bool:
        counts = [await subscribers(redis, i.instance_id) for i in instances]
        return counts == [1, 1, 1]

    # One subscription per instance however many wait on it, all on one connection.
    await eventually(all_subscribed, what="one subscription per instance")
    # (The policy layer's own subscription is another connection, on one channel.)
    subs = [int(c["sub"]) for c in await pubsub_clients(redis)]
    assert max(subs) == 3 and subs.count(3) == 1, subs
    for stream in streams:
        stream.cancel()
    for instance in instances:
        await approve(stub, instance.instance_id)
    assert {(await a).status for a in awaits} == {pb.WORKFLOW_STATUS_COMPLETED}

    async def none_left() -> bool:
        return [await subscribers(redis, i.instance_id) for i in instances] == [0, 0, 0]

    await eventually(none_left, what="every channel left")


async def test_watch_rides_out_a_lost_subscription_connection(stub: Stub, redis: Redis) -> None:
    waiting = await start_waiting(stub)
    stream = stub.WatchInstance(
        pb.WatchInstanceRequest(instance_id=waiting.instance_id), timeout=CALL_TIMEOUT_S
    )
    assert await read_one(stream) == waiting
    killed = await redis.client_kill_filter(_type="pubsub")
    assert int(killed) >= 1  # the policy layer's subscription goes too
    await approve(stub, waiting.instance_id)
    # The feed subscribes again on a new connection and every waiter reads the instance
    # again, so a change announced while it was down is not missed.
    last = waiting
    while (message := await read_one(stream)) is not None:
        last = message
    assert last.status == pb.WORKFLOW_STATUS_COMPLETED
    again = await await_instance(stub, pb.AwaitInstanceRequest(instance_id=waiting.instance_id))
    assert again.status == pb.WORKFLOW_STATUS_COMPLETED


async def test_a_watch_of_a_missing_instance_subscribes_to_nothing(
    stub: Stub, redis: Redis
) -> None:
    missing = "00000000-0000-4000-8000-00000000abcd"
    stream = stub.WatchInstance(pb.WatchInstanceRequest(instance_id=missing))
    error = await expect_rpc_error(stream.read(), grpc.StatusCode.NOT_FOUND)
    assert_reason(error, Reason.INSTANCE_NOT_FOUND)

    async def unsubscribed() -> bool:
        return await subscribers(redis, missing) == 0

    await eventually(unsubscribed, what="the channel left after NOT_FOUND")


async def test_waiting_on_a_final_instance_subscribes_to_nothing(stub: Stub, redis: Redis) -> None:
    waiting = await start_waiting(stub)
    await approve(stub, waiting.instance_id)
    request = pb.AwaitInstanceRequest(instance_id=waiting.instance_id)
    done = await await_instance(stub, request)
    assert done.status == pb.WORKFLOW_STATUS_COMPLETED
    before = await command_calls(redis, "subscribe")
    # Answered from one read: nothing is left to wait for.
    assert await await_instance(stub, request) == done
    stream = stub.WatchInstance(pb.WatchInstanceRequest(instance_id=waiting.instance_id))
    assert [instance async for instance in watched(stream)] == [done]
    assert await command_calls(redis, "subscribe") == before


async def test_a_watch_dropped_unfinished_leaves_its_channel(
    sidecar: tuple[Sidecar, Stub], redis: Redis
) -> None:
    # What an async generator's finalizer would do: a stream its caller stops reading (and
    # drops) without cancelling it still leaves the feed's channel.
    running, stub = sidecar
    waiting = await start_waiting(stub)
    watcher = InstanceWaiting(store=running.store, changes=running.store.changes)
    stream = watcher.watch(waiting.instance_id, lambda record: record.revision)
    assert await anext(stream) == waiting.revision

    async def subscribed() -> bool:
        return await subscribers(redis, waiting.instance_id) == 1

    await eventually(subscribed, what="the watch subscribed")
    del stream
    gc.collect()

    async def left() -> bool:
        return await subscribers(redis, waiting.instance_id) == 0

    await eventually(left, what="the dropped watch's channel left")
    # The instance goes on and a new watch still sees it end.
    await approve(stub, waiting.instance_id)
    statuses = [r async for r in watcher.watch(waiting.instance_id, lambda r: r.status)]
    assert statuses[-1] is InstanceStatus.COMPLETED
