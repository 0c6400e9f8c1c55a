"""What the command line runs: serve, an engine child, migrate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import replace
from typing import TextIO

import redis.asyncio as aioredis

from okra_sidecar.clock import now_ms
from okra_sidecar.config import Settings
from okra_sidecar.engine.runtime import board as turn_board
from okra_sidecar.engine.runtime.memory import limit_memory, refuse_core_dumps
from okra_sidecar.engine.runtime.processes import (
    CONSUMER_ENV,
    LANE_ENV,
    STANDBY_ENV,
    attach_board,
)
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.engine.runtime.runner import EngineLane
from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.heap import settle_heap
from okra_sidecar.policy.cel import CelEngine
from okra_sidecar.server.grpc_server import SERVICE_NAME
from okra_sidecar.server.parts import (
    REDIS_CONNECT_TIMEOUT_S,
    build_liveness,
    build_policy_layer,
    build_runner,
    consumer_name,
    open_store,
    redis_client,
)
from okra_sidecar.server.sidecar import Sidecar, start_sidecar
from okra_sidecar.startup import (
    unreachable_redis,
)
from okra_sidecar.store.cluster_client import names_a_cluster
from okra_sidecar.store.embedded import EmbeddedRedis
from okra_sidecar.store.liveness import ConsumerHeartbeat
from okra_sidecar.store.migration import MigrationReport, migrate_store
from okra_sidecar.telemetry import Telemetry

logger = logging.getLogger(__name__)


async def run_engine(settings: Settings) -> None:
    """An engine child process: take turns on the parent's Redis until SIGTERM."""
    assert settings.redis.url is not None, "the parent passes its Redis URL"
    lane = EngineLane(os.environ.get(LANE_ENV) or EngineLane.REGULAR)
    # The slow lane's child sets its priority turn by turn (engine/runtime/probation.py):
    # normal for workflows on probation, the lowest for the turns that ran long.
    # The parent names us, so that it can retire our heartbeat the moment we die.
    consumer = os.environ.get(CONSUMER_ENV) or consumer_name()
    telemetry = Telemetry.create(settings.telemetry, instance_id=consumer)
    cluster = await names_a_cluster(settings.redis.url, connect_timeout=REDIS_CONNECT_TIMEOUT_S)
    client = redis_client(settings.redis.url, settings, cluster=cluster)
    store = await open_store(settings, settings.redis.url, client)
    registry = WorkflowRegistry(store=store)
    # The policy set comes from Redis, where the parent put it: no file of its own to watch.
    policies = build_policy_layer(replace(settings, policies_file=None), client=client, store=store)
    heartbeat = ConsumerHeartbeat(build_liveness(settings, client, store), consumer)
    stop = asyncio.Event()
    # A spare waits for SIGUSR1 (it replaces a child that died) before it takes any turn.
    go = asyncio.Event()
    if os.environ.get(STANDBY_ENV) != "1":
        go.set()
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:
        stop.set()
        go.set()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    # Ctrl-C reaches the whole process group: the parent decides when its children stop.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    try:
        await policies.manager.start()
        runner = build_runner(
            settings,
            store=store,
            registry=registry,
            consumer=consumer,
            telemetry=telemetry,
            policies=policies,
            clock=now_ms,
            liveness=heartbeat.liveness,
            lane=lane,
        )
        settle_heap()  # before the first turn: what is alive now lives as long as the process
        # The parent watches this board and enforces the budgets; the memory cap is our own.
        board = attach_board()
        turn_board.install(board)
        limit_memory(settings.engine.memory_mb)
        refuse_core_dumps()
        board.mark_ready()  # after the SIGUSR1 handler: the parent may send it from now on
        await go.wait()
        if not stop.is_set():
            await heartbeat.start()
            await runner.start()
            await stop.wait()
            await runner.stop(timeout_s=settings.server.grace_s)
            await heartbeat.stop()
    finally:
        await policies.manager.stop()
        await asyncio.to_thread(telemetry.shutdown)
        await store.aclose()
        await client.aclose()


def warm_engine_process() -> None:
    """In the fork server: build once what every engine process builds alike, so that each
    child forked from it finds it built (the CEL parser: a tenth of a second of CPU)."""
    CelEngine()


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
    if sidecar.admin is not None:
        admin = f"http://{host}:{sidecar.admin.port}"
        print(
            f"Console: {admin}/console (see docs/console.md)\n"
            f"Prometheus metrics: curl {admin}/metrics (see docs/observability.md)",
            file=out,
            flush=True,
        )


async def migrate(settings: Settings) -> MigrationReport:
    """`okra-sidecar migrate`: the store in the configured Redis (the embedded one when no URL
    is set) converted to the current layout. Every sidecar on it must be stopped first.

    Raises:
        StartupError: Redis does not answer, or holds a store newer than this sidecar.
    """
    embedded = None
    url = settings.redis.url
    if url is None:
        embedded = EmbeddedRedis(data_dir=settings.redis.data_dir / "redis", appendfsync="always")
        url = await embedded.start()
    client = aioredis.Redis.from_url(url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S)
    try:
        return await migrate_store(
            client,
            prefix=settings.redis.key_prefix,
            partitions=settings.redis.partitions,
            scope=settings.telemetry.service_namespace,
        )
    except StoreUnavailableError as exc:
        raise unreachable_redis(url, exc) from exc
    finally:
        await client.aclose()
        if embedded is not None:
            await embedded.stop()


async def serve(settings: Settings, *, out: TextIO = sys.stdout) -> None:
    """Run until SIGTERM or SIGINT, then drain calls and stop the engine cleanly."""
    sidecar = await start_sidecar(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    settle_heap()
    print_hints(sidecar, settings, out)
    try:
        await stop.wait()
        logger.info("stopping: draining calls for up to %.0fs", settings.server.grace_s)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await sidecar.stop(settings.server.grace_s)
