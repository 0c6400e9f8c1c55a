"""A bulk operation outlives the sidecar running it: another finishes it, each instance once."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.engine.runtime.bulk import bulk_signal_id
from tests.api.test_process import channel_to, free_port, start_process
from tests.helpers import KEYS, eventually, make_settings, running_sidecar

if TYPE_CHECKING:
    from okra_client.gen.workflow.v1.operator_pb2_grpc import (
        WorkflowOperatorAPIAsyncStub as OperatorStub,
    )
else:
    OperatorStub = opb_grpc.WorkflowOperatorAPIStub

pytestmark = pytest.mark.slow
INSTANCES = 2000


async def progress(operator: OperatorStub, operation_id: str) -> opb.BulkOperation:
    reply = await operator.GetBulkOperation(opb.GetBulkOperationRequest(operation_id=operation_id))
    return reply.operation


async def test_a_sidecar_killed_mid_bulk_leaves_the_rest_to_another_and_none_twice(
    redis: Redis, redis_url: str
) -> None:
    port = free_port()
    first = await start_process(redis_url, port)
    try:
        async with channel_to(port) as stub:
            ids: list[str] = []
            for start in range(0, INSTANCES, 100):
                started = await asyncio.gather(
                    *(
                        stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0", tags={"b": "1"}))
                        for _ in range(start, min(start + 100, INSTANCES))
                    )
                )
                ids.extend(s.instance_id for s in started)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                operator = OperatorStub(channel)
                reply = await operator.StartBulkOperation(
                    opb.StartBulkOperationRequest(
                        filter=pb.QueryRequest(tags={"b": "1"}),
                        action=opb.BULK_ACTION_SIGNAL,
                        signal="poke",
                        max_per_second=250,
                    )
                )
                assert reply.matched == INSTANCES
                operation_id = reply.operation_id

                async def under_way() -> bool:
                    return (await progress(operator, operation_id)).done >= 200

                await eventually(under_way, timeout_s=60, what="the bulk operation got going")
        first.send_signal(signal.SIGKILL)
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    killed_at = await redis.hget(KEYS.bulk(operation_id), "done")
    assert killed_at is not None and 200 <= int(killed_at) < INSTANCES

    async with running_sidecar(make_settings(redis_url)) as (sidecar, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            operator = OperatorStub(channel)

            async def completed() -> bool:
                state = (await progress(operator, operation_id)).state
                return state == opb.BULK_OPERATION_STATE_COMPLETED

            await eventually(completed, timeout_s=120, what="the other sidecar finished it")
            operation = await progress(operator, operation_id)
    assert (operation.matched, operation.done, operation.skipped, operation.failed) == (
        INSTANCES,
        INSTANCES,
        0,
        0,
    )
    # Each instance got the signal exactly once: one id delivered, one event in its inbox.
    async with redis.pipeline(transaction=False) as pipe:
        for instance_id in ids:
            pipe.smembers(KEYS.signal_ids(instance_id))
            pipe.xlen(KEYS.inbox(instance_id))
        replies: list[Any] = await pipe.execute()
    for index, instance_id in enumerate(ids):
        delivered, inbox = replies[2 * index], replies[2 * index + 1]
        assert delivered == {bulk_signal_id(operation_id, instance_id).encode()}, instance_id
        assert inbox == 1, instance_id
    outcomes = await redis.hvals(KEYS.bulk_items(operation_id))
    assert len(outcomes) == INSTANCES and set(outcomes) == {b"done"}
