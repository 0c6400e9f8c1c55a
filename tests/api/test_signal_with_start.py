"""SignalWithStart and Count against a real sidecar and Redis."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import timestamp_pb2
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.errors import Reason
from tests.helpers import (
    KEYS,
    Stub,
    assert_reason,
    command_calls,
    expect_rpc_error,
    held,
    make_settings,
    redis_fingerprint,
    running_sidecar,
    to_python,
    value,
    with_host,
)

APPROVAL = "tests.approval.1.0.0"
STEPS = "tests.steps.1.0.0"
CALL_TIMEOUT_S = 20.0
FINAL = (pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED, pb.WORKFLOW_STATUS_CANCELLED)


def signal_with_start(
    request_id: str,
    signal: str = "approve",
    payload: object = None,
    signal_id: str = "",
    **run: object,
) -> pb.SignalWithStartRequest:
    request = pb.SignalWithStartRequest(
        run=pb.RunRequest(
            workflow_id=APPROVAL,
            input=value({"amount": 7}),
            request_id=request_id,
            **run,  # type: ignore[arg-type]
        ),
        signal=signal,
        signal_id=signal_id,
    )
    if payload is not None:
        request.payload.CopyFrom(value(payload))
    return request


async def final(stub: Stub, instance_id: str) -> pb.WorkflowInstance:
    reply = await stub.AwaitInstance(
        pb.AwaitInstanceRequest(instance_id=instance_id), timeout=CALL_TIMEOUT_S
    )
    return reply.instance


async def test_signal_with_start_starts_then_signals(stub: Stub) -> None:
    reply = await stub.SignalWithStart(signal_with_start("order-1", payload={"by": "ana"}))
    assert reply.started and not reply.duplicate and reply.signal_id
    run = await stub.Run(
        pb.RunRequest(workflow_id=APPROVAL, input=value({"amount": 7}), request_id="order-1")
    )
    assert run.instance_id == reply.instance_id  # the instance Run names by that request id
    done = await final(stub, reply.instance_id)
    assert done.status == pb.WORKFLOW_STATUS_COMPLETED
    assert to_python(done.output) == {"amount": 7, "approvedBy": "ana"}
    # Finished: the request id names it still, and a finished instance takes no signal.
    error = await expect_rpc_error(
        stub.SignalWithStart(signal_with_start("order-1", payload={"by": "bo"})),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert_reason(error, Reason.INSTANCE_ALREADY_FINISHED)


async def test_signal_with_start_signals_an_instance_that_exists(stub: Stub) -> None:
    run = await stub.Run(
        pb.RunRequest(workflow_id=APPROVAL, input=value({"amount": 3}), request_id="order-2")
    )
    await stub.AwaitInstance(
        pb.AwaitInstanceRequest(instance_id=run.instance_id, statuses=[pb.WORKFLOW_STATUS_WAITING]),
        timeout=CALL_TIMEOUT_S,
    )
    reply = await stub.SignalWithStart(
        signal_with_start("order-2", payload={"by": "cy"}, signal_id="s-1")
    )
    assert (reply.instance_id, reply.started, reply.signal_id) == (run.instance_id, False, "s-1")
    done = await final(stub, run.instance_id)
    # The instance kept its own input: the Run inside SignalWithStart did not replace it.
    assert to_python(done.output) == {"amount": 3, "approvedBy": "cy"}


async def test_racing_calls_start_one_instance_and_deliver_every_signal(
    stub: Stub, redis: Redis
) -> None:
    # `note` is not what the instance listens for, so every signal stays in its inbox.
    replies = await asyncio.gather(
        *(
            stub.SignalWithStart(signal_with_start("order-3", signal="note", signal_id=f"n-{i}"))
            for i in range(12)
        )
    )
    assert len({r.instance_id for r in replies}) == 1
    assert sum(r.started for r in replies) == 1
    assert not any(r.duplicate for r in replies)
    instance_id = replies[0].instance_id
    assert await redis.scard(KEYS.signal_ids(instance_id)) == 12
    assert await held(redis) == 1  # one place, however many calls raced for it
    count = await stub.Count(pb.CountRequest(workflow_id=APPROVAL))
    assert count.count == 1


async def test_a_signal_after_signal_with_start_reads_nothing(
    stub: Stub, redis: Redis, redis_url: str
) -> None:
    # The sidecar remembers the workflow of an instance SignalWithStart started or signalled,
    # as it does after Run: a Signal then sends its one script and reads nothing before (an
    # HGET of the workflow). The repeated signal id makes it a duplicate: nothing is written,
    # so no turn follows whose commands would count too.
    first = pb.SignalWithStartRequest(
        run=pb.RunRequest(workflow_id="tests.forever.1.0.0", request_id="sws-remembered"),
        signal="poke",
        signal_id="poke-1",
    )
    started = await stub.SignalWithStart(first)
    assert started.started
    again = pb.SignalRequest(instance_id=started.instance_id, signal="poke", signal_id="poke-1")

    async def reads_of(signalling: Stub) -> int:
        before = await command_calls(redis, "hget")
        reply = await signalling.Signal(again)
        assert reply.duplicate and reply.signal_id == "poke-1"
        return await command_calls(redis, "hget") - before

    assert await reads_of(stub) == 0
    # Another sidecar has not seen the instance: it reads the workflow first.
    async with running_sidecar(make_settings(redis_url)) as (_, other):
        assert await reads_of(other) == 1
        assert await reads_of(other) == 0


async def test_a_limit_refuses_the_start_and_delivers_nothing(redis: Redis, redis_url: str) -> None:
    settings = with_host(make_settings(redis_url), max_concurrent_instances=1)
    async with running_sidecar(settings) as (_, stub):
        first = await stub.Run(pb.RunRequest(workflow_id=APPROVAL, input=value({"amount": 1})))
        await stub.AwaitInstance(
            pb.AwaitInstanceRequest(
                instance_id=first.instance_id, statuses=[pb.WORKFLOW_STATUS_WAITING]
            ),
            timeout=CALL_TIMEOUT_S,
        )
        before = await redis_fingerprint(redis)
        error = await expect_rpc_error(
            stub.SignalWithStart(signal_with_start("order-4")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert_reason(error, Reason.INSTANCE_LIMIT_REACHED)
        assert await redis_fingerprint(redis) == before


def ts(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


async def all_pages(stub: Stub, request: pb.QueryRequest) -> list[pb.WorkflowInstance]:
    found: list[pb.WorkflowInstance] = []
    while True:
        page = await stub.Query(request)
        found.extend(page.instances)
        if not page.cursor:
            return found
        request.cursor = page.cursor


async def test_count_matches_every_page_of_query_across_partitions(stub: Stub) -> None:
    started = []
    for n in range(30):
        workflow = APPROVAL if n % 3 else STEPS
        data = {"amount": n} if workflow == APPROVAL else {"n": n}
        tags = {"team": "a" if n % 2 else "b", **({"vip": "yes"} if n % 5 == 0 else {})}
        run = await stub.Run(
            pb.RunRequest(workflow_id=workflow, input=value(data), tags=tags, correlation_id="c")
        )
        started.append(run.instance_id)
    for instance_id in (started[1], started[2], started[4], started[5]):  # approvals
        await stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="count"))
    settled = [pb.WORKFLOW_STATUS_WAITING, *FINAL]
    for instance_id in started:  # no status moves while the counts are compared
        await stub.AwaitInstance(
            pb.AwaitInstanceRequest(instance_id=instance_id, statuses=settled),
            timeout=CALL_TIMEOUT_S,
        )
    middle = (await stub.GetStatus(pb.GetStatusRequest(instance_id=started[15]))).start_time
    filters = [
        {},
        {"workflow_id": APPROVAL},
        {"status": [pb.WORKFLOW_STATUS_CANCELLED]},
        {"status": [pb.WORKFLOW_STATUS_CANCELLED, pb.WORKFLOW_STATUS_WAITING]},
        {"tags": {"team": "a"}},
        {"tags": {"team": "b", "vip": "yes"}},
        {"workflow_id": APPROVAL, "tags": {"team": "a"}, "correlation_id": "c"},
        {"started_before": middle},
        {"started_after": middle, "tags": {"team": "b"}},
        {"correlation_id": "nobody"},
    ]
    for fields in filters:
        listed = await all_pages(stub, pb.QueryRequest(limit=7, **fields))  # type: ignore[arg-type]
        counted = await stub.Count(pb.CountRequest(**fields))  # type: ignore[arg-type]
        assert counted.count == len(listed), fields
    assert (await stub.Count(pb.CountRequest())).count == 30


async def test_count_over_a_time_range(stub: Stub) -> None:
    assert (await stub.Count(pb.CountRequest(started_after=ts(1), started_before=ts(2)))).count == 0
