"""Bulk operations end to end: dry runs, each action, progress, cancellation and refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.errors import Reason
from okra_sidecar.server import Sidecar
from tests.helpers import (
    Stub,
    assert_reason,
    bad_request_fields,
    eventually,
    expect_rpc_error,
    redis_fingerprint,
    value,
    wait_for_status,
)
from tests.policy.support import policed_sidecar, policy_settings, settle, write_policies

if TYPE_CHECKING:
    from okra_client.gen.workflow.v1.operator_pb2_grpc import (
        WorkflowOperatorAPIAsyncStub as OperatorStub,
    )
else:
    OperatorStub = opb_grpc.WorkflowOperatorAPIStub

WAITING = pb.WORKFLOW_STATUS_WAITING
MISSING = "00000000-0000-4000-8000-000000000000"


@pytest_asyncio.fixture
async def operator(sidecar: tuple[Sidecar, Stub]) -> AsyncIterator[OperatorStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar[0].port}") as channel:
        yield OperatorStub(channel)


async def start_batch(stub: Stub, count: int, batch: str = "b1") -> list[str]:
    """`count` approval instances tagged `batch`, each waiting for `approve`."""
    ids = []
    for _ in range(count):
        started = await stub.Run(
            pb.RunRequest(
                workflow_id="tests.approval.1.0.0",
                input=value({"amount": 5}),
                tags={"batch": batch},
            )
        )
        ids.append(started.instance_id)
    for instance_id in ids:
        await wait_for_status(stub, instance_id, {WAITING})
    return ids


def by_batch(batch: str = "b1") -> pb.QueryRequest:
    return pb.QueryRequest(tags={"batch": batch})


async def finished(operator: OperatorStub, operation_id: str) -> opb.BulkOperation:
    async def ended() -> bool:
        reply = await operator.GetBulkOperation(
            opb.GetBulkOperationRequest(operation_id=operation_id)
        )
        return reply.operation.state != opb.BULK_OPERATION_STATE_RUNNING

    await eventually(ended, timeout_s=30, what=f"bulk operation {operation_id} ended")
    reply = await operator.GetBulkOperation(opb.GetBulkOperationRequest(operation_id=operation_id))
    return reply.operation


async def statuses(stub: Stub, ids: list[str]) -> list[int]:
    return [(await stub.GetStatus(pb.GetStatusRequest(instance_id=i))).status for i in ids]


async def test_a_dry_run_counts_and_samples_and_changes_nothing(
    stub: Stub, operator: OperatorStub, redis: Redis
) -> None:
    ids = await start_batch(stub, 12)
    await start_batch(stub, 2, batch="other")
    before = await redis_fingerprint(redis)
    reply = await operator.StartBulkOperation(
        opb.StartBulkOperationRequest(
            filter=by_batch(), action=opb.BULK_ACTION_CANCEL, dry_run=True
        )
    )
    assert reply.matched == 12 and reply.operation_id == ""
    assert list(reply.sample_instance_ids) == list(reversed(ids))[:10]  # newest first
    assert await redis_fingerprint(redis) == before


async def test_a_bulk_signal_reaches_every_instance_once(
    stub: Stub, operator: OperatorStub
) -> None:
    ids = await start_batch(stub, 6)
    reply = await operator.StartBulkOperation(
        opb.StartBulkOperationRequest(
            filter=by_batch(),
            action=opb.BULK_ACTION_SIGNAL,
            signal="approve",
            payload=value({"by": "ops"}),
            reason="quarter end",
        )
    )
    assert reply.matched == 6 and reply.operation_id
    operation = await finished(operator, reply.operation_id)
    assert operation.state == opb.BULK_OPERATION_STATE_COMPLETED
    assert (operation.matched, operation.done, operation.skipped, operation.failed) == (6, 6, 0, 0)
    assert operation.action == opb.BULK_ACTION_SIGNAL and operation.reason == "quarter end"
    for instance_id in ids:
        done = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        assert done.output.struct_value.fields["approvedBy"].string_value == "ops"
    listed = await operator.ListBulkOperations(opb.ListBulkOperationsRequest())
    assert [o.operation_id for o in listed.operations] == [reply.operation_id]


async def test_instances_the_action_no_longer_fits_are_skipped_with_the_reason(
    stub: Stub, operator: OperatorStub
) -> None:
    ids = await start_batch(stub, 4)
    await operator.Suspend(opb.SuspendRequest(instance_id=ids[0]))
    reply = await operator.StartBulkOperation(
        opb.StartBulkOperationRequest(filter=by_batch(), action=opb.BULK_ACTION_SUSPEND)
    )
    operation = await finished(operator, reply.operation_id)
    assert (operation.done, operation.skipped, operation.failed) == (3, 1, 0)
    assert dict(operation.reasons) == {"instance_already_suspended": 1}
    assert set(await statuses(stub, ids)) == {pb.WORKFLOW_STATUS_SUSPENDED}
    resumed = await operator.StartBulkOperation(
        opb.StartBulkOperationRequest(
            filter=pb.QueryRequest(status=[pb.WORKFLOW_STATUS_SUSPENDED]),
            action=opb.BULK_ACTION_RESUME,
        )
    )
    assert (await finished(operator, resumed.operation_id)).done == 4
    assert set(await statuses(stub, ids)) == {WAITING}


async def test_cancelling_a_bulk_operation_stops_it(stub: Stub, operator: OperatorStub) -> None:
    ids = await start_batch(stub, 5)
    reply = await operator.StartBulkOperation(
        opb.StartBulkOperationRequest(
            filter=by_batch(), action=opb.BULK_ACTION_CANCEL, max_per_second=1
        )
    )
    await operator.CancelBulkOperation(
        opb.CancelBulkOperationRequest(operation_id=reply.operation_id)
    )
    operation = await finished(operator, reply.operation_id)
    assert operation.state == opb.BULK_OPERATION_STATE_CANCELLED
    assert operation.done < 5
    cancelled = sum(s == pb.WORKFLOW_STATUS_CANCELLED for s in await statuses(stub, ids))
    assert cancelled == operation.done
    error = await expect_rpc_error(
        operator.CancelBulkOperation(
            opb.CancelBulkOperationRequest(operation_id=reply.operation_id)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    metadata = assert_reason(error, Reason.BULK_OPERATION_FINISHED)
    assert metadata == {"operation": reply.operation_id, "state": "cancelled"}


def start(**fields: object) -> opb.StartBulkOperationRequest:
    request = opb.StartBulkOperationRequest(action=opb.BULK_ACTION_CANCEL)
    for name, given in fields.items():
        if name == "filter":
            assert isinstance(given, pb.QueryRequest)
            request.filter.CopyFrom(given)
        else:
            setattr(request, name, given)
    return request


@pytest.mark.parametrize(
    ("request_", "message", "field"),
    [
        (
            start(action=opb.BULK_ACTION_UNSPECIFIED),
            "action: must be one of BULK_ACTION_CANCEL",
            "action",
        ),
        # A number the enum does not name: refused before the policies are asked.
        (start(action=999), "action: must be one of BULK_ACTION_CANCEL", "action"),
        (start(filter=pb.QueryRequest(limit=5)), "filter.limit: must be unset", "filter.limit"),
        (
            start(filter=pb.QueryRequest(cursor="x")),
            "filter.cursor: must be unset",
            "filter.cursor",
        ),
        (
            start(filter=pb.QueryRequest(status=[pb.WORKFLOW_STATUS_UNSPECIFIED])),
            "filter.status[0]: must be a WorkflowStatus",
            "filter.status[0]",
        ),
        (start(signal="go"), "signal: is only for BULK_ACTION_SIGNAL", "signal"),
        (start(action=opb.BULK_ACTION_SIGNAL, signal="no way"), "signal", "signal"),
        (start(max_per_second=10_001), "max_per_second: must be 0", "max_per_second"),
        (start(reason="x" * 1025), "reason: is 1025 characters", "reason"),
    ],
)
async def test_bad_bulk_requests_are_refused_and_write_nothing(
    operator: OperatorStub,
    redis: Redis,
    request_: opb.StartBulkOperationRequest,
    message: str,
    field: str,
) -> None:
    before = await redis_fingerprint(redis)
    error = await expect_rpc_error(
        operator.StartBulkOperation(request_), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert message in (error.details() or "")
    assert bad_request_fields(error) == [field]
    assert await redis_fingerprint(redis) == before


async def test_unknown_and_malformed_operation_ids(operator: OperatorStub) -> None:
    error = await expect_rpc_error(
        operator.GetBulkOperation(opb.GetBulkOperationRequest(operation_id=MISSING)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert assert_reason(error, Reason.BULK_OPERATION_NOT_FOUND) == {"operation": MISSING}
    await expect_rpc_error(
        operator.CancelBulkOperation(opb.CancelBulkOperationRequest(operation_id=MISSING)),
        grpc.StatusCode.NOT_FOUND,
    )
    error = await expect_rpc_error(
        operator.GetBulkOperation(opb.GetBulkOperationRequest(operation_id="op-1")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_request_fields(error) == ["operation_id"]


async def test_bulk_max_instances_refuses_a_wide_filter_but_a_dry_run_previews_it(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    policies = write_policies(
        tmp_path,
        '{"policy.workflow.bulk.maxInstances": 2,'
        # As docs/policies.md gives it: Get, Cancel and List have no action to read.
        ' "policy.workflow.bulk.condition": "!has(bulk.action) || bulk.action != \'delete\'"}',
    )
    async with policed_sidecar(policy_settings(redis_url, policies)) as policed:
        ids = [
            (await policed.stub.Run(pb.RunRequest(workflow_id="test.smoke.1.0.0"))).instance_id
            for _ in range(3)
        ]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{policed.sidecar.port}") as channel:
            operator = OperatorStub(channel)
            before = await settle(redis)  # the three instances' first turns are done
            # The dry run answers over the limit: the count, a sample and the limit.
            dry = await operator.StartBulkOperation(start(dry_run=True))
            assert dry == opb.StartBulkOperationResponse(
                matched=3, sample_instance_ids=list(reversed(ids)), max_instances=2
            )
            # The same filter for real is refused, as before, and starts nothing.
            error = await expect_rpc_error(
                operator.StartBulkOperation(start(reason="too wide")),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
            metadata = assert_reason(error, Reason.BULK_TOO_MANY_INSTANCES)
            assert metadata == {"limit": "2", "policy": "policy.workflow.bulk.maxInstances"}
            assert "matches more than 2 instances" in (error.details() or "")
            # Within the limit a dry run says the limit too.
            narrow = pb.QueryRequest(workflow_id="test.smoke.1.0.0", correlation_id="none")
            within = await operator.StartBulkOperation(start(filter=narrow, dry_run=True))
            assert within == opb.StartBulkOperationResponse(matched=0, max_instances=2)
            # The policies that decide the action itself still refuse a dry run.
            for dry_run in (True, False):
                error = await expect_rpc_error(
                    operator.StartBulkOperation(
                        start(action=opb.BULK_ACTION_DELETE, dry_run=dry_run)
                    ),
                    grpc.StatusCode.PERMISSION_DENIED,
                )
                assert "policy.workflow.bulk.condition" in (error.details() or "")
            assert await redis_fingerprint(redis) == before
            # The condition leaves the rpcs without an action to the other policies.
            listed = await operator.ListBulkOperations(opb.ListBulkOperationsRequest())
            assert list(listed.operations) == []
            missing = "00000000-0000-4000-8000-000000000000"
            for call in (
                operator.GetBulkOperation(opb.GetBulkOperationRequest(operation_id=missing)),
                operator.CancelBulkOperation(opb.CancelBulkOperationRequest(operation_id=missing)),
            ):
                await expect_rpc_error(call, grpc.StatusCode.NOT_FOUND)
