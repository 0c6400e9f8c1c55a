"""Bearer tokens at the api: required and optional modes, bad tokens, the admin claim."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import jwt
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from tests.helpers import expect_rpc_error
from tests.policy.support import (
    ADMIN,
    AUDIENCE,
    ISSUER,
    SECRET,
    bearer,
    denied_by,
    policed_sidecar,
    policy_settings,
    writes_during,
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
RUN = pb.RunRequest(workflow_id="user.onboarding.1.0.0")


def with_token(raw: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {raw}"),)


def signed(**claims: object) -> str:
    # An hour: BAD_TOKENS is built at collection, minutes before a full run reaches these tests.
    payload = {"sub": "ada", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 3600}
    payload.update(claims)
    return jwt.encode(payload, SECRET)


BAD_TOKENS = [
    ((), "this sidecar requires a bearer token: send `authorization: Bearer <JWT>`"),
    (with_token("not-a-jwt"), "the bearer token is malformed"),
    (with_token(signed(exp=int(time.time()) - 600)), "the bearer token has expired"),
    (
        with_token(signed(aud="another-service")),
        "the bearer token is not meant for this sidecar: its audience must be 'okra-sidecar'",
    ),
    (with_token(signed(iss="https://elsewhere.test")), "was not issued by"),
    (with_token(jwt.encode({"sub": "x", "exp": 9999999999}, SECRET)), "lacks the 'iss'"),
    (with_token(signed().rsplit(".", 1)[0] + ".c2lnbmF0dXJl"), "signature does not verify"),
    ((("authorization", "Token abc"),), "must be `Bearer <JWT>`"),
]


async def test_required_mode_refuses_missing_and_bad_tokens(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    async with policed_sidecar(policy_settings(redis_url, mode="required")) as running:
        for metadata, message in BAD_TOKENS:

            async def call(
                metadata: tuple[tuple[str, str], ...] = metadata, message: str = message
            ) -> None:
                error = await expect_rpc_error(
                    running.stub.Run(RUN, metadata=metadata), UNAUTHENTICATED
                )
                assert message in (error.details() or ""), error.details()

            assert await writes_during(redis, call) == set()
        reply = await running.stub.Run(RUN, metadata=with_token(signed()))
        assert reply.instance_id


async def test_probes_and_reflection_need_no_token(redis: Redis, redis_url: str) -> None:
    async with policed_sidecar(policy_settings(redis_url, mode="required")) as running:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.sidecar.port}")
        try:
            health = health_pb2_grpc.HealthStub(channel)
            status = await health.Check(health_pb2.HealthCheckRequest())
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in stub.ServerReflectionInfo(iter([request])):
                names = {s.name for s in reply.list_services_response.service}
                break
            assert "okra.admin.v1.PolicyAdminService" in names
            assert "okra.workflow.v1.WorkflowHostAPI" in names
        finally:
            await channel.close()


async def test_optional_mode_is_anonymous_without_a_token_but_never_with_a_bad_one(
    redis: Redis, redis_url: str
) -> None:
    async with policed_sidecar(policy_settings(redis_url, mode="optional")) as running:
        assert (await running.stub.Run(RUN)).instance_id
        for metadata, message in BAD_TOKENS[1:]:
            error = await expect_rpc_error(
                running.stub.Run(RUN, metadata=metadata), UNAUTHENTICATED
            )
            assert message in (error.details() or "")


async def test_admin_rpcs_need_the_admin_claim(redis: Redis, redis_url: str) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as running:
        admin = running.admin
        request = admin_pb.GetPoliciesRequest()
        error = await expect_rpc_error(admin.GetPolicies(request), UNAUTHENTICATED)
        assert "needs a bearer token with the claim okra_policy_admin: true" in (
            error.details() or ""
        )
        error = await expect_rpc_error(
            admin.GetPolicies(request, metadata=bearer(sub="eve", okra_policy_admin="yes")),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert denied_by(error) == "claim:okra_policy_admin"
        assert "eve may not administer policies: the token lacks okra_policy_admin: true" in (
            error.details() or ""
        )

        async def set_without_claim() -> None:
            await expect_rpc_error(
                admin.SetPolicies(
                    admin_pb.SetPoliciesRequest(text='{"policy.workflow.cancel.allowed": false}'),
                    metadata=bearer(sub="eve"),
                ),
                grpc.StatusCode.PERMISSION_DENIED,
            )

        assert await writes_during(redis, set_without_claim) == set()
        reply = await admin.GetPolicies(request, metadata=ADMIN)
        assert (reply.version, reply.source) == (0, "none")
