"""Bulk operations under policies: each instance decided as its action's own rpc would be."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.policy import document as keys
from tests.helpers import eventually, wait_for_status
from tests.policy.support import (
    OperatorStub,
    Policed,
    audit_records,
    bearer,
    operated,
)

OPS = bearer(sub="oncall", role="ops")
GUEST = bearer(sub="guest", role="guest")
WAITING = pb.WORKFLOW_STATUS_WAITING
DENIED = "denied by policy"


async def waiting(policed: Policed, workflow_id: str, count: int, **tags: str) -> list[str]:
    """`count` instances of `workflow_id` (each listens for `approved`), all waiting."""
    ids = []
    for _ in range(count):
        started = await policed.stub.Run(pb.RunRequest(workflow_id=workflow_id, tags=tags))
        ids.append(started.instance_id)
    for instance_id in ids:
        await wait_for_status(policed.stub, instance_id, {WAITING})
    return ids


async def finished(operator: OperatorStub, operation_id: str) -> opb.BulkOperation:
    request = opb.GetBulkOperationRequest(operation_id=operation_id)

    async def ended() -> bool:
        reply = await operator.GetBulkOperation(request, metadata=OPS)
        return reply.operation.state != opb.BULK_OPERATION_STATE_RUNNING

    await eventually(ended, timeout_s=30, what=f"bulk operation {operation_id} ended")
    return (await operator.GetBulkOperation(request, metadata=OPS)).operation


async def start(
    operator: OperatorStub, action: opb.BulkAction.ValueType, metadata: Any = OPS, **fields: Any
) -> opb.BulkOperation:
    """Start a bulk operation over every waiting instance and wait for its end."""
    reply = await operator.StartBulkOperation(
        opb.StartBulkOperationRequest(
            filter=pb.QueryRequest(status=[WAITING]), action=action, **fields
        ),
        metadata=metadata,
    )
    return await finished(operator, reply.operation_id)


async def statuses(policed: Policed, ids: list[str]) -> set[int]:
    return {(await policed.stub.GetStatus(pb.GetStatusRequest(instance_id=i))).status for i in ids}


def tally(operation: opb.BulkOperation) -> tuple[int, int, int, int]:
    return operation.matched, operation.done, operation.skipped, operation.failed


async def test_a_bulk_cancel_skips_the_instances_the_cancel_policy_refuses(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    policies = {
        keys.CANCEL_CONDITION: "instance.workflow.startsWith('test.smoke.')",
        keys.AUDIT: True,
    }
    async with operated(redis_url, tmp_path, policies) as (policed, operator):
        allowed = await waiting(policed, "test.smoke.1.0.0", 3)
        refused = await waiting(policed, "app.orders.1.0.0", 2)
        operation = await start(operator, opb.BULK_ACTION_CANCEL, reason="cleanup")
        assert tally(operation) == (5, 3, 2, 0)
        assert dict(operation.reasons) == {DENIED: 2}
        assert await statuses(policed, allowed) == {pb.WORKFLOW_STATUS_CANCELLED}
        assert await statuses(policed, refused) == {WAITING}
        # Each refusal is audited as the Cancel it would have been, by the operation's caller.
        records = await audit_records(policed.admin)
        denials = [
            r for r in records if r.kind == admin_pb.AUDIT_RECORD_KIND_DECISION and not r.allowed
        ]
        assert sorted(r.instance_id for r in denials) == sorted(refused)
        assert {(r.method, r.policy, r.subject) for r in denials} == {
            ("Cancel", keys.CANCEL_CONDITION, "oncall")
        }


async def test_an_operator_condition_on_the_instance_is_decided_per_instance(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    policies = {
        keys.OPERATOR_CONDITION: "request.auth.claims.role == 'ops' && instance.tags.team == 'a'"
    }
    async with operated(redis_url, tmp_path, policies) as (policed, operator):
        team_a = await waiting(policed, "test.smoke.1.0.0", 2, team="a")
        team_b = await waiting(policed, "test.smoke.1.0.0", 2, team="b")
        # The bulk rpcs are decided without an instance: a dry run and a start are allowed.
        dry = await operator.StartBulkOperation(
            opb.StartBulkOperationRequest(
                filter=pb.QueryRequest(status=[WAITING]),
                action=opb.BULK_ACTION_SUSPEND,
                dry_run=True,
            ),
            metadata=OPS,
        )
        assert dry.matched == 4
        # A guest's operation starts, but each instance is decided as the guest's Suspend.
        guest = await start(operator, opb.BULK_ACTION_SUSPEND, metadata=GUEST)
        assert tally(guest) == (4, 0, 4, 0) and dict(guest.reasons) == {DENIED: 4}
        assert await statuses(policed, team_a + team_b) == {WAITING}
        operation = await start(operator, opb.BULK_ACTION_SUSPEND)
        assert tally(operation) == (4, 2, 2, 0) and dict(operation.reasons) == {DENIED: 2}
        assert await statuses(policed, team_a) == {pb.WORKFLOW_STATUS_SUSPENDED}
        assert await statuses(policed, team_b) == {WAITING}
        # A bulk CANCEL is an operator rpc too: the operator condition decides each instance.
        cancelled = await start(operator, opb.BULK_ACTION_CANCEL)
        assert tally(cancelled) == (2, 0, 2, 0)
        assert await statuses(policed, team_b) == {WAITING}
        listed = await operator.ListBulkOperations(opb.ListBulkOperationsRequest(), metadata=OPS)
        assert len(listed.operations) == 3


async def test_a_bulk_signal_waits_for_the_signal_rate_limit(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    policies = {keys.RATE_KEYS["signal"]: "4/second"}
    async with operated(redis_url, tmp_path, policies) as (policed, operator):
        ids = await waiting(policed, "test.smoke.1.0.0", 6)
        operation = await start(operator, opb.BULK_ACTION_SIGNAL, signal="approved")
        assert tally(operation) == (6, 6, 0, 0)
        for instance_id in ids:
            await wait_for_status(policed.stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
