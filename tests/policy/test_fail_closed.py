"""Conditions that cannot be evaluated deny the call and name the policy (fail closed); a
status that moves under a signal or cancel policy is decided again, never slipped past; a
read is decided whenever a policy can refuse or record it."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.policy import document as keys
from tests.helpers import KEYS, expect_rpc_error, wait_for_status
from tests.policy.support import (
    ADMIN,
    Policed,
    audit_records,
    bearer,
    denied_by,
    eventually,
    policed_sidecar,
    policy_settings,
    run,
    writes_during,
)

DENIED = grpc.StatusCode.PERMISSION_DENIED


async def set_policies(policed: Policed, document: str) -> None:
    await policed.admin.SetPolicies(admin_pb.SetPoliciesRequest(text=document), metadata=ADMIN)


@pytest.mark.parametrize(
    ("condition", "claims", "problem"),
    [
        ("request.auth.claims.level > 2", {"sub": "a"}, "no such member in mapping: 'level'"),
        ("request.metadata", {"sub": "a"}, "not true or false"),
        ("request.auth.claims.n / 0 == 1", {"sub": "a", "n": 1}, "divide by zero"),
        ("request.auth.claims.level > 'x'", {"sub": "a", "level": 3}, "no such overload"),
    ],
)
async def test_a_run_condition_that_fails_denies(
    redis: Redis, redis_url: str, condition: str, claims: dict[str, Any], problem: str
) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        await set_policies(policed, f'{{"policy.workflow.run.condition": "{condition}"}}')

        async def denied() -> None:
            error = await expect_rpc_error(
                policed.stub.Run(
                    pb.RunRequest(workflow_id="app.orders.1.0.0"), metadata=bearer(**claims)
                ),
                DENIED,
            )
            assert denied_by(error) == keys.RUN_CONDITION
            details = error.details() or ""
            assert details.startswith(
                "Run of app.orders.1.0.0 denied: policy.workflow.run.condition could not be "
            )
            assert problem in details, details
            assert "a policy that cannot be evaluated denies" in details

        assert await writes_during(redis, denied) == set()


async def test_a_cancel_condition_that_fails_denies(redis: Redis, redis_url: str) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        instance_id = await run(policed.stub, "app.orders.1.0.0")
        await wait_for_status(policed.stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        await set_policies(
            policed,
            '{"policy.workflow.cancel.condition": '
            '"instance.tags.owner == request.auth.claims.sub"}',
        )

        async def denied() -> None:
            error = await expect_rpc_error(
                policed.stub.Cancel(
                    pb.CancelRequest(instance_id=instance_id), metadata=bearer(sub="ada")
                ),
                DENIED,
            )
            assert denied_by(error) == keys.CANCEL_CONDITION
            assert "no such member in mapping: 'owner'" in (error.details() or "")

        assert await writes_during(redis, denied) == set()


async def test_list_workflows_hides_what_a_failing_condition_guards(
    redis: Redis, redis_url: str
) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        await set_policies(
            policed,
            '{"policy.workflow.run.condition": '
            "\"workflow.namespace != 'payment' || request.auth.claims.role == 'payer'\"}",
        )
        listed = await policed.stub.ListWorkflows(pb.ListWorkflowsRequest())
        ids = {w.workflow_id for w in listed.workflows}
        assert "payment.process.1.0.0" not in ids and "app.orders.1.0.0" in ids
        listed = await policed.stub.ListWorkflows(
            pb.ListWorkflowsRequest(), metadata=bearer(sub="p", role="payer")
        )
        assert "payment.process.1.0.0" in {w.workflow_id for w in listed.workflows}


async def test_a_status_change_between_decision_and_write_is_decided_again(
    redis: Redis, redis_url: str
) -> None:
    """The policy allows cancelling pending instances only. The instance is pending when the
    policy looks, and moves on (as a concurrent engine turn would) just before the store's
    atomic step: the cancel must not land on the instance as it now is."""
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        await policed.sidecar.runner.stop()
        instance_id = await run(policed.stub, "app.orders.1.0.0")
        await set_policies(
            policed, '{"policy.workflow.cancel.condition": "instance.status == \'pending\'"}'
        )
        store = policed.sidecar.store
        real_cancel = store.cancel
        moved: list[str] = []

        async def cancel_after_a_concurrent_turn(instance: str, **kw: Any) -> str | None:
            if not moved:
                await redis.hset(KEYS.instance(instance), "status", "waiting")
                moved.append(instance)
            return await real_cancel(instance, **kw)

        store.cancel = cancel_after_a_concurrent_turn  # type: ignore[method-assign, assignment]  # a racing step
        error = await expect_rpc_error(
            policed.stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="r")), DENIED
        )
        assert denied_by(error) == keys.CANCEL_CONDITION
        assert "`instance.status == 'pending'` is false" in (error.details() or "")
        assert await redis.hget(KEYS.instance(instance_id), "status") == b"waiting"
        # Had the policy been right the second time, the cancel would have gone through.
        await redis.hset(KEYS.instance(instance_id), "status", "pending")
        await policed.stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="r"))
        assert await redis.hget(KEYS.instance(instance_id), "status") == b"cancelled"


async def test_a_signal_decided_on_a_status_that_moved_is_decided_again(
    redis: Redis, redis_url: str
) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        instance_id = await run(policed.stub, "app.orders.1.0.0")
        await wait_for_status(policed.stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        await policed.sidecar.runner.stop()
        await set_policies(
            policed, '{"policy.workflow.signal.condition": "instance.status == \'waiting\'"}'
        )
        store = policed.sidecar.store
        real_signal = store.signal

        async def signal_after_a_concurrent_cancel(instance: str, **kw: Any) -> bool:
            await redis.hset(KEYS.instance(instance), "status", "running")
            return await real_signal(instance, **kw)

        store.signal = signal_after_a_concurrent_cancel  # type: ignore[method-assign, assignment]  # a racing step
        error = await expect_rpc_error(
            policed.stub.Signal(pb.SignalRequest(instance_id=instance_id, signal="approved")),
            DENIED,
        )
        assert denied_by(error) == keys.SIGNAL_CONDITION
        assert await redis.xlen(KEYS.inbox(instance_id)) == 0


async def test_get_status_is_decided_only_when_a_policy_can_refuse_or_record_it(
    redis: Redis, redis_url: str
) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        instance_id = await run(policed.stub, "app.orders.1.0.0")
        request = pb.GetStatusRequest(instance_id=instance_id)
        # No policy at all: nothing to decide, anyone holding the id reads it.
        assert (await policed.stub.GetStatus(request)).instance_id == instance_id
        # A general condition applies to reads.
        await set_policies(
            policed, '{"policy.workflow.condition": "request.auth.claims.role == \\"admin\\""}'
        )
        error = await expect_rpc_error(
            policed.stub.GetStatus(request, metadata=bearer(sub="v", role="viewer")), DENIED
        )
        assert denied_by(error) == keys.CONDITION
        read = await policed.stub.GetStatus(request, metadata=bearer(sub="a", role="admin"))
        assert read.instance_id == instance_id
        # Auditing alone also describes every read, allowed ones included.
        await set_policies(policed, '{"policy.workflow.auditLevel": "full"}')
        await policed.stub.GetStatus(request, metadata=bearer(sub="reader"))

        async def read_recorded() -> bool:
            records = await audit_records(policed.admin)
            return any(r.method == "GetStatus" and r.subject == "reader" for r in records)

        await eventually(read_recorded)


async def test_await_and_watch_are_decided_as_reads_before_they_wait(
    redis: Redis, redis_url: str
) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        instance_id = await run(policed.stub, "app.orders.1.0.0")
        await set_policies(
            policed, '{"policy.workflow.condition": "request.auth.claims.role == \\"admin\\""}'
        )
        viewer = bearer(sub="v", role="viewer")
        waiting = [pb.WORKFLOW_STATUS_WAITING]
        request = pb.AwaitInstanceRequest(instance_id=instance_id, statuses=waiting)
        error = await expect_rpc_error(
            policed.stub.AwaitInstance(request, metadata=viewer, timeout=10), DENIED
        )
        assert denied_by(error) == keys.CONDITION
        watch = policed.stub.WatchInstance(
            pb.WatchInstanceRequest(instance_id=instance_id), metadata=viewer, timeout=10
        )
        error = await expect_rpc_error(watch.read(), DENIED)
        assert denied_by(error) == keys.CONDITION
        # Refused before waiting: nothing subscribed to the instance's changes.
        assert await redis.pubsub_numsub(KEYS.changes(instance_id)) == [
            (KEYS.changes(instance_id).encode(), 0)
        ]
        admin = bearer(sub="a", role="admin")
        read = await policed.stub.AwaitInstance(request, metadata=admin, timeout=10)
        assert read.instance.status == pb.WORKFLOW_STATUS_WAITING
        watch = policed.stub.WatchInstance(
            pb.WatchInstanceRequest(instance_id=instance_id), metadata=admin, timeout=10
        )
        first = await watch.read()
        assert isinstance(first, pb.WatchInstanceResponse)
        assert first.instance.instance_id == instance_id
        watch.cancel()


async def test_signal_with_start_is_decided_as_the_run_and_the_signal(
    redis: Redis, redis_url: str
) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:

        def request(request_id: str) -> pb.SignalWithStartRequest:
            return pb.SignalWithStartRequest(
                run=pb.RunRequest(workflow_id="app.orders.1.0.0", request_id=request_id),
                signal="approved",
            )

        await set_policies(
            policed,
            '{"policy.workflow.run.condition": "request.auth.claims.role == \\"admin\\"", '
            '"policy.workflow.signal.condition": "instance.status == \'waiting\'"}',
        )
        viewer = bearer(sub="v", role="viewer")
        admin = bearer(sub="a", role="admin")

        async def refused_run() -> None:
            error = await expect_rpc_error(
                policed.stub.SignalWithStart(request("r-1"), metadata=viewer), DENIED
            )
            assert denied_by(error) == keys.RUN_CONDITION

        assert await writes_during(redis, refused_run) == set()

        # A new instance is decided as pending, which this signal condition refuses.
        async def refused_signal() -> None:
            error = await expect_rpc_error(
                policed.stub.SignalWithStart(request("r-1"), metadata=admin), DENIED
            )
            assert denied_by(error) == keys.SIGNAL_CONDITION

        assert await writes_during(redis, refused_signal) == set()
        instance_id = await run(policed.stub, "app.orders.1.0.0", metadata=admin)
        await wait_for_status(policed.stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        started = await policed.stub.Run(
            pb.RunRequest(workflow_id="app.orders.1.0.0", request_id="r-2"), metadata=admin
        )
        await wait_for_status(policed.stub, started.instance_id, {pb.WORKFLOW_STATUS_WAITING})
        reply = await policed.stub.SignalWithStart(request("r-2"), metadata=admin)
        assert (reply.instance_id, reply.started) == (started.instance_id, False)


async def test_count_is_decided_as_a_query(redis: Redis, redis_url: str) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        await set_policies(
            policed,
            '{"policy.workflow.query.condition": "request.auth.claims.role == \\"admin\\""}',
        )
        error = await expect_rpc_error(
            policed.stub.Count(pb.CountRequest(), metadata=bearer(sub="v", role="viewer")), DENIED
        )
        assert denied_by(error) == keys.QUERY_CONDITION
        counted = await policed.stub.Count(
            pb.CountRequest(), metadata=bearer(sub="a", role="admin")
        )
        assert counted.count == 0
