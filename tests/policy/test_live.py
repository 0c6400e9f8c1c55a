"""Policy changes at run time: every sidecar sharing the Redis applies them.

How soon is measured by `python -m bench.propagation`, not asserted here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.errors import PolicyLoadError
from okra_sidecar.policy import document as keys
from okra_sidecar.server import start_sidecar
from tests.helpers import bad_request_fields, eventually, expect_rpc_error
from tests.policy.support import (
    ADMIN,
    AdminStub,
    denied_by,
    policed_sidecar,
    policy_settings,
    run,
    write_policies,
    writes_during,
)

BLOCK_USER = '{"policy.workflow.run.blocked": ["user.*"]}'


async def applied_version(admin: AdminStub) -> int:
    reply = await admin.GetPolicies(admin_pb.GetPoliciesRequest(), metadata=ADMIN)
    return reply.version


async def until_version(admin: AdminStub, version: int) -> None:
    """Wait until the sidecar behind `admin` applies `version`."""

    async def applied() -> bool:
        return await applied_version(admin) >= version

    await eventually(applied, what=f"policy version {version} applied")


async def test_an_admin_change_reaches_every_sidecar(redis: Redis, redis_url: str) -> None:
    async with (
        policed_sidecar(policy_settings(redis_url)) as first,
        policed_sidecar(policy_settings(redis_url)) as second,
    ):
        assert await run(second.stub, "user.onboarding.1.0.0")
        reply = await first.admin.SetPolicies(
            admin_pb.SetPoliciesRequest(text=BLOCK_USER), metadata=ADMIN
        )
        assert reply.keys == [keys.RUN_BLOCKED]
        # The sidecar that took the change applies it before answering; the other follows.
        assert await applied_version(first.admin) == reply.version
        await until_version(second.admin, reply.version)
        for policed in (first, second):
            error = await expect_rpc_error(
                policed.stub.Run(pb.RunRequest(workflow_id="user.onboarding.1.0.0")),
                grpc.StatusCode.PERMISSION_DENIED,
            )
            assert denied_by(error) == keys.RUN_BLOCKED
        policies = await second.admin.GetPolicies(admin_pb.GetPoliciesRequest(), metadata=ADMIN)
        assert policies.source == "admin:platform"


async def test_a_changed_file_reaches_every_sidecar(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    path = write_policies(tmp_path, "{}")
    async with (
        policed_sidecar(policy_settings(redis_url, path, watch_interval_s=0.5)) as watching,
        policed_sidecar(policy_settings(redis_url)) as other,
    ):
        version = await applied_version(watching.admin)
        path.write_text(BLOCK_USER)
        for policed in (watching, other):
            await until_version(policed.admin, version + 1)
            await expect_rpc_error(
                policed.stub.Run(pb.RunRequest(workflow_id="user.onboarding.1.0.0")),
                grpc.StatusCode.PERMISSION_DENIED,
            )


async def test_a_set_that_does_not_compile_is_refused_whole(
    tmp_path: Path, redis: Redis, redis_url: str, caplog: Any
) -> None:
    path = write_policies(tmp_path, BLOCK_USER)
    async with (
        policed_sidecar(policy_settings(redis_url, path)) as first,
        policed_sidecar(policy_settings(redis_url)) as second,
    ):
        before = await applied_version(first.admin)
        bad = (
            '{"policy.workflow.run.allowed": ["app.*"],'
            ' "policy.workflow.run.condition": "request.auth.claims.role ==",'
            ' "policy.workflow.query.maxResults": 0}'
        )

        async def refuse() -> None:
            error = await expect_rpc_error(
                first.admin.SetPolicies(admin_pb.SetPoliciesRequest(text=bad), metadata=ADMIN),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert "refused, the set in force stays" in (error.details() or "")
            assert bad_request_fields(error) == [keys.RUN_CONDITION, keys.QUERY_MAX_RESULTS]

        assert await writes_during(redis, refuse) == set()
        # A bad edit of the file is refused the same way, and logged.
        caplog.set_level(logging.ERROR, logger="okra_sidecar.policy.live")
        path.write_text('{"policy.workflow.run.blocked": "user.*"}')

        async def logged() -> bool:
            return any("must be a list of names" in r.getMessage() for r in caplog.records)

        await eventually(logged, what="the refused file edit is logged")
        for policed in (first, second):
            assert await applied_version(policed.admin) == before
            await expect_rpc_error(
                policed.stub.Run(pb.RunRequest(workflow_id="user.onboarding.1.0.0")),
                grpc.StatusCode.PERMISSION_DENIED,
            )


async def test_a_rate_limit_is_shared_by_the_sidecars_of_a_service(
    redis: Redis, redis_url: str
) -> None:
    async with (
        policed_sidecar(policy_settings(redis_url, service="orders")) as first,
        policed_sidecar(policy_settings(redis_url, service="orders")) as second,
        policed_sidecar(policy_settings(redis_url, service="billing")) as elsewhere,
    ):
        reply = await first.admin.SetPolicies(
            admin_pb.SetPoliciesRequest(text='{"policy.workflow.query.rateLimit": "5/minute"}'),
            metadata=ADMIN,
        )
        for policed in (second, elsewhere):
            await until_version(policed.admin, reply.version)
        for policed in (first, second, first, second, first):
            await policed.stub.Query(pb.QueryRequest())
        for policed in (first, second):
            error = await expect_rpc_error(
                policed.stub.Query(pb.QueryRequest()), grpc.StatusCode.RESOURCE_EXHAUSTED
            )
            assert denied_by(error) == keys.QUERY_RATE_LIMIT
            assert "shared by every sidecar of service orders" in (error.details() or "")
        # Another service has its own allowance.
        await elsewhere.stub.Query(pb.QueryRequest())


async def test_a_restart_keeps_a_newer_admin_change_until_the_file_changes(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    path = write_policies(tmp_path, BLOCK_USER)
    settings = policy_settings(redis_url, path)
    async with policed_sidecar(settings) as first:
        reply = await first.admin.SetPolicies(
            admin_pb.SetPoliciesRequest(text='{"policy.workflow.run.blocked": ["app.*"]}'),
            metadata=ADMIN,
        )
    async with policed_sidecar(settings) as again:
        current = await again.admin.GetPolicies(admin_pb.GetPoliciesRequest(), metadata=ADMIN)
        assert (current.version, current.source) == (reply.version, "admin:platform")
        assert await run(again.stub, "user.onboarding.1.0.0")
    path.write_text('{"policy.workflow.run.blocked": ["billing.*"]}')
    async with policed_sidecar(settings) as edited:
        current = await edited.admin.GetPolicies(admin_pb.GetPoliciesRequest(), metadata=ADMIN)
        assert (current.version, current.source) == (reply.version + 1, "file:policies.json")


async def test_a_sidecar_refuses_to_start_with_a_policy_file_that_does_not_compile(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    path = write_policies(tmp_path, '{"policy.workflow.cancel.condition": "instance.satus"}')
    with pytest.raises(PolicyLoadError, match="instance has no field `satus`"):
        await start_sidecar(policy_settings(redis_url, path))
