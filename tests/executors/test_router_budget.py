"""The event router's filter expressions are bounded: a hostile one cannot stall the routing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from tests.helpers import FAST_ENGINE, Stub, make_settings, running_sidecar, to_python

pytestmark = pytest.mark.slow
ENDLESS = "${ def f: f; f }"


def write_workflows(directory: Path) -> Path:
    """An event-triggered workflow whose filter never ends, and a plain event-triggered one."""
    (directory / "hostile.yaml").write_text(
        "document: {dsl: '1.0.0', namespace: router, name: hostile, version: '1.0.0'}\n"
        "schedule:\n"
        "  on:\n"
        "    one:\n"
        f"      with: {{type: router.tick, data: '{ENDLESS}'}}\n"
        "do:\n"
        "  - record:\n"
        "      set: {started: true}\n"
    )
    (directory / "plain.yaml").write_text(
        "document: {dsl: '1.0.0', namespace: router, name: plain, version: '1.0.0'}\n"
        "schedule:\n"
        "  on:\n"
        "    one:\n"
        "      with: {type: router.other, data: '${ .n > 1 }'}\n"
        "do:\n"
        "  - record:\n"
        "      set: {n: '${ .[0].data.n }'}\n"
    )
    return directory


async def instances(stub: Stub, workflow_id: str) -> list[pb.WorkflowInstance]:
    page = await stub.Query(pb.QueryRequest(workflow_id=workflow_id, limit=100))
    return list(page.instances)


async def emit(stub: Stub, event_type: str, event_id: str, n: int) -> None:
    request = pb.EmitRequest(type=event_type, source="tests", id=event_id)
    request.data.struct_value.update({"n": n})
    await stub.Emit(request)


async def test_an_endless_trigger_filter_does_not_stop_other_events_being_routed(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    # The budgets of engine processes apply to the router's expressions too.
    engine = replace(FAST_ENGINE, processes=1, expression_timeout_ms=500, turn_timeout_ms=5000)
    settings = replace(make_settings(redis_url, workflows=write_workflows(tmp_path)), engine=engine)
    async with running_sidecar(settings) as (_, stub):
        for number in range(3):
            await emit(stub, "router.tick", f"hostile-{number}", number)
        await emit(stub, "router.other", "plain-1", 1)  # filtered out by its expression
        await emit(stub, "router.other", "plain-2", 2)
        done: list[pb.WorkflowInstance] = []
        for _ in range(400):
            done = [
                i
                for i in await instances(stub, "router.plain.1.0.0")
                if i.status == pb.WORKFLOW_STATUS_COMPLETED
            ]
            if done:
                break
            await asyncio.sleep(0.05)
        [instance] = done
        assert to_python(instance.output) == {"n": 2}
        # The filter that never ends matched nothing: it started no instance.
        assert await instances(stub, "router.hostile.1.0.0") == []
