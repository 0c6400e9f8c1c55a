"""Composition root: builds the store, engine and gRPC server, and shuts them down in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from dataclasses import dataclass
from typing import TextIO

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from okra_sidecar.api.servicer import WorkflowHostServicer
from okra_sidecar.api.status import ErrorInterceptor
from okra_sidecar.config import Settings
from okra_sidecar.engine.registry import WorkflowRegistry, read_directory
from okra_sidecar.engine.runner import EngineRunner
from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.gen.workflow.v1 import workflow_pb2 as pb
from okra_sidecar.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc
from okra_sidecar.store.embedded import EmbeddedRedis
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.redis_store import RedisStore

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WorkflowHostAPI"].full_name
HEALTH_INTERVAL_S = 1.0
REDIS_POOL_BASE = 128
REDIS_POOL_WAIT_S = 5.0
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


@dataclass
class Sidecar:
    """A running sidecar; `stop()` takes it down in the documented order."""

    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    runner: EngineRunner
    store: RedisStore
    redis: aioredis.Redis
    embedded: EmbeddedRedis | None
    redis_url: str
    health_task: asyncio.Task[None]

    async def stop(self, grace_s: float | None = None) -> None:
        # Shutdown order: refuse new calls, drain in-flight ones, stop the engine, close Redis.
        await self.health.enter_graceful_shutdown()
        self.health_task.cancel()
        await self.server.stop(grace_s)
        await self.runner.stop(timeout_s=grace_s or 0.0)
        await self.redis.aclose()
        if self.embedded is not None:
            await self.embedded.stop()


def build_server(
    *, servicer: WorkflowHostServicer, health_servicer: health_aio.HealthServicer, listen: str
) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with its interceptors, reflection and health, bound to `listen`."""
    # Interceptor order, outermost first: errors (map OkraError to status), then the servicer.
    server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=GRPC_OPTIONS)
    pb_grpc.add_WorkflowHostAPIServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return server, port


async def _watch_redis(store: RedisStore, health_servicer: health_aio.HealthServicer) -> None:
    """Report NOT_SERVING while Redis is unreachable, SERVING once it is back."""
    serving: bool | None = None
    while True:
        try:
            await store.ping()
            ok = True
        except StoreUnavailableError:
            ok = False
        if ok != serving:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, status)
            if serving is not None:
                logger.warning("Redis is %s", "reachable again" if ok else "unreachable")
            serving = ok
        await asyncio.sleep(HEALTH_INTERVAL_S)


async def start_sidecar(settings: Settings) -> Sidecar:
    """Start Redis (embedded if no URL), register definitions, start the engine and server."""
    embedded = None
    url = settings.redis.url
    if url is None:
        appendfsync = "always" if settings.redis.durability == "aof" else "everysec"
        embedded = EmbeddedRedis(
            data_dir=settings.redis.data_dir / "redis", appendfsync=appendfsync
        )
        url = await embedded.start()
    # A blocking pool makes a burst wait for a free connection instead of failing the call.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_BASE + 2 * settings.engine.concurrency,
        timeout=REDIS_POOL_WAIT_S,
        socket_connect_timeout=2,
        socket_timeout=10,
    )
    client = aioredis.Redis.from_pool(pool)
    try:
        store = RedisStore(
            redis=client,
            keys=RedisKeys(prefix=settings.redis.key_prefix, partitions=settings.redis.partitions),
            durability=settings.redis.durability,
        )
        await store.ping()
        registry = WorkflowRegistry(store=store)
        if settings.workflows_dir is not None:
            await registry.register(read_directory(settings.workflows_dir))
        runner = EngineRunner(
            store=store,
            registry=registry,
            settings=settings.engine,
            consumer=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
        )
        health_servicer = health_aio.HealthServicer()
        servicer = WorkflowHostServicer(store=store, registry=registry, settings=settings.host)
        server, port = build_server(
            servicer=servicer, health_servicer=health_servicer, listen=settings.server.listen
        )
        await runner.start()
        await server.start()
    except BaseException:
        await client.aclose()
        if embedded is not None:
            await embedded.stop()
        raise
    watcher = asyncio.create_task(_watch_redis(store, health_servicer))
    return Sidecar(
        server=server,
        port=port,
        health=health_servicer,
        runner=runner,
        store=store,
        redis=client,
        embedded=embedded,
        redis_url=url,
        health_task=watcher,
    )


def print_hints(sidecar: Sidecar, settings: Settings, out: TextIO) -> None:
    host = settings.server.listen.rpartition(":")[0]
    address = f"{host}:{sidecar.port}"
    redis_line = (
        f"embedded redis-server, data in {settings.redis.data_dir / 'redis'}"
        if sidecar.embedded
        else sidecar.redis_url
    )
    api = SERVICE_NAME
    print(
        f"okra-sidecar listening on {address} (Redis: {redis_line})\n"
        "Try it with grpcurl (see README.md for more):\n"
        f"  grpcurl -plaintext {address} list\n"
        f"  grpcurl -plaintext {address} {api}/ListWorkflows\n"
        f'  grpcurl -plaintext -d \'{{"workflowId": "examples.approval.1.0.0", '
        f'"input": {{"requester": "ada", "amount": 120}}}}\' {address} {api}/Run\n'
        f'  grpcurl -plaintext -d \'{{"instanceId": "<id from Run>"}}\' {address} '
        f"{api}/GetStatus",
        file=out,
        flush=True,
    )


async def serve(settings: Settings, *, out: TextIO = sys.stdout) -> None:
    """Run until SIGTERM or SIGINT, then drain calls and stop the engine cleanly."""
    sidecar = await start_sidecar(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print_hints(sidecar, settings, out)
    try:
        await stop.wait()
        logger.info("stopping: draining calls for up to %.0fs", settings.server.grace_s)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await sidecar.stop(settings.server.grace_s)
