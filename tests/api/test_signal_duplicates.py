"""A repeated signal id is accepted and delivered once, even after it finished the instance."""

from __future__ import annotations

import asyncio

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from tests.helpers import expect_rpc_error, make_settings, running_sidecar, value, wait_for_status

DONE = {pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED}
PAIRS = 100


def approve(instance_id: str, by: str) -> pb.SignalRequest:
    return pb.SignalRequest(
        instance_id=instance_id, signal="approve", signal_id=f"ok-{by}", payload=value({"by": by})
    )


async def test_signal_repeated_after_it_finished_the_instance_is_a_duplicate(
    redis: Redis, redis_url: str
) -> None:
    async with running_sidecar(make_settings(redis_url)) as (_, stub):
        started = await stub.Run(
            pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": 1}))
        )
        first = await stub.Signal(approve(started.instance_id, "bo"))
        done = await wait_for_status(stub, started.instance_id, DONE)
        assert done.status == pb.WORKFLOW_STATUS_COMPLETED
        # The client lost the first reply and retries: the signal was delivered, not an error.
        again = await stub.Signal(approve(started.instance_id, "bo"))
        assert (first.duplicate, again.duplicate) == (False, True)
        assert again.signal_id == first.signal_id == "ok-bo"
        # A new signal id to the finished instance is still refused.
        other = pb.SignalRequest(instance_id=started.instance_id, signal="approve")
        error = await expect_rpc_error(stub.Signal(other), grpc.StatusCode.FAILED_PRECONDITION)
        assert "is already completed" in (error.details() or "")


async def test_identical_pairs_through_two_sidecars_deliver_once(
    redis: Redis, redis_url: str
) -> None:
    settings = make_settings(redis_url)
    async with running_sidecar(settings) as (_, one), running_sidecar(settings) as (_, two):
        runs = await asyncio.gather(
            *(
                one.Run(
                    pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": i}))
                )
                for i in range(PAIRS)
            )
        )
        ids = [r.instance_id for r in runs]
        for instance_id in ids:
            await wait_for_status(one, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        # Each pair is one signal sent through both sidecars at once.
        replies = await asyncio.gather(
            *(
                stub.Signal(approve(instance_id, str(n)))
                for n, instance_id in enumerate(ids)
                for stub in (one, two)
            )
        )
        pairs = [replies[i : i + 2] for i in range(0, len(replies), 2)]
        # Whichever of the two came first delivered it; the other is the duplicate.
        assert [sorted([a.duplicate, b.duplicate]) for a, b in pairs] == [[False, True]] * PAIRS
        outputs = [await wait_for_status(two, instance_id, DONE) for instance_id in ids]
        assert [o.status for o in outputs] == [pb.WORKFLOW_STATUS_COMPLETED] * PAIRS
        # Retried once more after every instance finished: each is a duplicate, no error.
        retried = await asyncio.gather(
            *(two.Signal(approve(instance_id, str(n))) for n, instance_id in enumerate(ids))
        )
        assert all(r.duplicate for r in retried)
