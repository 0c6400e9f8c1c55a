"""Sidecars with policies, tokens and the admin stub, for the policy tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import jwt
from google.rpc import error_details_pb2
from redis.asyncio import Redis

from okra_sidecar.config import AuthSettings, HostSettings, PolicySettings, Settings
from okra_sidecar.gen.admin.v1 import admin_pb2 as admin_pb
from okra_sidecar.gen.admin.v1 import admin_pb2_grpc as admin_pb_grpc
from okra_sidecar.gen.workflow.v1 import workflow_pb2 as pb
from okra_sidecar.server import Sidecar
from okra_sidecar.telemetry import Telemetry
from tests.helpers import (
    Stub,
    eventually,
    make_settings,
    redis_fingerprint,
    rich_status,
    running_sidecar,
    value,
)

if TYPE_CHECKING:
    from okra_sidecar.gen.admin.v1.admin_pb2_grpc import PolicyAdminServiceAsyncStub as AdminStub
else:
    AdminStub = admin_pb_grpc.PolicyAdminServiceStub

WORKFLOWS = Path(__file__).parent / "workflows"
SECRET = "policy-tests-secret-long-enough-for-hs256"
ISSUER = "https://issuer.test"
AUDIENCE = "okra-sidecar"
AUDIT_KEY = b"okra:audit"
Metadata = tuple[tuple[str, str], ...]


def token(**claims: Any) -> str:
    """An HS256 token for this suite's issuer and audience, valid for five minutes."""
    # An hour: ADMIN is built at import, minutes before a full run reaches the tests using it.
    payload = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, SECRET)


def bearer(**claims: Any) -> Metadata:
    """Call metadata carrying a token with `claims`."""
    return (("authorization", f"Bearer {token(**claims)}"),)


ADMIN = bearer(sub="platform", okra_policy_admin=True)


def policy_settings(
    redis_url: str,
    policies: Path | None = None,
    *,
    mode: str = "optional",
    env: dict[str, str] | None = None,
    service: str = "orders",
    namespace: str = "app",
    max_active: int = 0,
    watch_interval_s: float = 0.1,
) -> Settings:
    settings = make_settings(
        redis_url, workflows=WORKFLOWS, host=HostSettings(max_concurrent_instances=max_active)
    )
    return replace(
        settings,
        policies_file=policies,
        auth=AuthSettings(mode=mode, issuer=ISSUER, audience=AUDIENCE, hs256_secret=SECRET),
        policy=PolicySettings(env=env or {}, watch_interval_s=watch_interval_s),
        telemetry=replace(settings.telemetry, service_name=service, service_namespace=namespace),
    )


@dataclass
class Policed:
    """A running sidecar with its workflow stub and its admin stub."""

    sidecar: Sidecar
    stub: Stub
    admin: AdminStub


@asynccontextmanager
async def policed_sidecar(
    settings: Settings, *, telemetry: Telemetry | None = None
) -> AsyncIterator[Policed]:
    async with running_sidecar(settings, telemetry=telemetry) as (sidecar, stub):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
        try:
            yield Policed(sidecar, stub, admin_pb_grpc.PolicyAdminServiceStub(channel))
        finally:
            await channel.close()


def write_policies(directory: Path, text: str, name: str = "policies.json") -> Path:
    path = directory / name
    path.write_text(text)
    return path


async def run(stub: Stub, workflow_id: str, data: Any = None, **kw: Any) -> str:
    request = pb.RunRequest(workflow_id=workflow_id)
    if data is not None:
        request.input.CopyFrom(value(data))
    return (await stub.Run(request, **kw)).instance_id


def denied_by(error: grpc.aio.AioRpcError) -> str:
    """The policy key of the ErrorInfo detail ("" when there is none)."""
    for detail in rich_status(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.metadata.get("policy", ""))
    return ""


def retry_delay_s(error: grpc.aio.AioRpcError) -> float | None:
    for detail in rich_status(error).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


async def settle(redis: Redis, *, timeout_s: float = 5.0) -> dict[Any, str]:
    """Wait until the engine has stopped writing (turns and their acks finish in the background)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    previous = await redis_fingerprint(redis)
    while True:
        await asyncio.sleep(0.05)
        current = await redis_fingerprint(redis)
        if current == previous or loop.time() > deadline:
            return current
        previous = current


async def writes_during(
    redis: Redis, action: Callable[[], Awaitable[object]], *, wait_quiet: bool = True
) -> set[Any]:
    """Run `action` and return the keys it changed, ignoring the audit stream (by design).

    With `wait_quiet`, background engine writes from earlier calls are let finish first.
    """
    before = await settle(redis) if wait_quiet else await redis_fingerprint(redis)
    await action()
    after = await redis_fingerprint(redis)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return changed - {AUDIT_KEY}


async def audit_records(admin: AdminStub, limit: int = 100) -> list[admin_pb.AuditRecord]:
    reply = await admin.ListAuditRecords(
        admin_pb.ListAuditRecordsRequest(limit=limit), metadata=ADMIN
    )
    return list(reply.records)


__all__ = [
    "ADMIN",
    "AdminStub",
    "Policed",
    "audit_records",
    "bearer",
    "denied_by",
    "eventually",
    "policed_sidecar",
    "policy_settings",
    "retry_delay_s",
    "run",
    "settle",
    "token",
    "write_policies",
    "writes_during",
]
