"""Every rejection: the right status, a message naming the field and rule, and nothing written."""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import TypeVar

import grpc
import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from tests.api.rejections import BIG, INVALID, LONG, Case, assert_rejected, tags, ts
from tests.helpers import (
    KEYS,
    Stub,
    eventually,
    expect_rpc_error,
    redis_fingerprint,
    value,
    wait_for_status,
)

MISSING_ID = "00000000-0000-4000-8000-000000000000"
T = TypeVar("T")


CASES: list[Case[Stub]] = [
    Case(
        "run: no workflow id",
        lambda s: s.Run(pb.RunRequest()),
        INVALID,
        "workflow_id: is required",
        ("workflow_id",),
    ),
    Case(
        "run: malformed id",
        lambda s: s.Run(pb.RunRequest(workflow_id="Orders/Process")),
        INVALID,
        "is not a workflow id",
        ("workflow_id",),
    ),
    Case(
        "run: bad version",
        lambda s: s.Run(pb.RunRequest(workflow_id="tests.steps.1.0")),
        INVALID,
        "is not a workflow id",
        ("workflow_id",),
    ),
    Case(
        "run: unknown workflow",
        lambda s: s.Run(pb.RunRequest(workflow_id="tests.nope.1.0.0")),
        grpc.StatusCode.NOT_FOUND,
        "workflow tests.nope.1.0.0 is not registered",
    ),
    Case(
        "run: unknown version",
        lambda s: s.Run(pb.RunRequest(workflow_id="tests.steps.9.9.9")),
        grpc.StatusCode.NOT_FOUND,
        "is not registered",
    ),
    Case(
        "run: schema violation",
        lambda s: s.Run(
            pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": -5}))
        ),
        INVALID,
        "input.amount does not match the workflow's input schema",
        ("input.amount",),
    ),
    Case(
        "run: missing required input",
        lambda s: s.Run(pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({}))),
        INVALID,
        "'amount' is a required property",
        ("input",),
    ),
    Case(
        "run: input over 1 MiB",
        lambda s: s.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"x": BIG}))),
        INVALID,
        "the limit is 1048576 bytes",
        ("input",),
    ),
    Case(
        "run: empty tag name",
        lambda s: s.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", tags={"": "x"})),
        INVALID,
        "a tag name may not be empty",
        ("tags",),
    ),
    Case(
        "run: correlation id too long",
        lambda s: s.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", correlation_id="c" * 300)),
        INVALID,
        "at most 256",
        ("correlation_id",),
    ),
    Case(
        "run: itself",
        lambda s: s.Run(
            pb.RunRequest(workflow_id="tests.steps.1.0.0"),
            metadata=(("okra-caller-workflow", "tests.steps.1.0.0"),),
        ),
        INVALID,
        "may not run itself",
        ("workflow_id",),
    ),
    Case(
        "signal: bad instance id",
        lambda s: s.Signal(pb.SignalRequest(instance_id="42", signal="go")),
        INVALID,
        "is not an instance id",
        ("instance_id",),
    ),
    Case(
        "signal: bad name",
        lambda s: s.Signal(pb.SignalRequest(instance_id=MISSING_ID, signal="go now!")),
        INVALID,
        "is not a signal name",
        ("signal",),
    ),
    Case(
        "signal: dots are not allowed",
        lambda s: s.Signal(pb.SignalRequest(instance_id=MISSING_ID, signal="order.approved")),
        INVALID,
        "use 1 to 128 letters, digits, _ and -",
        ("signal",),
    ),
    Case(
        "signal: empty name",
        lambda s: s.Signal(pb.SignalRequest(instance_id=MISSING_ID)),
        INVALID,
        "is not a signal name",
        ("signal",),
    ),
    Case(
        "signal: payload over 1 MiB",
        lambda s: s.Signal(
            pb.SignalRequest(instance_id=MISSING_ID, signal="go", payload=value(BIG))
        ),
        INVALID,
        "the limit is 1048576 bytes",
        ("payload",),
    ),
    Case(
        "signal: unknown instance",
        lambda s: s.Signal(pb.SignalRequest(instance_id=MISSING_ID, signal="go")),
        grpc.StatusCode.NOT_FOUND,
        f"instance {MISSING_ID} does not exist",
    ),
    Case(
        "get status: bad id",
        lambda s: s.GetStatus(pb.GetStatusRequest(instance_id="../etc")),
        INVALID,
        "is not an instance id",
        ("instance_id",),
    ),
    Case(
        "get status: unknown",
        lambda s: s.GetStatus(pb.GetStatusRequest(instance_id=MISSING_ID)),
        grpc.StatusCode.NOT_FOUND,
        "does not exist",
    ),
    Case(
        "query: limit over 1000",
        lambda s: s.Query(pb.QueryRequest(limit=1001)),
        INVALID,
        "must be between 1 and 1000",
        ("limit",),
    ),
    Case(
        "query: negative limit",
        lambda s: s.Query(pb.QueryRequest(limit=-1)),
        INVALID,
        "must be between 1 and 1000",
        ("limit",),
    ),
    Case(
        "query: unspecified status",
        lambda s: s.Query(pb.QueryRequest(status=[pb.WORKFLOW_STATUS_UNSPECIFIED])),
        INVALID,
        "WORKFLOW_STATUS_UNSPECIFIED",
        ("status[0]",),
    ),
    Case(
        "query: bad workflow id",
        lambda s: s.Query(pb.QueryRequest(workflow_id="no dots")),
        INVALID,
        "is not a workflow id",
        ("workflow_id",),
    ),
    Case(
        "query: garbage cursor",
        lambda s: s.Query(pb.QueryRequest(cursor="not-a-cursor")),
        INVALID,
        "is not a cursor returned by Query",
        ("cursor",),
    ),
    Case(
        "query: empty time range",
        lambda s: s.Query(pb.QueryRequest(started_after=ts(200), started_before=ts(100))),
        INVALID,
        "must be earlier than started_before",
        ("started_after",),
    ),
    Case(
        "cancel: bad id",
        lambda s: s.Cancel(pb.CancelRequest(instance_id="")),
        INVALID,
        "is not an instance id",
        ("instance_id",),
    ),
    Case(
        "cancel: reason too long",
        lambda s: s.Cancel(pb.CancelRequest(instance_id=MISSING_ID, reason="r" * 2000)),
        INVALID,
        "at most 1024",
        ("reason",),
    ),
    Case(
        "cancel: unknown",
        lambda s: s.Cancel(pb.CancelRequest(instance_id=MISSING_ID)),
        grpc.StatusCode.NOT_FOUND,
        "does not exist",
    ),
    Case(
        "run: request id too long",
        lambda s: s.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", request_id=LONG)),
        INVALID,
        "request_id: is 257 characters; at most 256",
        ("request_id",),
    ),
    Case(
        "run: too many tags",
        lambda s: s.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", tags=tags(65))),
        INVALID,
        "has 65 tags; at most 64",
        ("tags",),
    ),
    Case(
        "run: tag value too long",
        lambda s: s.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", tags={"t": LONG})),
        INVALID,
        "at most 256",
        ("tags.t",),
    ),
    Case(
        "signal: signal id too long",
        lambda s: s.Signal(pb.SignalRequest(instance_id=MISSING_ID, signal="go", signal_id=LONG)),
        INVALID,
        "signal_id: is 257 characters; at most 256",
        ("signal_id",),
    ),
    Case(
        "query: too many tags",
        lambda s: s.Query(pb.QueryRequest(tags=tags(65))),
        INVALID,
        "has 65 tags; at most 64",
        ("tags",),
    ),
    Case(
        "query: empty tag name",
        lambda s: s.Query(pb.QueryRequest(tags={"": "x"})),
        INVALID,
        "a tag name may not be empty",
        ("tags",),
    ),
    Case(
        "query: correlation id too long",
        lambda s: s.Query(pb.QueryRequest(correlation_id=LONG)),
        INVALID,
        "at most 256",
        ("correlation_id",),
    ),
    Case(
        "emit: no type",
        lambda s: s.Emit(pb.EmitRequest(source="tests")),
        INVALID,
        "type: is required",
        ("type",),
    ),
    Case(
        "emit: reserved type",
        lambda s: s.Emit(pb.EmitRequest(type="io.okra.workflow.completed", source="tests")),
        INVALID,
        "types starting 'io.okra.' are the sidecar's own",
        ("type",),
    ),
    Case(
        "emit: no source",
        lambda s: s.Emit(pb.EmitRequest(type="order.placed")),
        INVALID,
        "source: is required",
        ("source",),
    ),
    Case(
        "emit: type too long",
        lambda s: s.Emit(pb.EmitRequest(type=LONG, source="tests")),
        INVALID,
        "at most 256",
        ("type",),
    ),
    Case(
        "emit: id too long",
        lambda s: s.Emit(pb.EmitRequest(type="order.placed", source="tests", id=LONG)),
        INVALID,
        "at most 256",
        ("id",),
    ),
    Case(
        "emit: subject too long",
        lambda s: s.Emit(pb.EmitRequest(type="order.placed", source="tests", subject=LONG)),
        INVALID,
        "at most 256",
        ("subject",),
    ),
    Case(
        "emit: extension name not lowercase",
        lambda s: s.Emit(
            pb.EmitRequest(type="order.placed", source="tests", extensions={"Tenant": "a"})
        ),
        INVALID,
        "must be 1-20 lowercase letters or digits, not a core name",
        ("extensions.Tenant",),
    ),
    Case(
        "emit: extension with a core name",
        lambda s: s.Emit(
            pb.EmitRequest(type="order.placed", source="tests", extensions={"subject": "a"})
        ),
        INVALID,
        "not a core name",
        ("extensions.subject",),
    ),
    Case(
        "emit: data over 1 MiB",
        lambda s: s.Emit(pb.EmitRequest(type="order.placed", source="tests", data=value(BIG))),
        INVALID,
        "the limit is 1048576 bytes",
        ("data",),
    ),
    Case(
        "get history: bad id",
        lambda s: s.GetHistory(pb.GetHistoryRequest(instance_id="not-a-uuid")),
        INVALID,
        "is not an instance id",
        ("instance_id",),
    ),
    Case(
        "get history: limit over 1000",
        lambda s: s.GetHistory(pb.GetHistoryRequest(instance_id=MISSING_ID, limit=1001)),
        INVALID,
        "must be between 1 and 1000",
        ("limit",),
    ),
    Case(
        "get history: negative limit",
        lambda s: s.GetHistory(pb.GetHistoryRequest(instance_id=MISSING_ID, limit=-1)),
        INVALID,
        "must be between 1 and 1000",
        ("limit",),
    ),
    Case(
        "get history: unknown instance",
        lambda s: s.GetHistory(pb.GetHistoryRequest(instance_id=MISSING_ID)),
        grpc.StatusCode.NOT_FOUND,
        f"instance {MISSING_ID} does not exist",
    ),
    Case(
        "await instance: bad id",
        lambda s: s.AwaitInstance(pb.AwaitInstanceRequest(instance_id="42")),
        INVALID,
        "is not an instance id",
        ("instance_id",),
    ),
    Case(
        "await instance: unspecified status",
        lambda s: s.AwaitInstance(
            pb.AwaitInstanceRequest(
                instance_id=MISSING_ID,
                statuses=[pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_UNSPECIFIED],
            )
        ),
        INVALID,
        "WORKFLOW_STATUS_UNSPECIFIED",
        ("statuses[1]",),
    ),
    Case(
        "await instance: unknown status number",
        lambda s: s.AwaitInstance(
            pb.AwaitInstanceRequest(
                instance_id=MISSING_ID,
                statuses=[99],  # type: ignore[list-item]  # what a newer client could send
            )
        ),
        INVALID,
        "must be a WorkflowStatus",
        ("statuses[0]",),
    ),
    Case(
        "await instance: negative revision",
        lambda s: s.AwaitInstance(pb.AwaitInstanceRequest(instance_id=MISSING_ID, revision=-1)),
        INVALID,
        "a revision is 0 or more",
        ("revision",),
    ),
    Case(
        "await instance: unknown instance",
        lambda s: s.AwaitInstance(pb.AwaitInstanceRequest(instance_id=MISSING_ID)),
        grpc.StatusCode.NOT_FOUND,
        f"instance {MISSING_ID} does not exist",
    ),
    Case(
        "signal with start: no request id",
        lambda s: s.SignalWithStart(
            pb.SignalWithStartRequest(
                run=pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": 1})),
                signal="approve",
            )
        ),
        INVALID,
        "run.request_id: is required",
        ("run.request_id",),
    ),
    Case(
        "signal with start: bad workflow id",
        lambda s: s.SignalWithStart(
            pb.SignalWithStartRequest(
                run=pb.RunRequest(workflow_id="no dots", request_id="r"), signal="approve"
            )
        ),
        INVALID,
        "is not a workflow id",
        ("run.workflow_id",),
    ),
    Case(
        "signal with start: input against the schema",
        lambda s: s.SignalWithStart(
            pb.SignalWithStartRequest(
                run=pb.RunRequest(
                    workflow_id="tests.approval.1.0.0",
                    input=value({"amount": -1}),
                    request_id="r",
                ),
                signal="approve",
            )
        ),
        INVALID,
        "run.",
        ("run.input.amount",),
    ),
    Case(
        "signal with start: bad signal name",
        lambda s: s.SignalWithStart(
            pb.SignalWithStartRequest(
                run=pb.RunRequest(
                    workflow_id="tests.approval.1.0.0", input=value({"amount": 1}), request_id="r"
                ),
                signal="go now!",
            )
        ),
        INVALID,
        "is not a signal name",
        ("signal",),
    ),
    Case(
        "signal with start: unknown workflow",
        lambda s: s.SignalWithStart(
            pb.SignalWithStartRequest(
                run=pb.RunRequest(workflow_id="tests.nope.1.0.0", request_id="r"), signal="go"
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "tests.nope.1.0.0",
    ),
    Case(
        "count: unspecified status",
        lambda s: s.Count(pb.CountRequest(status=[pb.WORKFLOW_STATUS_UNSPECIFIED])),
        INVALID,
        "WORKFLOW_STATUS_UNSPECIFIED",
        ("status[0]",),
    ),
    Case(
        "count: bad workflow id",
        lambda s: s.Count(pb.CountRequest(workflow_id="no dots")),
        INVALID,
        "is not a workflow id",
        ("workflow_id",),
    ),
    Case(
        "count: empty time range",
        lambda s: s.Count(pb.CountRequest(started_after=ts(200), started_before=ts(100))),
        INVALID,
        "must be earlier than started_before",
        ("started_after",),
    ),
    Case(
        "watch instance: bad id",
        lambda s: first_message(s.WatchInstance(pb.WatchInstanceRequest(instance_id="../etc"))),
        INVALID,
        "is not an instance id",
        ("instance_id",),
    ),
    Case(
        "watch instance: unknown instance",
        lambda s: first_message(s.WatchInstance(pb.WatchInstanceRequest(instance_id=MISSING_ID))),
        grpc.StatusCode.NOT_FOUND,
        f"instance {MISSING_ID} does not exist",
    ),
]


async def first_message(stream: AsyncIterable[T]) -> T:
    """The first message of a server stream (it fails as the stream does)."""
    async for message in stream:
        return message
    raise AssertionError("the stream ended without a message")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_rejection(case: Case[Stub], stub: Stub, redis: Redis) -> None:
    await assert_rejected(case, stub, redis)


async def test_rejections_on_existing_instances_write_nothing(stub: Stub, redis: Redis) -> None:
    started = await stub.Run(pb.RunRequest(workflow_id="tests.order.1.0.0", input=value({})))
    instance_id = started.instance_id
    await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_FAILED})

    # The finished instance's place is given back by its final commit (on a Cluster through the
    # outbox, just after the status).
    async def released() -> bool:
        return await redis.zscore(KEYS.limit_active(KEYS.scope), instance_id) is None

    await eventually(released, what="the instance's place given back")
    before = await redis_fingerprint(redis)
    for call in (
        stub.Signal(pb.SignalRequest(instance_id=instance_id, signal="go")),
        stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="late")),
    ):
        error = await expect_rpc_error(call, grpc.StatusCode.FAILED_PRECONDITION)
        assert "already failed" in (error.details() or "")
    assert await redis_fingerprint(redis) == before
