"""A bulk operation outlives the sidecar running it: another finishes it, each instance once."""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.bulks import BULK_OPERATION_FIELD
from okra_sidecar.config import Settings
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


async def finished_elsewhere(settings: Settings, operation_id: str) -> opb.BulkOperation:
    """The operation once another sidecar, started with `settings`, has finished it."""
    async with running_sidecar(settings) as (sidecar, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            operator = OperatorStub(channel)

            async def completed() -> bool:
                state = (await progress(operator, operation_id)).state
                return state == opb.BULK_OPERATION_STATE_COMPLETED

            await eventually(completed, timeout_s=120, what="the other sidecar finished it")
            return await progress(operator, operation_id)


def tally(operation: opb.BulkOperation) -> tuple[int, int, int, int]:
    return operation.matched, operation.done, operation.skipped, operation.failed


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

    operation = await finished_elsewhere(make_settings(redis_url), operation_id)
    assert tally(operation) == (INSTANCES, INSTANCES, 0, 0)
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


RESUMED = 400
ONLY_SUSPENDED = "instance.status == 'suspended'"


async def test_a_bulk_resume_killed_mid_way_counts_each_instance_done_once(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    # Resume is decided on a suspended instance: one resumed before the kill and left pending
    # would be refused when decided again; it counts done by the history event naming it.
    policies = tmp_path / "policies.json"
    policies.write_text(json.dumps({"policy.workflow.resume.condition": ONLY_SUSPENDED}))
    port = free_port()
    first = await start_process(redis_url, port, env={"OKRA_POLICIES": str(policies)})
    try:
        async with channel_to(port) as stub:
            ids = [
                (
                    await stub.Run(
                        pb.RunRequest(workflow_id="tests.forever.1.0.0", tags={"r": "1"})
                    )
                ).instance_id
                for _ in range(RESUMED)
            ]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                operator = OperatorStub(channel)

                async def bulk(action: opb.BulkAction.ValueType, per_second: int) -> str:
                    reply = await operator.StartBulkOperation(
                        opb.StartBulkOperationRequest(
                            filter=pb.QueryRequest(tags={"r": "1"}),
                            action=action,
                            max_per_second=per_second,
                        )
                    )
                    assert reply.matched == RESUMED
                    return reply.operation_id

                suspending = await bulk(opb.BULK_ACTION_SUSPEND, 0)

                async def suspended() -> bool:
                    return (await progress(operator, suspending)).done == RESUMED

                await eventually(suspended, timeout_s=60, what="every instance suspended")
                operation_id = await bulk(opb.BULK_ACTION_RESUME, 100)

                async def under_way() -> bool:
                    return (await progress(operator, operation_id)).done >= 50

                await eventually(under_way, timeout_s=60, what="the bulk resume got going")
        first.send_signal(signal.SIGKILL)
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()

    settings = replace(make_settings(redis_url), policies_file=policies)
    operation = await finished_elsewhere(settings, operation_id)
    assert tally(operation) == (RESUMED, RESUMED, 0, 0), dict(operation.reasons)
    # Each instance was resumed exactly once, by this operation.
    async with redis.pipeline(transaction=False) as pipe:
        for instance_id in ids:
            pipe.xrange(KEYS.history(instance_id))
        histories: list[Any] = await pipe.execute()
    for instance_id, history in zip(ids, histories, strict=True):
        events = [json.loads(fields[b"e"]) for _, fields in history]
        resumed = [e for e in events if e["type"] == "workflow.resumed"]
        assert [e[BULK_OPERATION_FIELD] for e in resumed] == [operation_id], instance_id
