"""Sidecars with policies, tokens and the admin stub, for the policy tests."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import jwt
from google.rpc import error_details_pb2
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.admin.v1 import admin_pb2_grpc as admin_pb_grpc
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from okra_sidecar.config import AuthSettings, HostSettings, PolicySettings, Settings
from okra_sidecar.server import Sidecar
from okra_sidecar.telemetry import Telemetry
from tests.helpers import (
    KEYS,
    Stub,
    eventually,
    expect_rpc_error,
    make_settings,
    redis_fingerprint,
    rich_status,
    running_sidecar,
    value,
)

if TYPE_CHECKING:
    from okra_client.gen.admin.v1.admin_pb2_grpc import PolicyAdminServiceAsyncStub as AdminStub
    from okra_client.gen.workflow.v1.operator_pb2_grpc import (
        WorkflowOperatorAPIAsyncStub as OperatorStub,
    )
else:
    AdminStub = admin_pb_grpc.PolicyAdminServiceStub
    OperatorStub = opb_grpc.WorkflowOperatorAPIStub

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
# Key names as the policed sidecars see them: instance limits counted in namespace `app`.
APP_KEYS = replace(KEYS, scope="app")


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


@asynccontextmanager
async def operated(
    redis_url: str, tmp_path: Path, policies: dict[str, Any]
) -> AsyncIterator[tuple[Policed, OperatorStub]]:
    """A policed sidecar with `policies`, and a WorkflowOperatorAPI stub on it."""
    path = write_policies(tmp_path, json.dumps(policies))
    async with policed_sidecar(policy_settings(redis_url, path)) as policed:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{policed.sidecar.port}") as channel:
            yield policed, OperatorStub(channel)


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


class WriteRecorder:
    """The keys Redis reports written (keyspace notifications) while an action runs.

    Exact and cheap: nothing is read before the action but one marker write per node, so a
    call can be made right after the state it depends on (a spent rate limit) is reached. On
    a Redis Cluster each master notifies only of its own writes: every master gets its own
    markers and subscription.
    """

    def __init__(self, redis: Redis, nodes: list[tuple[Redis, PubSub]]) -> None:
        self._redis = redis
        self._nodes = nodes

    async def keys_written_by(self, action: Callable[[], Awaitable[object]]) -> set[bytes]:
        """Run `action`; the keys written from its start until it returned, audit excluded."""
        # Redis sends notifications in the order of the writes: everything between a node's
        # two markers' notifications was written there while the action ran.
        marks = [_markers(self._redis, node) for node, _ in self._nodes]
        for (node, _), (start, _) in zip(self._nodes, marks, strict=True):
            await node.set(start, b"")
        try:
            await action()
        finally:
            for (node, _), (_, end) in zip(self._nodes, marks, strict=True):
                await node.set(end, b"")
        written: set[bytes] = set()
        for (node, pubsub), (start, end) in zip(self._nodes, marks, strict=True):
            written |= await _written_between(pubsub, start, end)
            await node.delete(start, end)
        return written - {AUDIT_KEY}


def _markers(redis: Redis, node: Redis) -> tuple[bytes, bytes]:
    """Two marker keys that `node` serves: one hash tag of a slot of its own, on a Cluster."""
    served_by = getattr(redis, "get_node_from_key", None)
    where = node.connection_pool.connection_kwargs
    for _ in range(1000):
        tag = f"{{okra-test:mark:{uuid.uuid4()}}}"
        owner = served_by(tag) if served_by is not None else None
        if owner is None or (owner.host, owner.port) == (where["host"], where["port"]):
            return f"{tag}:start".encode(), f"{tag}:end".encode()
    raise AssertionError(f"no key of 1000 tried is served by {where['host']}:{where['port']}")


async def _written_between(pubsub: PubSub, start: bytes, end: bytes) -> set[bytes]:
    written: set[bytes] = set()
    started = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is None:
            if loop.time() > deadline:
                raise AssertionError("the end marker's keyspace notification never came")
            continue
        key = bytes(message["channel"]).split(b"__:", 1)[1]
        if key == end:
            return written
        if started and key != start:
            written.add(key)
        started = started or key == start


def _nodes_of(redis: Redis) -> list[Redis]:
    """The client of each master: the client itself on a single Redis."""
    primaries = getattr(redis, "get_primaries", None)
    if primaries is None:
        return [redis]
    return [Redis(host=node.host, port=node.port) for node in primaries()]


@asynccontextmanager
async def recording_writes(redis: Redis) -> AsyncIterator[WriteRecorder]:
    """Keyspace notifications on for the block (as they were after it), and a recorder."""
    setting = "notify-keyspace-events"
    nodes = _nodes_of(redis)
    opened: list[tuple[Redis, PubSub, str]] = []
    try:
        for node in nodes:
            previous = next(iter((await node.config_get(setting)).values()), None) or ""
            await node.config_set(setting, "KA")
            pubsub = node.pubsub()
            opened.append((node, pubsub, previous))
            await pubsub.psubscribe("__keyspace@*__:*")
        yield WriteRecorder(redis, [(node, pubsub) for node, pubsub, _ in opened])
    finally:
        for node, pubsub, previous in opened:
            await pubsub.aclose()
            await node.config_set(setting, previous)
            if node is not redis:
                await node.aclose()


async def writes_during(
    redis: Redis, action: Callable[[], Awaitable[object]], *, wait_quiet: bool = True
) -> set[bytes]:
    """Run `action` and return the keys it wrote, ignoring the audit stream (by design).

    With `wait_quiet`, background engine writes from earlier calls are let finish first.
    """
    if wait_quiet:
        await settle(redis)
    async with recording_writes(redis) as recorder:
        return await recorder.keys_written_by(action)


async def audit_records(admin: AdminStub, limit: int = 100) -> list[admin_pb.AuditRecord]:
    reply = await admin.ListAuditRecords(
        admin_pb.ListAuditRecordsRequest(limit=limit), metadata=ADMIN
    )
    return list(reply.records)


__all__ = [
    "ADMIN",
    "AdminStub",
    "OperatorStub",
    "Policed",
    "audit_records",
    "bearer",
    "denied_by",
    "eventually",
    "operated",
    "policed_sidecar",
    "recording_writes",
    "policy_settings",
    "retry_delay_s",
    "run",
    "settle",
    "token",
    "write_policies",
    "writes_during",
]


DENIED = grpc.StatusCode.PERMISSION_DENIED
WAITING = {pb.WORKFLOW_STATUS_WAITING}


async def expect_denied(
    redis: Redis,
    call: Callable[[], Awaitable[object]],
    *,
    policy: str,
    message: str,
    code: grpc.StatusCode = DENIED,
) -> grpc.aio.AioRpcError:
    """`call()` fails with `code`, names `policy` and says `message`, and writes nothing.

    `call` makes the rpc when called: grpc.aio sends a call as soon as it is created, so a
    call made before the "before" snapshot would have its writes counted as the baseline.
    """
    error: list[grpc.aio.AioRpcError] = []

    async def attempt() -> None:
        error.append(await expect_rpc_error(call(), code))

    written = await writes_during(redis, attempt)
    # Said in the message: pytest rewrites the asserts of test modules only, not this one.
    assert written == set(), f"the call wrote {sorted(written)}"
    assert denied_by(error[0]) == policy
    assert message in (error[0].details() or "")
    return error[0]
