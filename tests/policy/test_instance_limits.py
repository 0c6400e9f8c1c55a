"""Instance limits under concurrency: admitted atomically, freed when an instance finishes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.policy import document as keys
from tests.helpers import (
    KEYS,
    eventually_held,
    expect_rpc_error,
    held,
    index_size,
    wait_for_status,
)
from tests.policy import seed
from tests.policy.support import (
    APP_KEYS,
    denied_by,
    policed_sidecar,
    policy_settings,
    run,
    write_policies,
)

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
ONBOARDING = "user.onboarding.1.0.0"


async def attempt(stub: object, workflow_id: str) -> str | None:
    """Run, returning the instance id, or None when a limit refused it."""
    try:
        return await run(stub, workflow_id)  # type: ignore[arg-type]
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == EXHAUSTED, exc.details()
        assert denied_by(exc) == keys.MAX_CONCURRENT_INSTANCES
        return None


async def test_200_concurrent_runs_through_two_sidecars_admit_exactly_50(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    path = write_policies(tmp_path, seed.document(seed.INSTANCE_LIMITS))
    settings = policy_settings(redis_url, path)
    async with policed_sidecar(settings) as one, policed_sidecar(settings) as two:
        stubs = [one.stub, two.stub]
        results = await asyncio.gather(
            *(attempt(stubs[n % 2], "user.onboarding.1.0.0") for n in range(200))
        )
        admitted = [r for r in results if r is not None]
        assert len(admitted) == 50
        assert await held(redis, keys=APP_KEYS) == 50
        assert await held(redis, "user.onboarding", keys=APP_KEYS) == 50
        assert await index_size(redis, KEYS.index_all) == 50
        # One more is refused, with the limit named, through either sidecar.
        assert await attempt(one.stub, "user.onboarding.1.0.0") is None
        assert await attempt(two.stub, "user.onboarding.1.0.0") is None

        # A finished instance frees its place: one completes, one is cancelled.
        await wait_for_status(one.stub, admitted[0], {pb.WORKFLOW_STATUS_WAITING})
        await one.stub.Signal(pb.SignalRequest(instance_id=admitted[0], signal="approved"))
        await wait_for_status(one.stub, admitted[0], {pb.WORKFLOW_STATUS_COMPLETED})
        await two.stub.Cancel(pb.CancelRequest(instance_id=admitted[1], reason="make room"))
        await eventually_held(redis, 48, keys=APP_KEYS)
        again = await asyncio.gather(
            *(attempt(stubs[n % 2], "user.onboarding.1.0.0") for n in range(10))
        )
        assert sum(r is not None for r in again) == 2
        assert await held(redis, keys=APP_KEYS) == 50


async def test_each_service_namespace_has_its_own_allowance(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    path = write_policies(tmp_path, seed.document(seed.INSTANCE_LIMITS))
    app = policy_settings(redis_url, path, max_active=2)
    other = policy_settings(redis_url, path, max_active=2, namespace="billing")
    async with policed_sidecar(app) as one, policed_sidecar(other) as two:
        for _ in range(2):
            await run(one.stub, "user.onboarding.1.0.0")
        await expect_rpc_error(one.stub.Run(pb.RunRequest(workflow_id=ONBOARDING)), EXHAUSTED)
        # The billing service counts its own instances, not app's.
        for _ in range(2):
            await run(two.stub, "user.onboarding.1.0.0")
        await expect_rpc_error(two.stub.Run(pb.RunRequest(workflow_id=ONBOARDING)), EXHAUSTED)
        assert await held(redis, keys=APP_KEYS) == 2
        assert await held(redis, keys=replace(KEYS, scope="billing")) == 2


async def test_the_sidecar_config_limit_applies_when_tighter(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    path = write_policies(tmp_path, seed.document(seed.INSTANCE_LIMITS))
    settings = policy_settings(redis_url, path, max_active=3)
    async with policed_sidecar(settings) as running:
        for _ in range(3):
            await run(running.stub, "user.onboarding.1.0.0")
        error = await expect_rpc_error(
            running.stub.Run(pb.RunRequest(workflow_id="user.onboarding.1.0.0")), EXHAUSTED
        )
        assert denied_by(error) == "maxConcurrentInstances"
        assert "the limit of 3 concurrent instances (maxConcurrentInstances) is reached" in (
            error.details() or ""
        )
