"""schedule.on: events published through Emit start instances whose input is the events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.engine.runtime.event_triggers import TRIGGER_TAG
from tests.helpers import Stub, make_settings, running_sidecar, to_python, value

TRIGGERED_DIR = Path(__file__).parent.parent / "workflows_triggered"


@pytest_asyncio.fixture
async def stub(redis: Redis, redis_url: str) -> AsyncIterator[Stub]:
    async with running_sidecar(make_settings(redis_url, workflows=TRIGGERED_DIR)) as (_, stub):
        yield stub


async def emit(stub: Stub, event_type: str, event_id: str, data: Any = None) -> None:
    request = pb.EmitRequest(type=event_type, source="tests", id=event_id)
    if data is not None:
        request.data.CopyFrom(value(data))
    await stub.Emit(request)


async def completed(stub: Stub, workflow_id: str, count: int) -> list[pb.WorkflowInstance]:
    for _ in range(250):
        page = await stub.Query(
            pb.QueryRequest(
                workflow_id=workflow_id, status=[pb.WORKFLOW_STATUS_COMPLETED], limit=100
            )
        )
        if len(page.instances) >= count:
            return list(page.instances)
        await asyncio.sleep(0.02)
    raise AssertionError(f"{workflow_id}: fewer than {count} completed instances")


async def test_each_matching_event_starts_one_instance_with_it_as_input(stub: Stub) -> None:
    await emit(stub, "com.example.order.paid", "e1", {"order": "A-1"})
    await emit(stub, "com.example.order.other", "e2", {"order": "B-1"})
    await emit(stub, "com.example.order.paid", "e1", {"order": "A-1"})  # the same event again
    await emit(stub, "com.example.order.paid", "e3", {"order": "A-2"})
    await completed(stub, "trig.paid.1.0.0", 2)
    await asyncio.sleep(0.3)  # a third instance would have started by now
    instances = await completed(stub, "trig.paid.1.0.0", 2)
    assert len(instances) == 2
    assert sorted(str(to_python(i.output)["orders"]) for i in instances) == [
        "['A-1']",
        "['A-2']",
    ]
    first = next(i for i in instances if to_python(i.output)["orders"] == ["A-1"])
    [event] = to_python(first.input)
    assert (event["type"], event["source"], event["id"]) == (
        "com.example.order.paid",
        "tests",
        "e1",
    )
    assert first.tags[TRIGGER_TAG] == "event"


async def test_all_waits_for_an_event_per_filter(stub: Stub) -> None:
    await emit(stub, "com.example.left", "l1")
    await asyncio.sleep(0.3)
    page = await stub.Query(pb.QueryRequest(workflow_id="trig.pair.1.0.0"))
    assert list(page.instances) == []
    await emit(stub, "com.example.left", "l2")
    await emit(stub, "com.example.right", "r1")
    [instance] = await completed(stub, "trig.pair.1.0.0", 1)
    assert to_python(instance.output) == {"types": ["com.example.left", "com.example.right"]}
    assert [e["id"] for e in to_python(instance.input)] == ["l1", "r1"]


async def test_list_workflows_names_the_event_trigger(stub: Stub) -> None:
    reply = await stub.ListWorkflows(pb.ListWorkflowsRequest())
    triggers = {w.workflow_id: list(w.triggers) for w in reply.workflows}
    assert triggers["trig.paid.1.0.0"] == ["manual", "event"]
