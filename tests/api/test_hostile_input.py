"""Hostile requests answer INVALID_ARGUMENT with a BadRequest detail, and write nothing."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2, timestamp_pb2
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.api.decoding import MAX_REQUEST_BYTES
from okra_sidecar.errors import Reason
from tests.helpers import (
    assert_reason,
    bad_request_fields,
    expect_rpc_error,
    redis_fingerprint,
    value,
    wait_for_status,
)
from tests.policy.support import ADMIN, Policed, policed_sidecar, policy_settings

MISSING_ID = "00000000-0000-4000-8000-000000000000"
WORKFLOW = "user.onboarding.1.0.0"
YEAR_10000_S = 253402300800
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class Stubs:
    policed: Policed
    schedules: Any
    worker: Any
    channel: grpc.aio.Channel
    instance_id: str  # waiting for a signal: nothing changes in Redis unless a call writes


@pytest_asyncio.fixture
async def stubs(redis: Redis, redis_url: str) -> AsyncIterator[Stubs]:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{policed.sidecar.port}")
        started = await policed.stub.Run(pb.RunRequest(workflow_id=WORKFLOW))
        await wait_for_status(policed.stub, started.instance_id, {pb.WORKFLOW_STATUS_WAITING})
        try:
            yield Stubs(
                policed,
                spb_grpc.ScheduleHostAPIStub(channel),
                wpb_grpc.TaskWorkerStub(channel),
                channel,
                started.instance_id,
            )
        finally:
            await channel.close()


def nested(depth: int) -> Any:
    """`depth` arrays, one inside the other."""
    data: Any = "x"
    for _ in range(depth):
        data = [data]
    return data


def at(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def trigger(start_s: int) -> spb.TriggerWorkflowRequest:
    return spb.TriggerWorkflowRequest(
        workflow_id=WORKFLOW, cron_expression="* * * * *", start_time=at(start_s)
    )


def amount(number: float) -> struct_pb2.Value:
    """{"order": {"amount": number}}, built with Struct.update: ParseDict refuses NaN."""
    built = struct_pb2.Value()
    built.struct_value.update({"order": {"amount": number}})
    return built


Call = Callable[[Stubs], Awaitable[object]]
CASES: list[tuple[str, Call, str]] = [
    ("trigger at -2^62 s", lambda s: s.schedules.TriggerWorkflow(trigger(-(2**62))), "start_time"),
    (
        "trigger in year 10000",
        lambda s: s.schedules.TriggerWorkflow(trigger(YEAR_10000_S)),
        "start_time",
    ),
    (
        "emit in year 10000",
        lambda s: s.policed.stub.Emit(
            pb.EmitRequest(type="a.b", source="x", time=at(YEAR_10000_S))
        ),
        "time",
    ),
    (
        "emit at 2^40 s",
        lambda s: s.policed.stub.Emit(pb.EmitRequest(type="a.b", source="x", time=at(2**40))),
        "time",
    ),
    (
        "query from year 10000",
        lambda s: s.policed.stub.Query(pb.QueryRequest(started_after=at(YEAR_10000_S))),
        "started_after",
    ),
    (
        "history cursor past uint64",
        lambda s: s.policed.stub.GetHistory(
            pb.GetHistoryRequest(instance_id=s.instance_id, cursor="99999999999999999999-0")
        ),
        "cursor",
    ),
    (
        "history cursor of Arabic digits",
        lambda s: s.policed.stub.GetHistory(
            pb.GetHistoryRequest(instance_id=s.instance_id, cursor="\u0661-\u0661")
        ),
        "cursor",
    ),
    (
        "history cursor at the last id",
        lambda s: s.policed.stub.GetHistory(
            pb.GetHistoryRequest(
                instance_id=s.instance_id, cursor="18446744073709551615-18446744073709551615"
            )
        ),
        "cursor",
    ),
    (
        "complete a task id past uint64",
        lambda s: s.worker.CompleteTask(
            wpb.CompleteTaskRequest(task_id="fz/0/99999999999999999999-1")
        ),
        "task_id",
    ),
    (
        "fail a task id past uint64",
        lambda s: s.worker.FailTask(wpb.FailTaskRequest(task_id="fz/0/99999999999999999999-1")),
        "task_id",
    ),
    (
        "audit cursor past uint64",
        lambda s: s.policed.admin.ListAuditRecords(
            admin_pb.ListAuditRecordsRequest(cursor="99999999999999999999-0"), metadata=ADMIN
        ),
        "cursor",
    ),
    (
        "audit cursor at the first id",
        lambda s: s.policed.admin.ListAuditRecords(
            admin_pb.ListAuditRecordsRequest(cursor="0-0"), metadata=ADMIN
        ),
        "cursor",
    ),
    (
        "policies as 5,000-deep YAML",
        lambda s: s.policed.admin.SetPolicies(
            admin_pb.SetPoliciesRequest(text="[" * 5000 + "]" * 5000), metadata=ADMIN
        ),
        "SetPolicies",
    ),
    (
        "policies as a YAML alias bomb",
        lambda s: s.policed.admin.SetPolicies(
            admin_pb.SetPoliciesRequest(text=alias_bomb()), metadata=ADMIN
        ),
        "SetPolicies",
    ),
    (
        "a condition with 1,000 parentheses",
        lambda s: s.policed.admin.SetPolicies(
            admin_pb.SetPoliciesRequest(
                text='{"policy.workflow.run.condition": "' + "(" * 1000 + "true" + ")" * 1000 + '"}'
            ),
            metadata=ADMIN,
        ),
        "policy.workflow.run.condition",
    ),
    (
        "run with input 33 deep",
        lambda s: s.policed.stub.Run(pb.RunRequest(workflow_id=WORKFLOW, input=value(nested(33)))),
        "input",
    ),
    (
        "signal with a payload 33 deep",
        lambda s: s.policed.stub.Signal(
            pb.SignalRequest(instance_id=s.instance_id, signal="go", payload=value(nested(33)))
        ),
        "payload",
    ),
    (
        "run with NaN in its input",
        lambda s: s.policed.stub.Run(pb.RunRequest(workflow_id=WORKFLOW, input=amount(math.nan))),
        "input.order.amount",
    ),
    (
        "run with Infinity in its input",
        lambda s: s.policed.stub.Run(pb.RunRequest(workflow_id=WORKFLOW, input=amount(math.inf))),
        "input.order.amount",
    ),
    (
        "signal with NaN in its payload",
        lambda s: s.policed.stub.Signal(
            pb.SignalRequest(instance_id=s.instance_id, signal="go", payload=amount(math.nan))
        ),
        "payload.order.amount",
    ),
    (
        "signal-with-start with -Infinity in its run's input",
        lambda s: s.policed.stub.SignalWithStart(
            pb.SignalWithStartRequest(
                run=pb.RunRequest(workflow_id=WORKFLOW, request_id="r1", input=amount(-math.inf)),
                signal="go",
            )
        ),
        "run.input.order.amount",
    ),
    (
        "complete a task with NaN in its result",
        lambda s: s.worker.CompleteTask(
            wpb.CompleteTaskRequest(task_id="fz/0/1-1", result=amount(math.nan))
        ),
        "result.order.amount",
    ),
    (
        "instance id with a trailing newline",
        lambda s: s.policed.stub.GetStatus(pb.GetStatusRequest(instance_id=MISSING_ID + "\n")),
        "instance_id",
    ),
    (
        "workflow id with a trailing newline",
        lambda s: s.policed.stub.Run(pb.RunRequest(workflow_id=WORKFLOW + "\n")),
        "workflow_id",
    ),
]


def alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes whose aliases expand to 10^(levels + 1) strings."""
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for level in range(levels):
        name, previous = chr(98 + level), chr(97 + level)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("name", "call", "field"), CASES, ids=[c[0] for c in CASES])
async def test_hostile_request_is_invalid_argument(
    name: str, call: Call, field: str, stubs: Stubs, redis: Redis
) -> None:
    await stubs.policed.admin.ListAuditRecords(admin_pb.ListAuditRecordsRequest(), metadata=ADMIN)
    before = await redis_fingerprint(redis)
    error = await expect_rpc_error(call(stubs), INVALID)
    assert field in bad_request_fields(error)
    assert await redis_fingerprint(redis) == before


async def test_heartbeat_with_a_lease_no_poll_handed_out_is_refused(stubs: Stubs) -> None:
    request = wpb.HeartbeatRequest(worker_id="w1", task_ids=["nostream/0/1-1"], leases=["w1.AAAA"])
    error = await expect_rpc_error(
        stubs.worker.Heartbeat(request), grpc.StatusCode.PERMISSION_DENIED
    )
    assert "lease" in (error.details() or "")


async def test_input_at_the_depth_limit_is_readable_back(stubs: Stubs) -> None:
    stub = stubs.policed.stub
    started = await stub.Run(pb.RunRequest(workflow_id=WORKFLOW, input=value(nested(32))))
    page = await stub.Query(pb.QueryRequest(workflow_id=WORKFLOW))
    assert started.instance_id in [i.instance_id for i in page.instances]
    status = await stub.GetStatus(pb.GetStatusRequest(instance_id=started.instance_id))
    assert status.input.list_value.values[0].list_value.values


async def test_nan_refusal_says_what_to_send_and_a_finite_float_is_kept(stubs: Stubs) -> None:
    stub = stubs.policed.stub
    refused = pb.RunRequest(workflow_id=WORKFLOW, input=amount(math.nan))
    error = await expect_rpc_error(stub.Run(refused), INVALID)
    assert "NaN is not a JSON number; send a finite number" in (error.details() or "")
    started = await stub.Run(pb.RunRequest(workflow_id=WORKFLOW, input=amount(12.5)))
    status = await stub.GetStatus(pb.GetStatusRequest(instance_id=started.instance_id))
    assert status.input == amount(12.5)


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return _varint(tag << 3 | 2) + _varint(len(payload)) + payload


def deep_value_run(depth: int) -> bytes:
    """A RunRequest whose input is a Value nested `depth` lists deep, encoded by hand."""
    inner = _field(3, b"x")  # Value.string_value
    for _ in range(depth):
        inner = _field(6, _field(1, inner))  # Value.list_value -> ListValue.values
    return _field(1, WORKFLOW.encode()) + _field(2, inner)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("garbage bytes", b"\xff\xff\xff\xff"),
        ("invalid UTF-8 in a string", _field(1, b"\xff\xfe")),
        ("a Value nested 100 deep", deep_value_run(100)),
    ],
)
async def test_undecodable_request_is_invalid_argument_and_one_log_line(
    name: str, raw: bytes, stubs: Stubs, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = await redis_fingerprint(redis)
    run: Any = stubs.channel.unary_unary("/okra.workflow.v1.WorkflowHostAPI/Run")
    error = await expect_rpc_error(run(raw), INVALID)
    assert bad_request_fields(error) == ["request"]
    assert "is not a valid Run message" in (error.details() or "")
    undecodable = [r for r in caplog.records if "undecodable request" in r.getMessage()]
    assert len(undecodable) == 1 and undecodable[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert await redis_fingerprint(redis) == before


async def test_undecodable_streaming_request_is_invalid_argument(stubs: Stubs) -> None:
    poll: Any = stubs.channel.unary_stream("/okra.worker.v1.TaskWorker/PollTasks")
    call = poll(b"\xff\xff\xff\xff")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == INVALID


OVER_LIMIT = b"\x00" * (MAX_REQUEST_BYTES + 1)


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("unary", "/okra.workflow.v1.WorkflowHostAPI/Run"),
        ("server stream", "/okra.workflow.v1.WorkflowHostAPI/WatchInstance"),
        ("client stream", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
    ],
)
async def test_request_over_the_size_limit_is_resource_exhausted(
    kind: str, method: str, stubs: Stubs, redis: Redis
) -> None:
    # The limit is the sidecar's own (api/decoding.py), not grpc core's: the same status,
    # now with a reason, for every kind of rpc.
    before = await redis_fingerprint(redis)
    channel: Any = stubs.channel
    if kind == "unary":
        call: Any = channel.unary_unary(method)(OVER_LIMIT)
    elif kind == "server stream":
        call = channel.unary_stream(method)(OVER_LIMIT)
    else:
        call = channel.stream_stream(method)(iter([OVER_LIMIT]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if kind == "unary":
            await call
        else:
            async for _ in call:
                pass
    metadata = assert_reason(caught.value, Reason.MESSAGE_TOO_LARGE)
    assert metadata == {"size": str(len(OVER_LIMIT)), "limit": str(MAX_REQUEST_BYTES)}
    assert "over the limit" in (caught.value.details() or "")
    assert await redis_fingerprint(redis) == before


async def test_request_at_the_size_limit_is_read(stubs: Stubs) -> None:
    # One byte under the limit passes the size check and reaches the rules behind it.
    run: Any = stubs.channel.unary_unary("/okra.workflow.v1.WorkflowHostAPI/Run")
    request = pb.RunRequest(workflow_id=WORKFLOW, input=value({"blob": "x" * (2 * 1024 * 1024)}))
    error = await expect_rpc_error(run(request.SerializeToString()), INVALID)
    assert bad_request_fields(error) == ["input"]
