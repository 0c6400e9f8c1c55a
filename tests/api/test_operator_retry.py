"""Retry end to end: a failed HTTP call runs again once its server answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest_asyncio
from aiohttp import web
from google.protobuf import json_format, struct_pb2
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.errors import Reason
from tests.helpers import (
    KEYS,
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

if TYPE_CHECKING:
    from okra_client.gen.workflow.v1.operator_pb2_grpc import (
        WorkflowOperatorAPIAsyncStub as OperatorStub,
    )
else:
    OperatorStub = opb_grpc.WorkflowOperatorAPIStub

WORKFLOWS = Path(__file__).parent / "workflows_operator"
FAILED = pb.WORKFLOW_STATUS_FAILED
COMPLETED = pb.WORKFLOW_STATUS_COMPLETED


class FlakyPayments:
    """A payment server on loopback that is down for its first `down_for` requests."""

    def __init__(self, down_for: int) -> None:
        self.down_for = down_for
        self.bodies: list[object] = []

    async def charge(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        if len(self.bodies) <= self.down_for:
            return web.json_response({"error": "payments are down"}, status=503)
        return web.json_response({"receipt": f"r-{len(self.bodies)}"})


@pytest_asyncio.fixture
async def payments() -> AsyncIterator[tuple[FlakyPayments, str]]:
    flaky = FlakyPayments(down_for=1)
    app = web.Application()
    app.router.add_post("/charge", flaky.charge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield flaky, f"http://127.0.0.1:{port}/charge"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def operated(redis: Redis, redis_url: str) -> AsyncIterator[tuple[Stub, OperatorStub]]:
    async with running_sidecar(make_settings(redis_url, workflows=WORKFLOWS)) as (sidecar, stub):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            yield stub, OperatorStub(channel)


async def history_types(stub: Stub, instance_id: str) -> list[str]:
    page = await stub.GetHistory(pb.GetHistoryRequest(instance_id=instance_id, limit=1000))
    return [event.type for event in page.events]


async def test_retry_runs_the_failed_call_again_and_completes(
    operated: tuple[Stub, OperatorStub],
    payments: tuple[FlakyPayments, str],
    redis: Redis,
) -> None:
    stub, operator = operated
    flaky, url = payments
    started = await stub.Run(
        pb.RunRequest(workflow_id="tests.charge.1.0.0", input=value({"url": url, "order": 7}))
    )
    instance_id = started.instance_id
    failed = await wait_for_status(stub, instance_id, {FAILED})
    assert failed.error.status == 503 and failed.error.instance == "/do/1/charge"

    variables = struct_pb2.Struct()
    variables.update({"attempt": "second"})
    retried = await operator.Retry(
        opb.RetryRequest(instance_id=instance_id, reason="payments are back", variables=variables)
    )
    assert retried.task == "/do/1/charge"
    done = await wait_for_status(stub, instance_id, {COMPLETED})
    assert to_python(done.output) == {"receipt": "r-2", "attempt": "second"}
    assert not done.HasField("error")
    # The call ran twice with the same body; `prepare` ran once.
    assert flaky.bodies == [{"order": 7}, {"order": 7}]
    types = await history_types(stub, instance_id)
    assert types.count("workflow.faulted") == 1 and types.count("workflow.retried") == 1
    assert types.index("workflow.faulted") < types.index("workflow.retried")
    assert types.count("task.started") == 4  # prepare, charge, charge again, done
    page = await stub.GetHistory(pb.GetHistoryRequest(instance_id=instance_id, limit=1000))
    retry_event = next(e for e in page.events if e.type == "workflow.retried")
    assert json_format.MessageToDict(retry_event.details)["reason"] == "payments are back"
    assert retry_event.task == "/do/1/charge"
    # It is finished once more.
    finished = await stub.Query(pb.QueryRequest(status=[COMPLETED]))
    assert [i.instance_id for i in finished.instances] == [instance_id]
    assert not (await stub.Query(pb.QueryRequest(status=[FAILED]))).instances


async def test_retry_refuses_what_has_not_failed_and_writes_nothing(
    operated: tuple[Stub, OperatorStub],
    payments: tuple[FlakyPayments, str],
    redis: Redis,
) -> None:
    stub, operator = operated
    flaky, url = payments
    flaky.down_for = 0
    started = await stub.Run(
        pb.RunRequest(workflow_id="tests.charge.1.0.0", input=value({"url": url, "order": 1}))
    )
    await wait_for_status(stub, started.instance_id, {COMPLETED})
    before = await redis_fingerprint(redis)
    error = await expect_rpc_error(
        operator.Retry(opb.RetryRequest(instance_id=started.instance_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "is completed; only a failed instance can be retried" in (error.details() or "")
    metadata = assert_reason(error, Reason.INSTANCE_NOT_FAILED)
    assert metadata == {"instance": started.instance_id, "status": "completed"}
    assert await redis_fingerprint(redis) == before


async def test_a_workflow_timeout_leaves_nothing_to_retry(
    operated: tuple[Stub, OperatorStub], redis: Redis
) -> None:
    stub, operator = operated
    started = await stub.Run(pb.RunRequest(workflow_id="tests.expire.1.0.0"))
    failed = await wait_for_status(stub, started.instance_id, {FAILED})
    assert failed.error.instance == "/"
    before = await redis_fingerprint(redis)
    error = await expect_rpc_error(
        operator.Retry(opb.RetryRequest(instance_id=started.instance_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "failed outside any task" in (error.details() or "")
    assert assert_reason(error, Reason.NOTHING_TO_RETRY) == {"instance": started.instance_id}
    assert await redis_fingerprint(redis) == before
    state = json.loads(await redis.hget(KEYS.instance(started.instance_id), "state") or "{}")
    assert state["status"] == "failed"


async def test_retry_variables_are_checked_like_an_input(redis: Redis, redis_url: str) -> None:
    settings = with_host(
        make_settings(redis_url, workflows=WORKFLOWS), max_input_depth=2, max_input_bytes=64
    )
    async with running_sidecar(settings) as (sidecar, stub):
        started = await stub.Run(pb.RunRequest(workflow_id="tests.expire.1.0.0"))
        await wait_for_status(stub, started.instance_id, {FAILED})
        before = await redis_fingerprint(redis)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            operator = OperatorStub(channel)
            deep = opb.RetryRequest(instance_id=started.instance_id)
            deep.variables.update({"a": {"b": {"c": {}}}})
            error = await expect_rpc_error(operator.Retry(deep), grpc.StatusCode.INVALID_ARGUMENT)
            assert "variables: nests objects and arrays more than 2 deep" in (error.details() or "")
            big = opb.RetryRequest(instance_id=started.instance_id)
            big.variables.update({"note": "x" * 100})
            error = await expect_rpc_error(operator.Retry(big), grpc.StatusCode.INVALID_ARGUMENT)
            assert (error.details() or "").startswith("variables:")
        assert await redis_fingerprint(redis) == before
