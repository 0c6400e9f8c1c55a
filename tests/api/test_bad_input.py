"""Every rejection: the right status, a message naming the field and rule, and nothing written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import timestamp_pb2
from redis.asyncio import Redis

from okra_sidecar.gen.workflow.v1 import workflow_pb2 as pb
from tests.helpers import (
    Stub,
    bad_request_fields,
    expect_rpc_error,
    redis_fingerprint,
    value,
    wait_for_status,
)

MISSING_ID = "00000000-0000-4000-8000-000000000000"
BIG = "x" * (1024 * 1024 + 1)
Call = Callable[[Stub], Awaitable[object]]


@dataclass(frozen=True)
class Case:
    name: str
    call: Call
    code: grpc.StatusCode
    message: str
    fields: tuple[str, ...] = ()


def ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


INVALID = grpc.StatusCode.INVALID_ARGUMENT
CASES = [
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
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_rejection(case: Case, stub: Stub, redis: Redis) -> None:
    before = await redis_fingerprint(redis)
    error = await expect_rpc_error(case.call(stub), case.code)
    assert case.message in (error.details() or "")
    assert bad_request_fields(error) == list(case.fields)
    assert await redis_fingerprint(redis) == before


async def test_rejections_on_existing_instances_write_nothing(stub: Stub, redis: Redis) -> None:
    started = await stub.Run(pb.RunRequest(workflow_id="tests.order.1.0.0", input=value({})))
    instance_id = started.instance_id
    await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_FAILED})
    before = await redis_fingerprint(redis)
    for call in (
        stub.Signal(pb.SignalRequest(instance_id=instance_id, signal="go")),
        stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="late")),
    ):
        error = await expect_rpc_error(call, grpc.StatusCode.FAILED_PRECONDITION)
        assert "already failed" in (error.details() or "")
    assert await redis_fingerprint(redis) == before
