"""Test helpers: a running sidecar on a free port, status polling and error assertions."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc
from redis.asyncio import Redis, RedisCluster

from okra_sidecar.config import (
    EngineSettings,
    HostSettings,
    RedisSettings,
    ServerSettings,
    Settings,
)
from okra_sidecar.ctk.runner import ENGINE as CTK_ENGINE
from okra_sidecar.errors import ERROR_DOMAIN, REASONS, Reason
from okra_sidecar.executors.relay import OutboxRelay
from okra_sidecar.server import Sidecar, start_sidecar
from okra_sidecar.store.cluster_client import cluster_redis
from okra_sidecar.store.effect_store import RedisEffectStore
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.outbox_store import RedisOutboxStore
from okra_sidecar.store.redis_store import RedisStore
from okra_sidecar.telemetry import Telemetry

if TYPE_CHECKING:
    # Only the type stubs know the async flavour of the generated stub.
    from okra_client.gen.workflow.v1.workflow_pb2_grpc import WorkflowHostAPIAsyncStub as Stub
else:
    Stub = pb_grpc.WorkflowHostAPIStub

WORKFLOWS_DIR = Path(__file__).parent / "workflows"
# The keys of the sidecars the tests start (the default prefix and partition count).
KEYS = RedisKeys()
# Turns in the test process, with fast timers and reads, and without budgets (only engine
# children can be held to them): the conformance kit's engine settings.
FAST_ENGINE = CTK_ENGINE
T = TypeVar("T")


class FakeClock:
    """Epoch ms that only the test moves: start_sidecar's `clock`, the engine's, ..."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def redis_for(url: str) -> Redis:
    """A client (bytes in, bytes out) of `url`: redis-py's RedisCluster for a Cluster's seed
    list, which answers the commands tests send, as server.parts.redis_client relies on."""
    if "," not in url:
        return Redis.from_url(url, decode_responses=False)
    return cast(Redis, cluster_redis(url, max_connections=32, socket_timeout=10, connect_timeout=2))


async def change_subscribers(redis: Redis, instance_id: str) -> int:
    """The change feed's subscriptions to the instance's channel: on a Cluster, summed over
    every node (a subscriber may hold its connection to any node, since PUBLISH reaches all)."""
    if isinstance(redis, RedisCluster):
        options: dict[str, Any] = {"target_nodes": RedisCluster.ALL_NODES}
    else:
        options = {}
    ((_, count),) = await redis.pubsub_numsub(KEYS.changes(instance_id), **options)
    return int(count)


async def command_calls(redis: Redis, command: str) -> int:
    """How often Redis ran `command` so far (INFO commandstats, summed over a Cluster's
    masters; commands that scripts run count too)."""
    if isinstance(redis, RedisCluster):
        by_node = await redis.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        nodes = list(by_node.values())
    else:
        nodes = [await redis.info("commandstats")]
    return sum(int(node.get(f"cmdstat_{command}", {}).get("calls", 0)) for node in nodes)


def make_settings(
    redis_url: str,
    *,
    host: HostSettings | None = None,
    engine: EngineSettings = FAST_ENGINE,
    workflows: Path | None = WORKFLOWS_DIR,
) -> Settings:
    return Settings(
        server=ServerSettings(listen="127.0.0.1:0", grace_s=1.0),
        redis=RedisSettings(url=redis_url),
        engine=engine,
        host=host or HostSettings(),
        workflows_dir=workflows,
    )


@asynccontextmanager
async def running_sidecar(
    settings: Settings,
    *,
    telemetry: Telemetry | None = None,
) -> AsyncIterator[tuple[Sidecar, Stub]]:
    """A sidecar started from server.start_sidecar on a free port, with a stub on it."""
    sidecar = await start_sidecar(settings, telemetry=telemetry)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    try:
        yield sidecar, pb_grpc.WorkflowHostAPIStub(channel)
    finally:
        await channel.close()
        await sidecar.stop(None)


def with_host(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, host=replace(settings.host, **changes))


def value(data: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(data, message)
    return message


def to_python(message: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(message)


async def wait_for_status(
    stub: Stub,
    instance_id: str,
    statuses: Iterable[int],
    *,
    timeout_s: float = 10.0,
    metadata: tuple[tuple[str, str], ...] = (),
) -> pb.WorkflowInstance:
    """Poll GetStatus until the instance reaches one of `statuses`."""
    wanted = set(statuses)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        instance = await stub.GetStatus(
            pb.GetStatusRequest(instance_id=instance_id), metadata=metadata
        )
        if instance.status in wanted:
            return instance
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"instance {instance_id} stayed {pb.WorkflowStatus.Name(instance.status)}"
            )
        await asyncio.sleep(0.02)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, what: str = ""
) -> float:
    """Poll `check` until it holds; returns the seconds it took.

    The deadline is generous on purpose: it only bounds a test that would otherwise hang, and
    never stands for a latency target (those are measured in bench/).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await check():
        if loop.time() - started > timeout_s:
            raise AssertionError(f"still false after {timeout_s}s: {what or check}")
        await asyncio.sleep(0.01)
    return loop.time() - started


async def expect_rpc_error(call: Awaitable[T], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Await a call that must fail with `code`; returns the error for further checks."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == code, f"expected {code.name}, got {exc.code().name}: {exc.details()}"
        return exc
    raise AssertionError(f"expected {code.name}, the call succeeded")


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, raw in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(raw, bytes)
            return status_pb2.Status.FromString(raw)
    return status_pb2.Status()


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The field paths of the google.rpc.BadRequest detail, empty when there is none."""
    fields: list[str] = []
    for detail in rich_status(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


async def held(redis: Redis, workflow_key: str = "", *, keys: RedisKeys = KEYS) -> int:
    """Instances admitted in the keys' limit scope (of one workflow when `workflow_key`)."""
    scope = keys.scope
    key = keys.limit_workflow(scope, workflow_key) if workflow_key else keys.limit_active(scope)
    return int(await redis.zcard(key))


async def eventually_held(
    redis: Redis, count: int, workflow_key: str = "", *, keys: RedisKeys = KEYS
) -> None:
    """Wait until the scope holds `count` (releases arrive through the relay)."""

    async def check() -> bool:
        return await held(redis, workflow_key, keys=keys) == count

    await eventually(check, what=f"{count} held {workflow_key}")


async def apply_outbox(store: RedisStore) -> int:
    """Apply every outbox entry as a sidecar's relay would; how many there were."""
    outbox = RedisOutboxStore(redis=store.redis, keys=store.keys)
    await outbox.ensure_groups()
    relay = OutboxRelay(
        outbox=outbox,
        effects=RedisEffectStore(redis=store.redis, keys=store.keys),
        limits=store.limits,
        consumer="test-relay",
        claim_idle_ms=60_000,
    )
    # On a Cluster a read answers with the first partitions that have entries, and a read an
    # earlier call left blocked may answer empty first; the others' come with the next reads.
    applied = 0
    for _ in range(store.keys.partitions + 2):
        entries = await outbox.read("test-relay", count=1000, block_ms=10)
        await relay.relay(entries)
        applied += len(entries)
    return applied


async def index_size(redis: Redis, index: Callable[[int], str], keys: RedisKeys = KEYS) -> int:
    """Members of an instance index over every partition (`index` names one partition's)."""
    return sum([await redis.zcard(index(p)) for p in range(keys.partitions)])


async def subscribed(redis: Redis, event_type: str, keys: RedisKeys = KEYS) -> set[bytes | str]:
    """The instances subscribed to `event_type`, over every partition."""
    found: set[bytes | str] = set()
    for partition in range(keys.partitions):
        found |= await redis.smembers(keys.subscribers(partition, event_type))
    return found


async def redis_fingerprint(redis: Redis) -> dict[bytes | str, str]:
    """Every key with a digest of its contents: equal fingerprints mean nothing was written.

    Contents, not DUMP: a read may step a hash table's incremental rehash, which reorders what
    DUMP serializes without changing a single field.
    """
    keys = sorted(await redis.keys("*"))
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
        types = [t.decode() if isinstance(t, bytes) else str(t) for t in await pipe.execute()]
    async with redis.pipeline(transaction=False) as pipe:
        for key, kind in zip(keys, types, strict=True):
            _read_contents(pipe, key, kind)
        contents = await pipe.execute()
    return {
        key: hashlib.sha256(f"{kind}:{_canonical(kind, found)}".encode()).hexdigest()
        for key, kind, found in zip(keys, types, contents, strict=True)
    }


def _read_contents(pipe: Any, key: bytes | str, kind: str) -> None:
    if kind == "hash":
        pipe.hgetall(key)
    elif kind == "set":
        pipe.smembers(key)
    elif kind == "zset":
        pipe.zrange(key, 0, -1, withscores=True)
    elif kind == "list":
        pipe.lrange(key, 0, -1)
    elif kind == "stream":
        # Entries and each consumer group's position and pending count: what a write moves.
        pipe.eval(
            "return {redis.call('XRANGE', KEYS[1], '-', '+'), "
            "redis.call('XINFO', 'GROUPS', KEYS[1])}",
            1,
            key,
        )
    else:
        pipe.dump(key)


def _canonical(kind: str, found: Any) -> str:
    if kind == "hash":
        return repr(sorted(found.items()))
    if kind == "set":
        return repr(sorted(found))
    return repr(found)


__all__ = [
    "FAST_ENGINE",
    "process_alive",
    "Stub",
    "WORKFLOWS_DIR",
    "bad_request_fields",
    "eventually",
    "expect_rpc_error",
    "make_settings",
    "redis_fingerprint",
    "rich_status",
    "running_sidecar",
    "to_python",
    "value",
    "wait_for_status",
    "with_host",
]


def process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a reaped child's pid is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The google.rpc.ErrorInfo detail of a failed call, None when it has none."""
    for detail in rich_status(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def detail_types(error: grpc.aio.AioRpcError) -> set[str]:
    """The message names of the google.rpc details, e.g. {"google.rpc.ErrorInfo"}."""
    return {detail.TypeName() for detail in rich_status(error).details}


def assert_reason(error: grpc.aio.AioRpcError, reason: Reason) -> dict[str, str]:
    """Check the call failed with `reason`, its code, and the details the reason promises.

    Returns the ErrorInfo metadata.
    """
    info = error_info(error)
    assert info is not None, f"{error.code().name} without ErrorInfo: {error.details()}"
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)
    code = REASONS[reason].code
    assert error.code().name == code, f"{reason} came with {error.code().name}, not {code}"
    types = detail_types(error)
    if code == "FAILED_PRECONDITION":
        assert "google.rpc.PreconditionFailure" in types
    if code == "UNAVAILABLE" or reason is Reason.RATE_LIMITED:
        assert "google.rpc.RetryInfo" in types
    return dict(info.metadata)
