"""A sidecar SIGKILLed while child runs finish, cancels cascade and events cross partitions:
after a restart every parent gets its child's result exactly once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from tests.api.test_process import channel_to, completions, free_port, start_process
from tests.helpers import KEYS, Stub, eventually, to_python, value, wait_for_status

pytestmark = [
    pytest.mark.slow,
]

WORKFLOWS = Path(__file__).parent / "workflows_family"
FAMILIES = 24  # Parents whose children are sent their event around the kill.
DOOMED = 8  # Parents cancelled around the kill, their waiting children with them.
WAITS_S = 60.0  # Bounds each wait; none stands for a latency target.
CHILD_TASK = "/do/0/child"


async def _run(stub: Stub, workflow: str, data: dict[str, Any]) -> str:
    reply = await stub.Run(pb.RunRequest(workflow_id=f"family.{workflow}.1.0.0", input=value(data)))
    return reply.instance_id


async def _children_in(stub: Stub, status: pb.WorkflowStatus.ValueType, count: int) -> bool:
    reply = await stub.Count(pb.CountRequest(workflow_id="family.child.1.0.0", status=[status]))
    return reply.count == count


async def _child_results(redis: Redis, instance_id: str) -> int:
    """How many times the parent's history shows its child run's task completed."""
    events: Any = await redis.xrange(KEYS.history(instance_id))
    found = 0
    for _, fields in events:
        event = json.loads(fields[b"e"])
        found += (event.get("type"), event.get("task")) == ("task.completed", CHILD_TASK)
    return found


@pytest.mark.timeout(WAITS_S * 3)
async def test_a_killed_sidecar_hands_each_parent_its_childs_result_once(
    redis: Redis, redis_url: str
) -> None:
    port = free_port()
    first = await start_process(redis_url, port, workflows=WORKFLOWS)
    try:
        async with channel_to(port) as stub:
            parents = [await _run(stub, "parent", {"key": f"k{n}"}) for n in range(FAMILIES)]
            doomed = [await _run(stub, "parent", {"key": f"doomed{n}"}) for n in range(DOOMED)]
            await eventually(
                lambda: _children_in(stub, pb.WORKFLOW_STATUS_WAITING, FAMILIES + DOOMED),
                timeout_s=WAITS_S,
                what="every child listening",
            )
            # Each emitter's event goes through its partition's outbox to a child's partition.
            for n in range(FAMILIES):
                await _run(stub, "emitter", {"key": f"k{n}", "value": n})
            for instance_id in doomed:
                await stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="enough"))
    finally:
        first.kill()  # SIGKILL, with events, results and cascades in flight.
        await first.wait()

    second = await start_process(redis_url, port, workflows=WORKFLOWS)
    try:
        async with channel_to(port) as stub:
            for n, parent in enumerate(parents):
                done = await wait_for_status(
                    stub, parent, {pb.WORKFLOW_STATUS_COMPLETED}, timeout_s=WAITS_S
                )
                assert to_python(done.output) == {"got": {"key": f"k{n}", "value": n}}
                assert await completions(redis, parent) == 1
                assert await _child_results(redis, parent) == 1
            for parent in doomed:
                record = await stub.GetStatus(pb.GetStatusRequest(instance_id=parent))
                assert record.status == pb.WORKFLOW_STATUS_CANCELLED
            await eventually(
                lambda: _children_in(stub, pb.WORKFLOW_STATUS_CANCELLED, DOOMED),
                timeout_s=WAITS_S,
                what="the doomed parents' children cancelled in the cascade",
            )
    finally:
        second.terminate()
        await second.wait()
