"""Composition root: builds the store, engine and gRPC server, and shuts them down in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any, TextIO

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.admin.v1 import admin_pb2_grpc as admin_pb_grpc
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from okra_sidecar.api.admin import PolicyAdminServicer
from okra_sidecar.api.chain import InterceptorChain
from okra_sidecar.api.interceptors import AuthInterceptor, PolicyInterceptor
from okra_sidecar.api.readiness import HealthReporter, WaitingServers, wait_for
from okra_sidecar.api.registration import GenericOnlyServer
from okra_sidecar.api.schedule_servicer import ScheduleHostServicer
from okra_sidecar.api.servicer import WorkflowHostServicer
from okra_sidecar.api.status import ErrorInterceptor
from okra_sidecar.api.task_worker import TaskWorkerServicer
from okra_sidecar.api.tls import CertificateFiles, server_credentials
from okra_sidecar.api.tracing import TelemetryInterceptor
from okra_sidecar.config import Settings
from okra_sidecar.console.gateway import ConsoleGateway, loopback_target
from okra_sidecar.engine.definitions.dsl import WorkflowDefinition
from okra_sidecar.engine.runtime import board as turn_board
from okra_sidecar.engine.runtime.event_triggers import EventTriggers
from okra_sidecar.engine.runtime.processes import (
    CONSUMER_ENV,
    STANDBY_ENV,
    EngineProcesses,
    attach_board,
    limit_memory,
)
from okra_sidecar.engine.runtime.registry import WorkflowRegistry, read_directory
from okra_sidecar.engine.runtime.retention import RetentionKeeper
from okra_sidecar.engine.runtime.runner import EngineRunner
from okra_sidecar.engine.runtime.scheduler import Scheduler
from okra_sidecar.errors import StartupError, StoreUnavailableError
from okra_sidecar.executors.runtime import EffectRuntime
from okra_sidecar.exposure import exposure_warning
from okra_sidecar.heap import settle_heap
from okra_sidecar.policy.alerts import FailureAlerts
from okra_sidecar.policy.audit import AuditLog, ServiceIdentity
from okra_sidecar.policy.auth import TokenVerifier
from okra_sidecar.policy.causation import CausationGuard
from okra_sidecar.policy.cel import CelEngine
from okra_sidecar.policy.evaluator import PolicyEvaluator
from okra_sidecar.policy.firing import PolicyFiringAuthorizer
from okra_sidecar.policy.live import PolicyManager
from okra_sidecar.policy.model import current_identity
from okra_sidecar.startup import (
    ADMIN_LISTEN_SETTING,
    LISTEN_SETTING,
    check_listen,
    unreachable_redis,
)
from okra_sidecar.store.base import WorkItem
from okra_sidecar.store.commands import hot_commands
from okra_sidecar.store.effect_store import RedisEffectStore
from okra_sidecar.store.embedded import EmbeddedRedis
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.layout import open_layout
from okra_sidecar.store.liveness import ConsumerHeartbeat, ConsumerLiveness
from okra_sidecar.store.migration import MigrationReport, migrate_store
from okra_sidecar.store.persistence import check_durability
from okra_sidecar.store.policy_store import RedisPolicyStore
from okra_sidecar.store.redis_store import RedisStore
from okra_sidecar.store.retention_store import RedisRetentionStore
from okra_sidecar.store.schedule_store import RedisScheduleStore
from okra_sidecar.tasks import cancel_and_wait
from okra_sidecar.telemetry import ClusterGauges, Telemetry
from okra_sidecar.telemetry.admin import AdminServer
from okra_sidecar.telemetry.providers import scrape_listen

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WorkflowHostAPI"].full_name
SCHEDULE_SERVICE_NAME = spb.DESCRIPTOR.services_by_name["ScheduleHostAPI"].full_name
ADMIN_SERVICE_NAME = admin_pb.DESCRIPTOR.services_by_name["PolicyAdminService"].full_name
TASK_WORKER_SERVICE = wpb.DESCRIPTOR.services_by_name["TaskWorker"].full_name
# Readiness is reported under each API service's name; liveness under "" (api/readiness.py).
READINESS_SERVICES = (
    SERVICE_NAME,
    SCHEDULE_SERVICE_NAME,
    ADMIN_SERVICE_NAME,
    TASK_WORKER_SERVICE,
)
HEALTH_INTERVAL_S = 1.0
HEALTH_PING_TIMEOUT_S = 1.0
# Work items taken over from one stopped consumer per stream and pass.
ORPHAN_BATCH = 100
REDIS_POOL_BASE = 128
REDIS_POOL_WAIT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 10.0
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


@dataclass
class Grace:
    """How long stop() lets calls, turns and effects in flight finish (None: not at all),
    read by the closes that the start registered."""

    seconds: float | None = None


@dataclass
class Sidecar:
    """A running sidecar; `stop()` closes what the start opened, in the reverse order."""

    port: int
    redis_url: str
    store: RedisStore
    runner: EngineRunner
    scheduler: Scheduler
    retention: RetentionKeeper
    telemetry: Telemetry
    # Every part registered its close here as it started: the stop is the start reversed.
    closing: contextlib.AsyncExitStack
    grace: Grace
    embedded: EmbeddedRedis | None = None
    engines: EngineProcesses | None = None
    admin: AdminServer | None = None
    tls: CertificateFiles | None = None
    health_port: int = 0
    gauge_task: asyncio.Task[None] | None = None

    async def stop(self, grace_s: float | None = None) -> None:
        self.grace.seconds = grace_s
        await self.closing.aclose()


@dataclass
class PolicyLayer:
    """Identity and policies: two interceptors, the admin api and the live policy set."""

    manager: PolicyManager
    auth: AuthInterceptor
    policy: PolicyInterceptor
    admin: PolicyAdminServicer
    audit: AuditLog
    alerts: FailureAlerts
    # Schedule firings and event triggers go through the run policies too.
    firings: PolicyFiringAuthorizer
    # The shared rate limits (also how many instances one instance may cause).
    rates: RedisPolicyStore


def build_policy_layer(
    settings: Settings, *, client: aioredis.Redis, store: RedisStore, registry: WorkflowRegistry
) -> PolicyLayer:
    """Everything policies need, sharing the sidecar's Redis client; start `manager` next."""
    service = ServiceIdentity(
        name=settings.telemetry.service_name, namespace=settings.telemetry.service_namespace
    )
    policy_store = RedisPolicyStore(
        redis=client,
        keys=store.keys,
        audit_max_length=settings.policy.audit_max_length,
        hot=store.hot,
    )
    audit = AuditLog(sink=policy_store, service=service)
    manager = PolicyManager(
        storage=policy_store,
        cel=CelEngine(),
        env_names=frozenset(settings.policy.env_allow),
        audit=audit,
        file=settings.policies_file,
        watch_interval_s=settings.policy.watch_interval_s,
    )
    evaluator = PolicyEvaluator(
        policies=manager,
        limiter=policy_store,
        audit=audit,
        service=service,
        env=settings.policy.env,
    )
    return PolicyLayer(
        manager=manager,
        auth=AuthInterceptor(
            verifier=TokenVerifier(settings.auth),
            # Probes and tooling reach health and reflection without a token.
            exempt_services=frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME}),
            peers=settings.tls.mutual,
        ),
        policy=PolicyInterceptor(
            evaluator=evaluator,
            store=store,
            registry=registry,
            schedules=RedisScheduleStore(redis=client, keys=store.keys),
        ),
        admin=PolicyAdminServicer(
            manager=manager, store=policy_store, admin_claim=settings.policy.admin_claim
        ),
        audit=audit,
        alerts=FailureAlerts(policies=manager, audit=audit),
        firings=PolicyFiringAuthorizer(evaluator=evaluator),
        rates=policy_store,
    )


def build_server(
    *,
    servicer: WorkflowHostServicer,
    health_servicer: health_aio.HealthServicer,
    schedules: ScheduleHostServicer | None = None,
    listen: str,
    telemetry: Telemetry | None = None,
    policies: PolicyLayer | None = None,
    task_worker: TaskWorkerServicer | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with its interceptors, reflection and health, bound to `listen`.

    With `credentials` the port speaks TLS only (see api/tls.py), else plaintext.
    """
    # Interceptor order, outermost first: tracing and rpc metrics (so the span covers every
    # layer and their errors), errors (map OkraError to status), auth (the caller's identity
    # from the bearer token), policy (decides with that identity), then the servicer.
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if telemetry is not None and telemetry.active:
        interceptors.append(
            TelemetryInterceptor(tracer=telemetry.tracer, metrics=telemetry.metrics)
        )
    interceptors.append(ErrorInterceptor())
    if policies is not None:
        interceptors += [policies.auth, policies.policy]
    # One chain composes the layers once per method (see InterceptorChain for why).
    server = grpc.aio.server(interceptors=[InterceptorChain(interceptors)], options=GRPC_OPTIONS)
    # Generic handlers only, WorkflowHostAPI first (see GenericOnlyServer for why).
    target: Any = GenericOnlyServer(server)
    pb_grpc.add_WorkflowHostAPIServicer_to_server(servicer, target)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, target)
    if schedules is not None:
        spb_grpc.add_ScheduleHostAPIServicer_to_server(schedules, target)
    services = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
    if schedules is not None:
        services.append(SCHEDULE_SERVICE_NAME)
    if policies is not None:
        admin_pb_grpc.add_PolicyAdminServiceServicer_to_server(policies.admin, target)
        services.append(ADMIN_SERVICE_NAME)
    if task_worker is not None:
        wpb_grpc.add_TaskWorkerServicer_to_server(task_worker, target)
        services.append(TASK_WORKER_SERVICE)
    # What reflection.enable_server_reflection does for an aio server, through `target`.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(services), target
    )
    try:
        if credentials is not None:
            port = server.add_secure_port(listen, credentials)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as exc:  # taken since check_listen looked, or refused by gRPC alone
        raise StartupError(f"cannot listen on {listen}; check {LISTEN_SETTING}") from exc
    return server, port


def build_health_server(
    health_servicer: health_aio.HealthServicer, listen: str
) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with the health service only, for probes without a certificate."""
    server = grpc.aio.server(options=GRPC_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise StartupError(
            f"cannot listen on {listen}; check --health-listen (OKRA_HEALTH_LISTEN)"
        ) from exc
    return server, port


async def _watch_redis(store: RedisStore, reporter: HealthReporter) -> None:
    """Readiness follows Redis: NOT_SERVING while it is unreachable, SERVING once it is back.

    Liveness stays SERVING: restarting a sidecar would not bring Redis back.
    """
    while True:
        try:
            # Its own short timeout: the client's 10 s socket timeout would keep a hung
            # Redis looking healthy for that long.
            await asyncio.wait_for(store.ping(), HEALTH_PING_TIMEOUT_S)
            ok = True
        except (StoreUnavailableError, TimeoutError):
            ok = False
        if ok != reporter.ready:
            await reporter.set_ready(ok)
            logger.warning("Redis is %s", "reachable again" if ok else "unreachable: not ready")
        await asyncio.sleep(HEALTH_INTERVAL_S)


def consumer_name() -> str:
    """This process's name in every consumer group (and its heartbeat's)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def build_liveness(
    settings: Settings, client: aioredis.Redis, store: RedisStore
) -> ConsumerLiveness:
    """Heartbeats that expire after three missed beats (store/liveness.py)."""
    return ConsumerLiveness(redis=client, keys=store.keys, ttl_ms=3 * settings.engine.heartbeat_ms)


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


async def _read_gauges(store: RedisStore) -> ClusterGauges:
    stats = await store.stats()
    now = time.time() * 1000
    return ClusterGauges(
        running=stats.running,
        waiting=stats.waiting,
        backlog=stats.backlog,
        oldest_age_s={p: max(now - ms, 0.0) / 1000 for p, ms in stats.oldest_ms.items()},
    )


def redis_client(url: str, settings: Settings) -> aioredis.Redis:
    """The process's one Redis client, its pool sized for the engine and the executors."""
    # A blocking pool makes a burst wait for a free connection instead of failing the call.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        # Effects hold connections too: blocking reads (executors, router, one per task poller).
        max_connections=REDIS_POOL_BASE
        + 2 * settings.engine.concurrency
        + settings.effects.concurrency,
        timeout=REDIS_POOL_WAIT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
    )
    return aioredis.Redis.from_pool(pool)


async def open_store(settings: Settings, url: str, client: aioredis.Redis) -> RedisStore:
    """The store on `client` in the layout recorded in Redis (recorded now if it is new).

    Raises:
        LayoutVersionError: Redis holds a store in another layout (see store/layout.py).
        StoreUnavailableError: Redis does not answer.
    """
    keys = await open_layout(
        client, prefix=settings.redis.key_prefix, partitions=settings.redis.partitions
    )
    return build_store(settings, url, client, keys)


def build_store(
    settings: Settings, url: str, client: aioredis.Redis, keys: RedisKeys
) -> RedisStore:
    """The store on `client`, its per-call commands on one multiplexed connection."""
    hot = hot_commands(
        url, client, socket_timeout=REDIS_SOCKET_TIMEOUT_S, connect_timeout=REDIS_CONNECT_TIMEOUT_S
    )
    # The engine's blocking XREADGROUP waits up to read_block_ms for a reply.
    reader = hot_commands(
        url,
        client,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S + settings.engine.read_block_ms / 1000,
        connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        blocking_reads=True,
    )
    return RedisStore(
        redis=client,
        hot=hot,
        reader=reader,
        keys=keys,
        durability=settings.redis.durability,
    )


def build_runner(
    settings: Settings,
    *,
    store: RedisStore,
    registry: WorkflowRegistry,
    consumer: str,
    telemetry: Telemetry,
    policies: PolicyLayer,
    clock: Callable[[], int],
    liveness: ConsumerLiveness,
) -> EngineRunner:
    """The engine runner; the serving process and engine children build it alike."""

    async def orphans(name: str, held: Collection[str]) -> list[WorkItem]:
        return await store.claim_orphan_work(liveness, name, held=held, count=ORPHAN_BATCH)

    return EngineRunner(
        store=store,
        registry=registry,
        settings=settings.engine,
        consumer=consumer,
        turns=telemetry.turns,
        clock=clock,
        on_failure=policies.alerts,
        orphans=orphans,
    )


@dataclass
class _Probes:
    """Health as probes see it: the servicer, its reporter and the plaintext health port."""

    servicer: health_aio.HealthServicer
    reporter: HealthReporter
    health_port: int = 0


@dataclass
class _Ports:
    """The gRPC and admin addresses; while the start waits for Redis, the waiting servers'."""

    listen: str
    admin_listen: str | None
    waiting: WaitingServers | None = None


@dataclass
class _Parts:
    """What the start builds on the store before any of it reads or serves."""

    registry: WorkflowRegistry
    policies: PolicyLayer
    liveness: ConsumerLiveness
    runner: EngineRunner
    scheduler: Scheduler
    retention: RetentionKeeper
    effects: EffectRuntime
    causation: CausationGuard


async def start_sidecar(
    settings: Settings,
    *,
    telemetry: Telemetry | None = None,
    clock: Callable[[], int] | None = None,
) -> Sidecar:
    """Start Redis (embedded if no URL), register definitions, start the engine and server.

    A Redis that does not answer is waited for, up to `redisWait`, while `WaitingServers`
    answer probes on the gRPC and admin ports (alive, not ready).

    `telemetry` replaces the one built from settings.telemetry (tests pass in-memory
    exporters); the caller then shuts it down. `clock` (epoch ms) replaces the wall clock
    for the engine, the scheduler and retention, so tests can move time.

    Each part registers its close on one exit stack as it starts: a start that fails closes
    what it had opened, and `Sidecar.stop()` closes everything, both in reverse start order.
    """
    ports, tls = _check_before_start(settings)
    credentials = server_credentials(tls, mutual=settings.tls.mutual) if tls is not None else None
    consumer = consumer_name()
    grace = Grace()
    async with contextlib.AsyncExitStack() as stack:
        if telemetry is None:
            telemetry = Telemetry.create(settings.telemetry, instance_id=consumer)
            # Exporters block while they flush: off the loop, which may serve their receiver.
            stack.push_async_callback(asyncio.to_thread, telemetry.shutdown)
        url, embedded = await _start_redis(settings, stack)
        client = redis_client(url, settings)
        stack.push_async_callback(client.aclose)
        probes = await _start_probes(settings, stack)
        store = await _open_store(settings, url, client, probes, ports, credentials, stack)
        parts = await _build_parts(settings, client, store, consumer, telemetry, clock, stack)
        if ports.waiting is not None:
            # The real servers take the ports over (the same ones, even where 0 was asked).
            await ports.waiting.stop()
        server, port = _build_server(settings, parts, store, telemetry, probes, ports, credentials)
        admin = await _start_admin(settings, ports, port, tls, parts, telemetry, probes, stack)
        engines = await _start_engine(settings, consumer, url, parts, grace, stack)
        await server.start()
        stack.push_async_callback(lambda: server.stop(grace.seconds))
        gauge_task = _start_gauges(settings, store, telemetry, stack)
        watcher = asyncio.create_task(_watch_redis(store, probes.reporter))
        stack.push_async_callback(cancel_and_wait, [watcher])
        await probes.reporter.set_ready(True)
        # The first close at stop: every probe reports NOT_SERVING before anything goes.
        stack.push_async_callback(probes.reporter.shut_down)
        sidecar = Sidecar(
            port=port,
            redis_url=url,
            store=store,
            runner=parts.runner,
            scheduler=parts.scheduler,
            retention=parts.retention,
            telemetry=telemetry,
            closing=stack.pop_all(),
            grace=grace,
            embedded=embedded,
            engines=engines,
            admin=admin,
            tls=tls,
            health_port=probes.health_port,
            gauge_task=gauge_task,
        )
    return sidecar


def _check_before_start(settings: Settings) -> tuple[_Ports, CertificateFiles | None]:
    """What can be refused before anything starts: taken ports, certificate files."""
    # A taken port is found before Redis starts, and said in one line naming the flag.
    check_listen(settings.server.listen)
    ports = _Ports(settings.server.listen, scrape_listen(settings.telemetry))
    if ports.admin_listen is not None:
        check_listen(ports.admin_listen, setting=ADMIN_LISTEN_SETTING)
    warning = exposure_warning(settings)
    if warning is not None:
        logger.warning("%s", warning)
    # Certificate files are checked before anything starts: a bad one stops the start.
    return ports, CertificateFiles(settings.tls) if settings.tls.enabled else None


async def _start_redis(
    settings: Settings, stack: contextlib.AsyncExitStack
) -> tuple[str, EmbeddedRedis | None]:
    """The configured Redis URL, or an embedded redis-server started for it."""
    if settings.redis.url is not None:
        return settings.redis.url, None
    appendfsync = "always" if settings.redis.durability == "aof" else "everysec"
    embedded = EmbeddedRedis(data_dir=settings.redis.data_dir / "redis", appendfsync=appendfsync)
    stack.push_async_callback(embedded.stop)
    return await embedded.start(), embedded


async def _start_probes(settings: Settings, stack: contextlib.AsyncExitStack) -> _Probes:
    """Alive, and not ready until everything has started; the plaintext health port if any."""
    servicer = health_aio.HealthServicer()
    probes = _Probes(servicer, HealthReporter(servicer, READINESS_SERVICES))
    await probes.reporter.set_live(True)
    await probes.reporter.set_ready(False)
    if settings.server.health_listen is not None:
        server, probes.health_port = build_health_server(servicer, settings.server.health_listen)
        stack.push_async_callback(server.stop, None)
        await server.start()
    return probes


async def _open_store(
    settings: Settings,
    url: str,
    client: aioredis.Redis,
    probes: _Probes,
    ports: _Ports,
    credentials: grpc.ServerCredentials | None,
    stack: contextlib.AsyncExitStack,
) -> RedisStore:
    """The store; while Redis does not answer, waiting servers hold `ports` for probes."""
    try:
        # Before anything is written: a level the server cannot give stops the start.
        await check_durability(client, settings.redis.durability)
        store = await open_store(settings, url, client)
    except StoreUnavailableError:
        # Exiting would only be restarted into the same wait: hold the ports for probes.
        ports.waiting = await WaitingServers.start(
            health_servicer=probes.servicer,
            listen=ports.listen,
            credentials=credentials,
            admin_listen=ports.admin_listen,
            probes=probes.reporter,
        )
        stack.push_async_callback(ports.waiting.stop)
        ports.listen, ports.admin_listen = ports.waiting.listen, ports.waiting.admin_listen
        try:
            store = await wait_for(
                lambda: open_store(settings, url, client),
                what="Redis",
                wait_s=settings.redis.wait_s,
            )
        except StoreUnavailableError as exc:
            raise unreachable_redis(url, exc, waited_s=settings.redis.wait_s) from exc
    stack.push_async_callback(store.aclose)
    return store


async def _build_parts(
    settings: Settings,
    client: aioredis.Redis,
    store: RedisStore,
    consumer: str,
    telemetry: Telemetry,
    clock: Callable[[], int] | None,
    stack: contextlib.AsyncExitStack,
) -> _Parts:
    """Definitions registered, policies loaded; the engine, effects and servicers built."""
    now_ms = clock or wall_clock_ms
    registry = WorkflowRegistry(store=store)
    definitions = await _register_definitions(settings, registry)
    policies = build_policy_layer(settings, client=client, store=store, registry=registry)
    stack.push_async_callback(policies.manager.stop)
    await policies.manager.start()
    liveness = build_liveness(settings, client, store)
    runner = build_runner(
        settings,
        store=store,
        registry=registry,
        consumer=consumer,
        telemetry=telemetry,
        policies=policies,
        clock=now_ms,
        liveness=liveness,
    )
    scheduler = Scheduler(
        schedules=RedisScheduleStore(redis=client, keys=store.keys),
        store=store,
        registry=registry,
        host=settings.host,
        settings=settings.schedule,
        clock=now_ms,
        authorize=policies.firings,
    )
    await scheduler.sync_definitions(definitions)
    retention = RetentionKeeper(
        store=RedisRetentionStore(redis=client, keys=store.keys),
        host=settings.host,
        settings=settings.schedule,
        clock=now_ms,
    )
    effects, causation = _build_effects(
        settings,
        client,
        store,
        registry,
        consumer,
        telemetry,
        liveness,
        policies,
        scheduler,
        now_ms,
    )
    return _Parts(
        registry=registry,
        policies=policies,
        liveness=liveness,
        runner=runner,
        scheduler=scheduler,
        retention=retention,
        effects=effects,
        causation=causation,
    )


def _build_server(
    settings: Settings,
    parts: _Parts,
    store: RedisStore,
    telemetry: Telemetry,
    probes: _Probes,
    ports: _Ports,
    credentials: grpc.ServerCredentials | None,
) -> tuple[grpc.aio.Server, int]:
    """The servicers on the parts, in the gRPC server on `ports.listen` (not started)."""
    return build_server(
        servicer=WorkflowHostServicer(
            store=store,
            registry=parts.registry,
            settings=settings.host,
            metrics=telemetry.metrics,
            effects=parts.effects.effects,
            causation=parts.causation,
            changes=store.changes,
        ),
        health_servicer=probes.servicer,
        schedules=ScheduleHostServicer(
            scheduler=parts.scheduler,
            registry=parts.registry,
            settings=settings.host,
            # The schedule keeps its creator's claims: firings run as that caller.
            owner=lambda: current_identity().claims,
            authorize=parts.policies.firings,
        ),
        listen=ports.listen,
        telemetry=telemetry,
        policies=parts.policies,
        task_worker=TaskWorkerServicer(
            effects=parts.effects.effects,
            lease_ms=settings.effects.task_lease_ms,
            read_block_ms=settings.engine.read_block_ms,
            max_input_depth=settings.host.max_input_depth,
        ),
        credentials=credentials,
    )


async def _register_definitions(
    settings: Settings, registry: WorkflowRegistry
) -> list[WorkflowDefinition]:
    """The definitions of `--workflows`, registered in Redis (all or nothing)."""
    if settings.workflows_dir is None:
        return []
    # Off the event loop: parsing and checking files is CPU-bound.
    definitions = await asyncio.to_thread(
        read_directory, settings.workflows_dir, max_bytes=settings.engine.max_definition_bytes
    )
    await registry.register(definitions)
    return definitions


def _build_effects(
    settings: Settings,
    client: aioredis.Redis,
    store: RedisStore,
    registry: WorkflowRegistry,
    consumer: str,
    telemetry: Telemetry,
    liveness: ConsumerLiveness,
    policies: PolicyLayer,
    scheduler: Scheduler,
    clock: Callable[[], int],
) -> tuple[EffectRuntime, CausationGuard]:
    """The executors, the event router with its triggers, and the causation guard."""
    # Which instance caused which: chains that loop back stop, fan-out is bounded.
    causes = RedisEffectStore(redis=client, keys=store.keys)
    causation = CausationGuard(
        instances=causes,
        limiter=policies.rates,
        secret=causes.shared_secret,
        per_minute=settings.host.max_caused_per_minute,
    )
    triggers = EventTriggers(
        store=store,
        schedules=scheduler.schedules,
        registry=registry,
        host=settings.host,
        clock=clock,
        authorize=policies.firings,
        causation=causation,
    )
    effects = EffectRuntime.build(
        redis=client,
        keys=store.keys,
        store=store,
        registry=registry,
        settings=settings,
        consumer=consumer,
        liveness=liveness,
        tracer=telemetry.tracer,
        triggers=triggers.offer,
        authorize=policies.firings,
        causation=causation,
    )
    return effects, causation


async def _start_admin(
    settings: Settings,
    ports: _Ports,
    port: int,
    tls: CertificateFiles | None,
    parts: _Parts,
    telemetry: Telemetry,
    probes: _Probes,
    stack: contextlib.AsyncExitStack,
) -> AdminServer | None:
    """The admin port (metrics, console, /healthz and /readyz), when one is configured."""
    if ports.admin_listen is None:
        return None
    # The console calls the gRPC port as its user; it does not dial the port's TLS yet.
    console = None
    if tls is None:
        target = loopback_target(settings.server.listen, port)
        console = ConsoleGateway(target=target, registry=parts.registry)
    admin = AdminServer(
        listen=ports.admin_listen,
        registry=telemetry.registry,
        console=console,
        probes=probes.reporter,
    )
    stack.push_async_callback(admin.stop)
    await admin.start()
    return admin


async def _start_engine(
    settings: Settings,
    consumer: str,
    url: str,
    parts: _Parts,
    grace: Grace,
    stack: contextlib.AsyncExitStack,
) -> EngineProcesses | None:
    """The heartbeat, the executors, the engine (children or in-process) and the loops."""
    heartbeat = ConsumerHeartbeat(parts.liveness, consumer)
    # Stopped after the engine and executors: nothing of ours is left for others to wait on.
    stack.push_async_callback(heartbeat.stop)
    await heartbeat.start()  # before the runner or the executors read anything
    stack.push_async_callback(lambda: parts.effects.stop(timeout_s=grace.seconds or 0.0))
    await parts.effects.start()
    engines = None
    if settings.engine.processes > 0:
        engines = EngineProcesses(
            settings=replace(settings, redis=replace(settings.redis, url=url)),
            count=settings.engine.processes,
            on_fault=parts.runner.fail_instance,
            on_exit=parts.liveness.mark_dead,
        )
        stack.push_async_callback(engines.stop)
        await engines.start()
    else:
        logger.warning(
            "engineProcesses: 0: expressions run in the serving process, without time "
            "or memory budgets; run only trusted definitions this way"
        )
        stack.push_async_callback(lambda: parts.runner.stop(timeout_s=grace.seconds or 0.0))
        await parts.runner.start()
    for loop in (parts.scheduler, parts.retention):
        stack.push_async_callback(loop.stop)
        await loop.start()
    return engines


def _start_gauges(
    settings: Settings, store: RedisStore, telemetry: Telemetry, stack: contextlib.AsyncExitStack
) -> asyncio.Task[None] | None:
    """The cluster gauges, sampled from Redis, when metrics are on."""
    if telemetry.meter_provider is None:
        return None
    task = asyncio.create_task(
        telemetry.metrics.sample_forever(
            lambda: _read_gauges(store), interval_s=settings.telemetry.gauge_interval_s
        )
    )
    stack.push_async_callback(cancel_and_wait, [task])
    return task


async def run_engine(settings: Settings) -> None:
    """An engine child process: take turns on the parent's Redis until SIGTERM."""
    assert settings.redis.url is not None, "the parent passes its Redis URL"
    # The parent names us, so that it can retire our heartbeat the moment we die.
    consumer = os.environ.get(CONSUMER_ENV) or consumer_name()
    telemetry = Telemetry.create(settings.telemetry, instance_id=consumer)
    client = redis_client(settings.redis.url, settings)
    store = await open_store(settings, settings.redis.url, client)
    registry = WorkflowRegistry(store=store)
    # The policy set comes from Redis, where the parent put it: no file of its own to watch.
    policies = build_policy_layer(
        replace(settings, policies_file=None), client=client, store=store, registry=registry
    )
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
            clock=wall_clock_ms,
            liveness=heartbeat.liveness,
        )
        settle_heap()  # before the first turn: what is alive now lives as long as the process
        # The parent watches this board and enforces the budgets; the memory cap is our own.
        board = attach_board()
        turn_board.install(board)
        limit_memory(settings.engine.memory_mb)
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
            client, prefix=settings.redis.key_prefix, partitions=settings.redis.partitions
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
