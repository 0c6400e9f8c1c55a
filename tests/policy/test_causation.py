"""Chains of instances that loop back are stopped, and one instance causes only so many."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.config import Settings
from okra_sidecar.policy.causation import CAUSE_METADATA
from okra_sidecar.server import Sidecar
from okra_sidecar.store.keys import ROUTER_GROUP
from tests.helpers import (
    Stub,
    expect_rpc_error,
    make_settings,
    running_sidecar,
    value,
    wait_for_status,
    with_host,
)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
WORKFLOWS = Path(__file__).parent / "workflows_causes"
WORKFLOW_PROTO = REPO_ROOT / "protos" / "okra" / "workflow" / "v1" / "workflow.proto"


@asynccontextmanager
async def loop_sidecar(
    redis_url: str, tmp_path: Path, *, per_minute: int = 1000
) -> AsyncIterator[tuple[Sidecar, Stub]]:
    workflows = tmp_path / "workflows"
    shutil.copytree(WORKFLOWS, workflows)
    shutil.copy(WORKFLOW_PROTO, workflows / "workflow.proto")  # for loop.callself's call
    settings: Settings = make_settings(redis_url, workflows=workflows)
    settings = with_host(settings, max_caused_per_minute=per_minute)
    async with running_sidecar(settings) as running:
        yield running


async def instances_of(stub: Stub, workflow_id: str) -> list[pb.WorkflowInstance]:
    page = await stub.Query(pb.QueryRequest(workflow_id=workflow_id, limit=1000))
    return list(page.instances)


async def routed(redis: Redis, sidecar: Sidecar) -> None:
    """Wait until the router has handled every published event (it deletes what it handled)."""
    stream = sidecar.store.keys.events
    for _ in range(400):
        groups = await redis.xinfo_groups(stream)
        router = [g for g in groups if g["name"] in (ROUTER_GROUP, ROUTER_GROUP.encode())]
        if await redis.xlen(stream) == 0 and router and router[0]["pending"] == 0:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the router did not handle every event")


async def test_a_workflow_triggered_by_its_own_event_runs_once(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with loop_sidecar(redis_url, tmp_path) as (sidecar, stub):
        await stub.Emit(pb.EmitRequest(type="loop.ping", source="https://okra.test/caller"))
        for _ in range(400):
            started = await instances_of(stub, "loop.echo.1.0.0")
            if started:
                break
            await asyncio.sleep(0.025)
        # Its commit published the event it emitted; once routed, it started nothing.
        await wait_for_status(stub, started[0].instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        await routed(redis, sidecar)
        assert len(await instances_of(stub, "loop.echo.1.0.0")) == 1


async def test_a_workflow_calling_its_own_run_over_grpc_is_refused(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with loop_sidecar(redis_url, tmp_path) as (sidecar, stub):
        where = {"host": "127.0.0.1", "port": sidecar.port}
        first = await stub.Run(pb.RunRequest(workflow_id="loop.callself.1.0.0", input=value(where)))
        failed = await wait_for_status(stub, first.instance_id, {pb.WORKFLOW_STATUS_FAILED})
        # The signed okra-cause named the calling instance: its Run would loop, so it is refused.
        assert "INVALID_ARGUMENT" in failed.error.detail
        assert "loop.callself may not run inside itself" in failed.error.detail
        assert len(await instances_of(stub, "loop.callself.1.0.0")) == 1


async def test_a_forged_cause_is_refused_or_ignored(redis_url: str, tmp_path: Path) -> None:
    async with loop_sidecar(redis_url, tmp_path) as (sidecar, stub):
        await expect_rpc_error(
            stub.Emit(
                pb.EmitRequest(
                    type="loop.fanned", source="https://x", extensions={"okracause": "x"}
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        # An okra-cause no sidecar signed names nothing: the Run is a plain one.
        where = {"host": "127.0.0.1", "port": 1}
        reply = await stub.Run(
            pb.RunRequest(workflow_id="loop.fanned.1.0.0", input=value(where)),
            metadata=((CAUSE_METADATA, "00000000-0000-4000-8000-000000000000.AAAA"),),
        )
        await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})


async def test_one_instance_causes_at_most_max_caused_per_minute(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with loop_sidecar(redis_url, tmp_path, per_minute=2) as (sidecar, stub):
        fan = await stub.Run(pb.RunRequest(workflow_id="loop.fan.1.0.0"))
        await wait_for_status(stub, fan.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        await routed(redis, sidecar)
        assert len(await instances_of(stub, "loop.fanned.1.0.0")) == 2
