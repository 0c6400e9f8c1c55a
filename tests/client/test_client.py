"""OkraClient against a real sidecar: every method, JSON in and out, and the typed errors."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import pytest_asyncio
from okra_client import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    OkraClient,
    WorkflowInstance,
    WorkflowStatus,
)

from okra_sidecar.server import Sidecar
from tests.helpers import Stub


@pytest_asyncio.fixture
async def client(sidecar: tuple[Sidecar, Stub]) -> AsyncIterator[OkraClient]:
    async with OkraClient(f"127.0.0.1:{sidecar[0].port}", timeout_s=5.0) as made:
        yield made


async def test_run_signal_and_read_back_json(client: OkraClient) -> None:
    instance_id = await client.run(
        "tests.approval.1.0.0", {"amount": 120}, correlation_id="order-7", tags={"team": "a"}
    )
    waiting = await client.wait(instance_id, until=["waiting"])
    assert waiting.current_step == "/do/0/askForApproval"
    assert (waiting.input, waiting.correlation_id, waiting.tags) == (
        {"amount": 120},
        "order-7",
        {"team": "a"},
    )
    result = await client.signal(instance_id, "approve", {"by": "bo"})
    assert result.signal_id and not result.duplicate
    done = await client.wait(instance_id)
    assert done.status is WorkflowStatus.COMPLETED and done.finished
    assert done.output == {"amount": 120, "approvedBy": "bo"}
    assert done.start_time is not None and done.end_time is not None
    assert done.start_time <= done.end_time
    seed_shape = done.to_json()
    assert seed_shape["instanceId"] == instance_id
    assert seed_shape["status"] == "completed"
    assert seed_shape["startTime"].endswith("Z")
    assert {"workflowId", "version", "input", "output", "variables"} <= seed_shape.keys()


async def test_scalar_and_null_json_round_trip(client: OkraClient) -> None:
    data = [1, "two", None, {"x": 3.5, "n": -7, "big": 2**60}, True]
    instance_id = await client.run("tests.forever.1.0.0", data)
    read = (await client.get_status(instance_id)).input
    assert read == [1, "two", None, {"x": 3.5, "n": -7, "big": float(2**60)}, True]
    assert [type(item) for item in read] == [int, str, type(None), dict, bool]
    assert type(read[3]["n"]) is int and type(read[3]["big"]) is float
    with pytest.raises(TypeError, match="not a JSON value"):
        await client.run("tests.forever.1.0.0", {"when": datetime.now(UTC)})


async def test_request_id_and_signal_id_make_calls_repeatable(client: OkraClient) -> None:
    first = await client.run("tests.forever.1.0.0", None, request_id="req-1")
    assert await client.run("tests.forever.1.0.0", None, request_id="req-1") == first
    sent = await client.signal(first, "other", signal_id="sig-1")
    again = await client.signal(first, "other", signal_id="sig-1")
    assert (sent.signal_id, sent.duplicate, again.duplicate) == ("sig-1", False, True)


async def test_query_pages_and_iterates_over_all_pages(client: OkraClient) -> None:
    ids = [await client.run("tests.forever.1.0.0", {"n": n}, tags={"batch": "q"}) for n in range(5)]
    page = await client.query(tags={"batch": "q"}, limit=2)
    assert [i.instance_id for i in page.instances] == ids[::-1][:2]
    assert page.cursor is not None
    seen = [i.instance_id async for i in client.query_all(tags={"batch": "q"}, page_size=2)]
    assert seen == ids[::-1]
    waiting = [
        i
        async for i in client.query_all(
            workflow_id="tests.forever.1.0.0",
            status=[WorkflowStatus.PENDING, WorkflowStatus.WAITING],
            started_after=datetime.now(UTC) - timedelta(minutes=5),
            started_before=datetime.now(UTC) + timedelta(minutes=5),
        )
    ]
    assert {i.instance_id for i in waiting} == set(ids)
    assert all(isinstance(i, WorkflowInstance) for i in waiting)
    assert [i async for i in client.query_all(correlation_id="nobody")] == []


async def test_cancel_then_cancel_again_fails_typed(client: OkraClient) -> None:
    instance_id = await client.run("tests.forever.1.0.0", None)
    await client.cancel(instance_id, "no longer needed")
    cancelled = await client.get_status(instance_id)
    assert cancelled.status is WorkflowStatus.CANCELLED
    assert cancelled.cancel_reason == "no longer needed"
    with pytest.raises(FailedPreconditionError) as caught:
        await client.cancel(instance_id)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(FailedPreconditionError):
        await client.signal(instance_id, "approve")


async def test_list_workflows(client: OkraClient) -> None:
    workflows = {w.workflow_id: w for w in await client.list_workflows()}
    approval = workflows["tests.approval.1.0.0"]
    assert (approval.namespace, approval.name, approval.version) == ("tests", "approval", "1.0.0")
    assert "manual" in approval.triggers


async def test_errors_are_typed_with_their_details(client: OkraClient) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(NotFoundError) as not_found:
        await client.get_status(missing)
    assert missing in not_found.value.message
    with pytest.raises(InvalidArgumentError) as bad_input:
        await client.run("tests.approval.1.0.0", {"amount": -1})
    assert bad_input.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad_input.value.field_violations] == ["input.amount"]
    with pytest.raises(InvalidArgumentError) as bad_id:
        await client.get_status("not-an-id")
    assert bad_id.value.field_violations == (
        FieldViolation("instance_id", bad_id.value.field_violations[0].description),
    )
    with pytest.raises(ValueError):
        await client.query(status=["sleeping"])
    # A bulk action is named as the client names it, and a wrong one is refused the same way.
    with pytest.raises(ValueError, match="'pause' is not a bulk action: use one of cancel, "):
        await client.operator.start_bulk("pause", dry_run=True)


async def test_history_pages_and_emit(client: OkraClient) -> None:
    instance_id = await client.run("tests.steps.1.0.0", {"n": 1})
    await client.wait(instance_id)
    page = await client.get_history(instance_id, limit=2)
    assert [e.type for e in page.events][:1] == ["workflow.created"]
    assert len(page.events) == 2 and page.cursor is not None
    events = [e async for e in client.history(instance_id, page_size=2)]
    assert events[:2] == page.events
    assert events[-1].type == "workflow.completed"
    assert all(e.time is not None for e in events)
    assert len({e.id for e in events}) == len(events) > 2
    sent = await client.emit(
        "com.example.order.paid.v1", source="tests", data={"order": 7}, event_id="paid-7"
    )
    assert sent == "paid-7"
    with pytest.raises(InvalidArgumentError) as refused:
        await client.emit("com.example.order.paid.v1", source="")
    assert [v.field for v in refused.value.field_violations] == ["source"]


async def test_a_bulk_operations_times_are_utc_like_an_instances(client: OkraClient) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    await client.run("tests.approval.1.0.0", {"amount": 1}, tags={"bulk": "times"})
    started = await client.operator.start_bulk("cancel", tags={"bulk": "times"})
    operation = await client.operator.get_bulk(started.operation_id)
    assert operation.created_at is not None and operation.updated_at is not None
    assert operation.created_at.tzinfo is UTC and operation.updated_at.tzinfo is UTC
    assert before <= operation.created_at <= operation.updated_at <= datetime.now(UTC)
    shape = operation.to_json()
    assert shape["createdAt"] == operation.created_at.isoformat().replace("+00:00", "Z")
    assert shape["updatedAt"] == operation.updated_at.isoformat().replace("+00:00", "Z")
