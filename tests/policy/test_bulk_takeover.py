"""A bulk operation taken over from a holder that stopped: each instance counted once, by what
it shows, and an operation an earlier version started (no caller kept) under policies."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.bulks import BULK_OPERATION_FIELD, BulkAction, BulkSpec
from okra_sidecar.engine.runtime.bulk import CALLER_UNKNOWN, bulk_signal_id
from okra_sidecar.engine.runtime.cancelling import cancel_instance
from okra_sidecar.engine.runtime.retrying import retry_instance
from okra_sidecar.policy import document as keys
from okra_sidecar.server import Sidecar
from okra_sidecar.store.bulk_store import RedisBulkStore
from tests.helpers import Stub, eventually, value, wait_for_status
from tests.policy.support import OperatorStub, Policed, operated
from tests.policy.test_bulk_policies import DENIED, statuses, tally, waiting

SUSPENDED = pb.WORKFLOW_STATUS_SUSPENDED
WAITING = pb.WORKFLOW_STATUS_WAITING
FAILED = pb.WORKFLOW_STATUS_FAILED
# The holder that "crashed": its lease ran out a second ago.
CRASHED = "bulk-crashed"
# Resume and Retry decided on the status they act on: a repeat after the action is refused.
ONLY_SUSPENDED = {keys.OPERATOR_CONDITIONS["resume"]: "instance.status == 'suspended'"}


def now_ms() -> int:
    return int(time.time() * 1000)


def bulk_store(policed: Policed, redis: Redis) -> RedisBulkStore:
    return RedisBulkStore(redis=redis, keys=policed.sidecar.store.keys)


async def suspended(policed: Policed, operator: OperatorStub, count: int) -> list[str]:
    ids = await waiting(policed, "test.smoke.1.0.0", count, batch="t")
    for instance_id in ids:
        await operator.Suspend(opb.SuspendRequest(instance_id=instance_id, reason="hold"))
    return ids


async def operation_of(
    policed: Policed, operator: OperatorStub, action: opb.BulkAction.ValueType
) -> str:
    """A bulk operation over batch `t`, left to the test: the sidecar's own runner is stopped."""
    await policed.sidecar.bulk.stop()
    reply = await operator.StartBulkOperation(
        opb.StartBulkOperationRequest(
            filter=pb.QueryRequest(tags={"batch": "t"}), action=action, reason="takeover"
        )
    )
    return reply.operation_id


async def claimed_by_crashed_holder(bulks: RedisBulkStore, operation_id: str) -> str:
    """The instance at the cursor, claimed (`pending`) by a holder whose lease ran out."""
    then = now_ms() - 1000
    assert await bulks.take_lease(operation_id, CRASHED, now_ms=then, lease_ms=1)
    [first] = await bulks.instance_ids(operation_id, 0, 1)
    claim = await bulks.claim(operation_id, CRASHED, first, now_ms=then, lease_ms=1)
    assert claim.result == "new"
    return first


async def resumes(policed: Policed, instance_id: str) -> list[dict[str, Any]]:
    """The instance's `workflow.resumed` history events."""
    page = await policed.sidecar.store.history(instance_id, after="", limit=1000)
    return [event for _, event in page.events if event["type"] == "workflow.resumed"]


async def get(operator: OperatorStub, operation_id: str) -> opb.BulkOperation:
    request = opb.GetBulkOperationRequest(operation_id=operation_id)
    return (await operator.GetBulkOperation(request)).operation


async def test_an_instance_resumed_before_the_crash_counts_done_once(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with operated(redis_url, tmp_path, ONLY_SUSPENDED) as (policed, operator):
        ids = await suspended(policed, operator, 3)
        operation_id = await operation_of(policed, operator, opb.BULK_ACTION_RESUME)
        bulks = bulk_store(policed, redis)
        first = await claimed_by_crashed_holder(bulks, operation_id)
        # The holder resumed it, then stopped before recording it.
        await policed.sidecar.store.resume(
            first, reason="takeover", now_ms=now_ms(), operation=operation_id
        )
        # Decided again, the resume would be refused (the instance is no longer suspended):
        # its history says this operation resumed it, so it counts done, once.
        assert await policed.sidecar.bulk.run_once(operation_id)
        operation = await get(operator, operation_id)
        assert tally(operation) == (3, 3, 0, 0) and dict(operation.reasons) == {}
        assert await statuses(policed, ids) == {WAITING}
        for instance_id in ids:
            named = [e[BULK_OPERATION_FIELD] for e in await resumes(policed, instance_id)]
            assert named == [operation_id], instance_id


async def test_a_pending_instance_someone_else_resumed_is_skipped_not_counted_done(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with operated(redis_url, tmp_path, ONLY_SUSPENDED) as (policed, operator):
        ids = await suspended(policed, operator, 2)
        operation_id = await operation_of(policed, operator, opb.BULK_ACTION_RESUME)
        bulks = bulk_store(policed, redis)
        first = await claimed_by_crashed_holder(bulks, operation_id)
        # Claimed, never acted on; an operator's own Resume came in between.
        await operator.Resume(opb.ResumeRequest(instance_id=first))
        assert await policed.sidecar.bulk.run_once(operation_id)
        operation = await get(operator, operation_id)
        assert tally(operation) == (2, 1, 1, 0) and dict(operation.reasons) == {DENIED: 1}
        assert (await bulks.item_outcomes(operation_id))[first] == "skipped"
        assert await statuses(policed, ids) == {WAITING}


# GetBulkOperation's reason for an instance that was cancelled already when a cancel came.
ALREADY_CANCELLED = "instance_already_finished: cancelled"


async def cancels(policed: Policed, instance_id: str) -> list[dict[str, Any]]:
    """The instance's `workflow.cancelled` history events."""
    page = await policed.sidecar.store.history(instance_id, after="", limit=1000)
    return [event for _, event in page.events if event["type"] == "workflow.cancelled"]


async def pending_cancel(
    policed: Policed, operator: OperatorStub, redis: Redis
) -> tuple[list[str], str, str]:
    """Two waiting instances, a bulk CANCEL over them and the first claimed by a crashed holder:
    the instance ids, the operation id and the pending instance."""
    ids = await waiting(policed, "test.smoke.1.0.0", 2, batch="t")
    operation_id = await operation_of(policed, operator, opb.BULK_ACTION_CANCEL)
    first = await claimed_by_crashed_holder(bulk_store(policed, redis), operation_id)
    return ids, operation_id, first


async def test_an_instance_cancelled_before_the_crash_counts_done_once(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with operated(redis_url, tmp_path, {}) as (policed, operator):
        ids, operation_id, first = await pending_cancel(policed, operator, redis)
        # The holder cancelled it, then stopped before recording it.
        await cancel_instance(
            policed.sidecar.store,
            first,
            reason="takeover",
            now_ms=now_ms(),
            operation=operation_id,
        )
        assert await policed.sidecar.bulk.run_once(operation_id)
        operation = await get(operator, operation_id)
        assert tally(operation) == (2, 2, 0, 0) and dict(operation.reasons) == {}
        for instance_id in ids:
            named = [e.get(BULK_OPERATION_FIELD) for e in await cancels(policed, instance_id)]
            assert named == [operation_id], instance_id


async def test_a_pending_instance_someone_else_cancelled_is_skipped_as_without_a_crash(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with operated(redis_url, tmp_path, {}) as (policed, operator):
        ids, operation_id, first = await pending_cancel(policed, operator, redis)
        # Claimed, never acted on; an operator's own Cancel came in between.
        await policed.stub.Cancel(pb.CancelRequest(instance_id=first, reason="by hand"))
        assert await policed.sidecar.bulk.run_once(operation_id)
        operation = await get(operator, operation_id)
        assert tally(operation) == (2, 1, 1, 0)
        assert dict(operation.reasons) == {ALREADY_CANCELLED: 1}
        outcomes = await bulk_store(policed, redis).item_outcomes(operation_id)
        assert outcomes[first] == "skipped"
        # Only the operator's cancel is in its history; the other was cancelled by the operation.
        assert [e.get(BULK_OPERATION_FIELD) for e in await cancels(policed, first)] == [None]
        assert await statuses(policed, ids) == {pb.WORKFLOW_STATUS_CANCELLED}
        # Without a crash, a bulk CANCEL reports an instance cancelled already the same way.
        again = await operation_of(policed, operator, opb.BULK_ACTION_CANCEL)
        assert await policed.sidecar.bulk.run_once(again)
        operation = await get(operator, again)
        assert tally(operation) == (2, 0, 2, 0)
        assert dict(operation.reasons) == {ALREADY_CANCELLED: 2}


# GetBulkOperation's reason for an instance gone when a delete came (as for a bulk CANCEL).
NOT_FOUND = "not found"


async def delete_operation(policed: Policed, operator: OperatorStub) -> tuple[list[str], str]:
    """Two cancelled instances and a bulk DELETE over them: their ids and the operation id."""
    ids = await waiting(policed, "test.smoke.1.0.0", 2, batch="t")
    for instance_id in ids:
        await policed.stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="ended"))
    return ids, await operation_of(policed, operator, opb.BULK_ACTION_DELETE)


async def pending_delete(
    policed: Policed, operator: OperatorStub, redis: Redis
) -> tuple[list[str], str, str]:
    """delete_operation's, with the first instance claimed by a crashed holder: the instance
    ids, the operation id and the pending instance."""
    ids, operation_id = await delete_operation(policed, operator)
    first = await claimed_by_crashed_holder(bulk_store(policed, redis), operation_id)
    return ids, operation_id, first


async def deleted_all_once(
    policed: Policed, operator: OperatorStub, operation_id: str, ids: list[str]
) -> None:
    """Run the operation: each of `ids` deleted and counted done, once, and the operation's
    record of each delete dropped once its outcome is recorded."""
    assert await policed.sidecar.bulk.run_once(operation_id)
    operation = await get(operator, operation_id)
    assert tally(operation) == (2, 2, 0, 0) and dict(operation.reasons) == {}
    for instance_id in ids:
        assert await policed.sidecar.store.get_instance(instance_id) is None
        assert await policed.sidecar.store.deleted_by(instance_id) is None


async def test_an_instance_deleted_before_the_crash_counts_done_once(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with operated(redis_url, tmp_path, {}) as (policed, operator):
        ids, operation_id, first = await pending_delete(policed, operator, redis)
        store = policed.sidecar.store
        # The holder deleted it, then stopped before recording it: the instance is gone, the
        # operation's record of the delete is not.
        await store.delete(first, operation=operation_id)
        assert await store.deleted_by(first) == operation_id
        await deleted_all_once(policed, operator, operation_id, ids)


async def test_a_pending_instance_someone_else_deleted_is_skipped_as_without_a_crash(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with operated(redis_url, tmp_path, {}) as (policed, operator):
        ids, operation_id, first = await pending_delete(policed, operator, redis)
        # Claimed, never acted on; an operator deleted it, and the other instance, meanwhile:
        # the pending one is reported as the one the operation never claimed.
        for instance_id in ids:
            await operator.Delete(opb.DeleteRequest(instance_id=instance_id))
            assert await policed.sidecar.store.deleted_by(instance_id) is None
        assert await policed.sidecar.bulk.run_once(operation_id)
        operation = await get(operator, operation_id)
        assert tally(operation) == (2, 0, 2, 0)
        assert dict(operation.reasons) == {NOT_FOUND: 2}
        outcomes = await bulk_store(policed, redis).item_outcomes(operation_id)
        assert outcomes == {instance_id: "skipped" for instance_id in ids}


async def test_a_delete_repeated_after_its_reply_was_lost_counts_done(
    redis: Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with operated(redis_url, tmp_path, {}) as (policed, operator):
        ids, operation_id = await delete_operation(policed, operator)
        store = policed.sidecar.store
        write = store._durable_write

        async def reply_lost(script: Any, keys: Any, args: Any) -> tuple[Any, Any]:
            # As the Cluster client does after a lost reply: the script runs again, and the
            # repeat finds the instance gone.
            await write(script, keys, args)
            return await write(script, keys, args)

        monkeypatch.setattr(store, "_durable_write", reply_lost)
        await deleted_all_once(policed, operator, operation_id, ids)


async def test_an_instance_claimed_but_not_acted_on_is_acted_on_once(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with operated(redis_url, tmp_path, ONLY_SUSPENDED) as (policed, operator):
        ids = await suspended(policed, operator, 2)
        operation_id = await operation_of(policed, operator, opb.BULK_ACTION_RESUME)
        first = await claimed_by_crashed_holder(bulk_store(policed, redis), operation_id)
        assert await policed.sidecar.bulk.run_once(operation_id)
        assert tally(await get(operator, operation_id)) == (2, 2, 0, 0)
        assert await statuses(policed, ids) == {WAITING}
        assert len(await resumes(policed, first)) == 1


async def older_operation(
    policed: Policed, redis: Redis, action: BulkAction, instance_ids: list[str]
) -> str:
    """An operation as an earlier version stored it: its spec names no caller."""
    await policed.sidecar.bulk.stop()
    bulks = bulk_store(policed, redis)
    operation_id = "00000000-0000-4000-8000-0000000000aa"
    await bulks.create(operation_id, BulkSpec(action=action), instance_ids, now_ms=now_ms())
    spec = BulkSpec(action=action).to_json()
    del spec["owner"], spec["ownerPeer"]
    await redis.hset(policed.sidecar.store.keys.bulk(operation_id), "spec", json.dumps(spec))
    return operation_id


async def test_an_operation_without_a_caller_is_not_continued_under_policies(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with operated(redis_url, tmp_path, ONLY_SUSPENDED) as (policed, operator):
        ids = await suspended(policed, operator, 3)
        operation_id = await older_operation(policed, redis, BulkAction.RESUME, ids)
        assert await policed.sidecar.bulk.run_once(operation_id)
        operation = await get(operator, operation_id)
        assert operation.state == opb.BULK_OPERATION_STATE_COMPLETED
        assert tally(operation) == (3, 0, 3, 0)
        assert dict(operation.reasons) == {CALLER_UNKNOWN: 3}
        # Nothing was decided as an anonymous caller, nothing touched.
        assert await statuses(policed, ids) == {SUSPENDED}


async def test_an_operation_without_a_caller_goes_on_with_no_policy_set(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with operated(redis_url, tmp_path, {}) as (policed, operator):
        ids = await suspended(policed, operator, 2)
        operation_id = await older_operation(policed, redis, BulkAction.RESUME, ids)
        assert await policed.sidecar.bulk.run_once(operation_id)
        assert tally(await get(operator, operation_id)) == (2, 2, 0, 0)
        assert await statuses(policed, ids) == {WAITING}


async def test_an_instance_retried_before_the_crash_is_not_retried_again(
    sidecar: tuple[Sidecar, Stub], redis: Redis
) -> None:
    # The retried instance fails again at once: decided again, a second retry would run it.
    running, stub = sidecar
    failing = pb.RunRequest(
        workflow_id="tests.order.1.0.0", input=value({"kind": "x"}), tags={"batch": "t"}
    )
    ids = [(await stub.Run(failing)).instance_id for _ in range(2)]
    for instance_id in ids:
        await wait_for_status(stub, instance_id, {FAILED})
    await running.bulk.stop()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        operator = OperatorStub(channel)
        reply = await operator.StartBulkOperation(
            opb.StartBulkOperationRequest(
                filter=pb.QueryRequest(tags={"batch": "t"}), action=opb.BULK_ACTION_RETRY
            )
        )
        operation_id = reply.operation_id
        bulks = RedisBulkStore(redis=redis, keys=running.store.keys)
        first = await claimed_by_crashed_holder(bulks, operation_id)
        await retry_instance(
            running.store, first, reason="takeover", now_ms=now_ms(), operation=operation_id
        )

        async def failed_again() -> bool:
            page = await running.store.history(first, after="", limit=1000)
            finished = [e for _, e in page.events if e["type"] == "workflow.faulted"]
            return len(finished) == 2

        await eventually(failed_again, timeout_s=10, what="the retried instance failed again")
        assert await running.bulk.run_once(operation_id)
        operation = await get(operator, operation_id)
    assert tally(operation) == (2, 2, 0, 0)
    for instance_id in ids:
        page = await running.store.history(instance_id, after="", limit=1000)
        retried = [e for _, e in page.events if e["type"] == "workflow.retried"]
        assert len(retried) == 1, instance_id


async def test_an_instance_signalled_before_the_crash_counts_done_once(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    # Signal decided on a waiting instance: the signal finished it, so a repeat is refused.
    policies = {keys.SIGNAL_CONDITION: "instance.status == 'waiting'"}
    async with operated(redis_url, tmp_path, policies) as (policed, operator):
        ids = await waiting(policed, "test.smoke.1.0.0", 2, batch="t")
        await policed.sidecar.bulk.stop()
        reply = await operator.StartBulkOperation(
            opb.StartBulkOperationRequest(
                filter=pb.QueryRequest(tags={"batch": "t"}),
                action=opb.BULK_ACTION_SIGNAL,
                signal="approved",
            )
        )
        operation_id = reply.operation_id
        first = await claimed_by_crashed_holder(bulk_store(policed, redis), operation_id)
        signal_id = bulk_signal_id(operation_id, first)
        await policed.stub.Signal(
            pb.SignalRequest(instance_id=first, signal="approved", signal_id=signal_id)
        )
        await wait_for_status(policed.stub, first, {pb.WORKFLOW_STATUS_COMPLETED})
        assert await policed.sidecar.bulk.run_once(operation_id)
        operation = await get(operator, operation_id)
        assert tally(operation) == (2, 2, 0, 0) and dict(operation.reasons) == {}
        assert await statuses(policed, ids) == {pb.WORKFLOW_STATUS_COMPLETED}
