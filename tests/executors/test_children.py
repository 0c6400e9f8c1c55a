"""ChildStarter and a parent cancelled around a child's creation: no child outlives it."""

from __future__ import annotations

from typing import Any

import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.engine.interpreter.effects import Effect, EffectKind
from okra_sidecar.engine.runtime.cancelling import cancel_instance
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.executors.children import ChildStarter, child_instance_id
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.server import Sidecar
from okra_sidecar.store.effect_store import EffectEntry, RedisEffectStore
from tests.helpers import KEYS, Stub, wait_for_status

APPROVAL = {"namespace": "tests", "name": "approval", "version": "1.0.0"}


async def _parent(stub: Stub) -> str:
    reply = await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))
    await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_WAITING})
    return reply.instance_id


def _starter(sidecar: Sidecar, redis: Redis) -> ChildStarter:
    return ChildStarter(
        store=sidecar.store,
        effects=RedisEffectStore(redis=redis, keys=sidecar.store.keys),
        registry=WorkflowRegistry(store=sidecar.store),
    )


def _entry(parent: str) -> tuple[EffectEntry, dict[str, Any]]:
    request = {"workflow": APPROVAL, "input": {"amount": 1}}
    effect = Effect("c#1", EffectKind.CHILD, "/do/0/c", request).to_json()
    return EffectEntry(KEYS.partition(parent), "0-1", parent, effect), request


async def test_a_cancelled_parent_gets_no_child(
    sidecar: tuple[Sidecar, Stub], redis: Redis
) -> None:
    running, stub = sidecar
    parent = await _parent(stub)
    await cancel_instance(running.store, parent, reason="stop", now_ms=1)
    entry, request = _entry(parent)
    child = await _starter(running, redis).start(entry, request)
    assert child == child_instance_id(parent, "c#1")
    assert await running.store.get_instance(child) is None


async def test_a_child_created_as_its_parent_is_cancelled_is_cancelled_too(
    sidecar: tuple[Sidecar, Stub], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent's cancel lands between the starter's first look and the create, so its
    cascade finds no child: the starter's second look must."""
    running, stub = sidecar
    parent = await _parent(stub)
    starter = _starter(running, redis)
    looks: list[str] = []
    first_look = starter._parent_finished

    async def cancelled_after_the_first_look(parent_id: str) -> bool:
        finished = await first_look(parent_id)
        if not looks:
            await cancel_instance(running.store, parent_id, reason="stop", now_ms=1)
        looks.append(parent_id)
        return finished

    monkeypatch.setattr(starter, "_parent_finished", cancelled_after_the_first_look)
    entry, request = _entry(parent)
    child = await starter.start(entry, request)
    assert len(looks) == 2
    record = await running.store.get_instance(child)
    assert record is not None and record.status is InstanceStatus.CANCELLED
    assert record.cancel_reason == f"parent {parent} cancelled"
