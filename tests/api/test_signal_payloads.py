"""Signal and SignalWithStart check a payload against the schema its listen task declares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf.json_format import MessageToDict
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.errors import Reason
from okra_sidecar.executors.router import REFUSED_EVENT
from okra_sidecar.server import Sidecar
from tests.helpers import (
    KEYS,
    Stub,
    assert_reason,
    bad_request_fields,
    eventually,
    expect_rpc_error,
    make_settings,
    redis_fingerprint,
    running_sidecar,
    to_python,
    value,
    wait_for_status,
)
from tests.policy.support import settle

WORKFLOW_ID = "tests.payloads.1.0.0"
DEFINITION = """\
document: {dsl: '1.0.0', namespace: tests, name: payloads, version: '1.0.0'}
do:
  - decide:
      listen:
        to:
          any:
            - with: {type: approve}
            - with: {type: reject}
        read: envelope
      metadata:
        signals:
          approve:
            schema:
              format: json
              document:
                type: object
                required: [by, amount]
                additionalProperties: false
                properties:
                  by: {type: string, minLength: 1}
                  amount: {type: integer, minimum: 0}
  - answer:
      set:
        decision: ${ .[0].type }
        data: ${ .[0].data }
"""
INVALID = grpc.StatusCode.INVALID_ARGUMENT
WAITING = {pb.WORKFLOW_STATUS_WAITING}


@pytest_asyncio.fixture
async def served(
    tmp_path: Path, redis: Redis, redis_url: str
) -> AsyncIterator[tuple[Sidecar, Stub]]:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "payloads.yaml").write_text(DEFINITION)
    async with running_sidecar(make_settings(redis_url, workflows=workflows)) as running:
        yield running


@pytest_asyncio.fixture
async def stub(served: tuple[Sidecar, Stub]) -> Stub:
    return served[1]


async def waiting(stub: Stub) -> str:
    started = await stub.Run(pb.RunRequest(workflow_id=WORKFLOW_ID))
    await wait_for_status(stub, started.instance_id, WAITING)
    return started.instance_id


def signal(instance_id: str, name: str, payload: Any = None) -> pb.SignalRequest:
    request = pb.SignalRequest(instance_id=instance_id, signal=name)
    if payload is not None:
        request.payload.CopyFrom(value(payload))
    return request


async def test_a_payload_that_breaks_the_schema_is_refused_and_nothing_is_written(
    stub: Stub, redis: Redis
) -> None:
    instance_id = await waiting(stub)
    before = await settle(redis)
    cases = [
        ({"by": "grace", "amount": "ten"}, ["payload.amount"]),
        ({"by": "", "amount": -1}, ["payload.amount", "payload.by"]),
        ({"by": "grace", "amount": 1, "extra": True}, ["payload"]),
        (None, ["payload"]),
    ]
    for payload, fields in cases:
        error = await expect_rpc_error(
            stub.Signal(signal(instance_id, "approve", payload)), INVALID
        )
        assert_reason(error, Reason.INPUT_SCHEMA_MISMATCH)
        assert bad_request_fields(error) == fields, error.details()
        assert f"{fields[0]} does not match signal approve's payload schema" in (
            error.details() or ""
        )
    assert await redis_fingerprint(redis) == before
    assert (
        await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
    ).status == pb.WORKFLOW_STATUS_WAITING


async def test_a_payload_that_matches_is_delivered(stub: Stub) -> None:
    instance_id = await waiting(stub)
    await stub.Signal(signal(instance_id, "approve", {"by": "grace", "amount": 10}))
    done = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
    assert to_python(done.output) == {
        "decision": "approve",
        "data": {"by": "grace", "amount": 10},
    }


async def test_a_signal_without_a_declared_schema_takes_any_payload(stub: Stub) -> None:
    instance_id = await waiting(stub)
    await stub.Signal(signal(instance_id, "reject", ["any", {"json": 1}]))
    done = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
    assert to_python(done.output)["decision"] == "reject"


async def test_signal_with_start_checks_the_payload_before_starting(
    stub: Stub, redis: Redis
) -> None:
    def request(payload: Any) -> pb.SignalWithStartRequest:
        return pb.SignalWithStartRequest(
            run=pb.RunRequest(workflow_id=WORKFLOW_ID, request_id="r-1"),
            signal="approve",
            payload=value(payload),
        )

    before = await settle(redis)
    error = await expect_rpc_error(stub.SignalWithStart(request({"by": "ada"})), INVALID)
    assert_reason(error, Reason.INPUT_SCHEMA_MISMATCH)
    assert bad_request_fields(error) == ["payload"]
    assert await redis_fingerprint(redis) == before
    started = await stub.SignalWithStart(request({"by": "ada", "amount": 3}))
    assert started.started
    done = await wait_for_status(stub, started.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
    assert to_python(done.output)["data"] == {"by": "ada", "amount": 3}


async def test_a_bulk_signal_checks_its_payload_against_each_matched_workflow(
    served: tuple[Sidecar, Stub], redis: Redis
) -> None:
    sidecar, stub = served
    ids = [await waiting(stub), await waiting(stub)]
    before = await settle(redis)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
        operator = opb_grpc.WorkflowOperatorAPIStub(channel)

        def bulk(payload: Any, *, dry_run: bool = False) -> Any:
            return operator.StartBulkOperation(
                opb.StartBulkOperationRequest(
                    filter=pb.QueryRequest(workflow_id=WORKFLOW_ID),
                    action=opb.BULK_ACTION_SIGNAL,
                    signal="approve",
                    payload=value(payload),
                    dry_run=dry_run,
                )
            )

        for dry_run in (True, False):
            error = await expect_rpc_error(bulk({"by": "ops"}, dry_run=dry_run), INVALID)
            assert_reason(error, Reason.INPUT_SCHEMA_MISMATCH)
            assert bad_request_fields(error) == ["payload"]
            assert f"signal approve's payload in {WORKFLOW_ID} schema" in (error.details() or "")
        assert await redis_fingerprint(redis) == before
        started = await bulk({"by": "ops", "amount": 1})
        assert started.matched == 2 and started.operation_id
    for instance_id in ids:
        done = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        assert to_python(done.output)["data"] == {"by": "ops", "amount": 1}


def version_two() -> str:
    """Version 2 of the workflow: its approval carries a ticket instead of an amount."""
    v2 = DEFINITION.replace("version: '1.0.0'", "version: '2.0.0'")
    return v2.replace("[by, amount]", "[by, ticket]").replace(
        "amount: {type: integer, minimum: 0}", "ticket: {type: string}"
    )


def both_versions(tmp_path: Path) -> Path:
    """A workflows folder with versions 1 and 2."""
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "payloads.yaml").write_text(DEFINITION)
    (workflows / "payloads-v2.yaml").write_text(version_two())
    return workflows


async def test_a_bulk_signal_skips_the_instances_whose_version_refuses_its_payload(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    workflows = both_versions(tmp_path)
    v2_id = WORKFLOW_ID.replace("1.0.0", "2.0.0")
    async with running_sidecar(make_settings(redis_url, workflows=workflows)) as (sidecar, stub):
        v1_ids = [await waiting(stub), await waiting(stub)]
        started = await stub.Run(pb.RunRequest(workflow_id=v2_id))
        await wait_for_status(stub, started.instance_id, WAITING)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            operator = opb_grpc.WorkflowOperatorAPIStub(channel)
            reply = await operator.StartBulkOperation(
                opb.StartBulkOperationRequest(
                    filter=pb.QueryRequest(status=[pb.WORKFLOW_STATUS_WAITING]),
                    action=opb.BULK_ACTION_SIGNAL,
                    signal="approve",
                    payload=value({"by": "ops", "amount": 1}),
                )
            )
            assert reply.matched == 3

            async def ended() -> bool:
                got = await operator.GetBulkOperation(
                    opb.GetBulkOperationRequest(operation_id=reply.operation_id)
                )
                return got.operation.state == opb.BULK_OPERATION_STATE_COMPLETED

            await eventually(ended, timeout_s=30, what="the bulk signal ended")
            operation = (
                await operator.GetBulkOperation(
                    opb.GetBulkOperationRequest(operation_id=reply.operation_id)
                )
            ).operation
        assert (operation.done, operation.skipped, operation.failed) == (2, 1, 0)
        assert dict(operation.reasons) == {f"input_schema_mismatch: {v2_id}": 1}
        for instance_id in v1_ids:
            await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        # The refused instance got nothing: still waiting, its inbox empty.
        refused = await stub.GetStatus(pb.GetStatusRequest(instance_id=started.instance_id))
        assert refused.status == pb.WORKFLOW_STATUS_WAITING
        assert await redis.xlen(KEYS.inbox(started.instance_id)) == 0


async def test_a_bulk_signal_reads_no_instance_yet_checks_the_workflow_each_runs(
    tmp_path: Path, redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each instance's workflow comes with its claim, kept when the operation matched it; the
    # store writes the signal only while the instance runs that workflow. As in the test
    # below, rewriting a record stands in for an instance that runs another workflow.
    v2_id = WORKFLOW_ID.replace("1.0.0", "2.0.0")
    settings = make_settings(redis_url, workflows=both_versions(tmp_path))
    async with running_sidecar(settings) as (sidecar, stub):
        ids = [await waiting(stub) for _ in range(3)]
        await sidecar.bulk.stop()  # the test runs the operation itself
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            operator = opb_grpc.WorkflowOperatorAPIStub(channel)
            reply = await operator.StartBulkOperation(
                opb.StartBulkOperationRequest(
                    filter=pb.QueryRequest(workflow_id=WORKFLOW_ID),
                    action=opb.BULK_ACTION_SIGNAL,
                    signal="approve",
                    payload=value({"by": "ops", "amount": 1}),
                )
            )
            assert reply.matched == 3
            moved = ids[2]
            await redis.hset(KEYS.instance(moved), "wf", v2_id)
            read: list[str] = []
            store = sidecar.store
            for name in ("get_instance", "instance_workflow"):
                real = getattr(store, name)

                async def reading(instance_id: str, real: Any = real) -> Any:
                    read.append(instance_id)
                    return await real(instance_id)

                monkeypatch.setattr(store, name, reading)
            assert await sidecar.bulk.run_once(reply.operation_id)
            operation = (
                await operator.GetBulkOperation(
                    opb.GetBulkOperationRequest(operation_id=reply.operation_id)
                )
            ).operation
        assert (operation.matched, operation.done, operation.skipped, operation.failed) == (
            3,
            2,
            1,
            0,
        )
        # Version 2 wants a ticket: its schema refused the amount, and nothing was written.
        assert dict(operation.reasons) == {f"input_schema_mismatch: {v2_id}": 1}
        assert await redis.xlen(KEYS.inbox(moved)) == 0
        # Only the instance whose kept workflow was wrong was read, once.
        assert read == [moved]
        for instance_id in ids[:2]:
            done = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
            assert to_python(done.output)["data"] == {"by": "ops", "amount": 1}


async def test_a_signal_checks_the_workflow_the_instance_runs_not_the_one_remembered(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    # The sidecar remembers the workflow of an instance it started, so a Signal reads nothing
    # before it writes; the store checks the remembered id as it writes. Ids are derived from
    # the full workflow id, so an instance cannot change workflow through the API: rewriting
    # its record stands in for a store where that happened.
    workflows = both_versions(tmp_path)
    async with running_sidecar(make_settings(redis_url, workflows=workflows)) as (_, stub):
        instance_id = await waiting(stub)
        await redis.hset(KEYS.instance(instance_id), "wf", WORKFLOW_ID.replace("1.0.0", "2.0.0"))
        before = await settle(redis)
        error = await expect_rpc_error(
            stub.Signal(signal(instance_id, "approve", {"by": "ada", "amount": 2})), INVALID
        )
        assert_reason(error, Reason.INPUT_SCHEMA_MISMATCH)
        # Version 2's schema decided: it wants a ticket and takes no amount.
        assert "'ticket' is a required property" in (error.details() or "")
        assert await redis_fingerprint(redis) == before
        await stub.Signal(signal(instance_id, "approve", {"by": "ada", "ticket": "T-1"}))
        done = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        assert to_python(done.output)["data"] == {"by": "ada", "ticket": "T-1"}


async def history(stub: Stub, instance_id: str) -> list[dict[str, Any]]:
    """The instance's history as GetHistory shows it: each event's type and details."""
    page = await stub.GetHistory(pb.GetHistoryRequest(instance_id=instance_id, limit=1000))
    return [{"type": e.type, **MessageToDict(e.details)} for e in page.events]


def emit(event_type: str, event_id: str, data: Any) -> pb.EmitRequest:
    return pb.EmitRequest(type=event_type, source="tests/emit", id=event_id, data=value(data))


async def test_an_emitted_event_that_breaks_the_schema_is_not_delivered_and_history_says_why(
    stub: Stub, redis: Redis
) -> None:
    instance_id = await waiting(stub)
    # Emit cannot know which instances an event will reach: it is routed after the call
    # returns, and checked then against each listening instance's schema.
    sent = await stub.Emit(emit("approve", "e-1", {"by": "", "amount": 1}))
    assert sent.id == "e-1"

    async def refused() -> bool:
        return any(e["type"] == REFUSED_EVENT for e in await history(stub, instance_id))

    await eventually(refused, timeout_s=10, what="the refusal recorded")
    # Routed again (the same source and id), it is neither delivered nor recorded twice.
    await stub.Emit(emit("approve", "e-1", {"by": "", "amount": 1}))
    [record] = [e for e in await history(stub, instance_id) if e["type"] == REFUSED_EVENT]
    assert record["event"] == {"type": "approve", "id": "e-1", "source": "tests/emit"}
    assert record["reason"] == Reason.INPUT_SCHEMA_MISMATCH.value
    assert "/by" in record["problem"], record
    assert await redis.xlen(KEYS.inbox(instance_id)) == 0
    still = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
    assert still.status == pb.WORKFLOW_STATUS_WAITING
    # An event that fits is delivered.
    await stub.Emit(emit("approve", "e-2", {"by": "ada", "amount": 2}))
    done = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
    assert to_python(done.output) == {"decision": "approve", "data": {"by": "ada", "amount": 2}}


async def test_an_emitted_event_of_a_type_without_a_schema_takes_any_data(stub: Stub) -> None:
    instance_id = await waiting(stub)
    await stub.Emit(emit("reject", "e-3", [1, "any json"]))
    done = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
    assert to_python(done.output) == {"decision": "reject", "data": [1, "any json"]}
