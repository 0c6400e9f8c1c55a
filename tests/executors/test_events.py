"""Events end to end: a workflow's emit and the Emit rpc reach the listen that correlates."""

from __future__ import annotations

from pathlib import Path

from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from tests.helpers import (
    make_settings,
    running_sidecar,
    subscribed,
    to_python,
    value,
    wait_for_status,
)

EVENTS_DIR = Path(__file__).parent / "events"
DONE = {pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED}


async def test_emit_and_the_emit_rpc_reach_the_correlated_listener(
    redis: Redis, redis_url: str
) -> None:
    async with running_sidecar(make_settings(redis_url, workflows=EVENTS_DIR)) as (_, stub):
        listeners = {
            order: (
                await stub.Run(
                    pb.RunRequest(
                        workflow_id="tests.paid-listener.1.0.0", input=value({"orderId": order})
                    )
                )
            ).instance_id
            for order in ("o-1", "o-2", "o-3")
        }
        for instance_id in listeners.values():
            await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        announced = await stub.Run(
            pb.RunRequest(
                workflow_id="tests.paid-announcer.1.0.0",
                input=value({"orderId": "o-1", "amount": 30}),
            )
        )
        done = await wait_for_status(stub, announced.instance_id, DONE)
        assert to_python(done.output)["type"] == "com.example.order.paid"
        first = await wait_for_status(stub, listeners["o-1"], DONE)
        assert to_python(first.output) == {"paid": 30}
        await stub.Emit(
            pb.EmitRequest(
                type="com.example.order.paid",
                source="billing",
                data=value({"orderId": "o-2", "amount": 12}),
            )
        )
        second = await wait_for_status(stub, listeners["o-2"], DONE)
        assert to_python(second.output) == {"paid": 12}
        third = await stub.GetStatus(pb.GetStatusRequest(instance_id=listeners["o-3"]))
        assert third.status == pb.WORKFLOW_STATUS_WAITING
        # Finished listeners are unsubscribed; the waiting one still is.
        members = await subscribed(redis, "com.example.order.paid")
        assert members == {listeners["o-3"].encode()}
