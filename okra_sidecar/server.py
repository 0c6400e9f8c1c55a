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
from dataclasses import dataclass, field, replace
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
class Sidecar:
    """A running sidecar; `stop()` takes it down in the documented order."""

    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    reporter: HealthReporter
    runner: EngineRunner
    store: RedisStore
    redis: aioredis.Redis
    embedded: EmbeddedRedis | None
    redis_url: str
    health_task: asyncio.Task[None]
    telemetry: Telemetry = field(default_factory=Telemetry)
    owns_telemetry: bool = False
    admin: AdminServer | None = None
    gauge_task: asyncio.Task[None] | None = None
    scheduler: Scheduler | None = None
    retention: RetentionKeeper | None = None
    policies: PolicyManager | None = None
    effects: EffectRuntime | None = None
    engines: EngineProcesses | None = None
    # TLS certificate files (reloaded on change) and the plaintext health-only server.
    tls: CertificateFiles | None = None
    health_server: grpc.aio.Server | None = None
    health_port: int = 0
    heartbeat: ConsumerHeartbeat | None = None

    async def stop(self, grace_s: float | None = None) -> None:
        # Shutdown order: refuse new calls, drain in-flight ones, stop the engine, flush
        # telemetry, close Redis.
        await self.reporter.shut_down()
        await cancel_and_wait([self.health_task])
        await self.server.stop(grace_s)
        if self.health_server is not None:
            await self.health_server.stop(None)
        for loop in (self.scheduler, self.retention):
            if loop is not None:
                await loop.stop()
        await self.runner.stop(timeout_s=grace_s or 0.0)
        if self.engines is not None:
            await self.engines.stop()
        if self.policies is not None:
            await self.policies.stop()
        if self.effects is not None:
            await self.effects.stop(timeout_s=grace_s or 0.0)
        if self.heartbeat is not None:
            await self.heartbeat.stop()  # nothing of ours is left for others to wait on
        if self.gauge_task is not None:
            await cancel_and_wait([self.gauge_task])
        if self.admin is not None:
            await self.admin.stop()
        # Exporters block while they flush: off the loop, which may serve their receiver.
        if self.owns_telemetry:
            await asyncio.to_thread(self.telemetry.shutdown)
        await self.store.aclose()
        await self.redis.aclose()
        if self.embedded is not None:
            await self.embedded.stop()


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
    """
    # A taken port is found before Redis starts, and said in one line naming the flag.
    check_listen(settings.server.listen)
    admin_listen = scrape_listen(settings.telemetry)
    if admin_listen is not None:
        check_listen(admin_listen, setting=ADMIN_LISTEN_SETTING)
    now_ms = clock or wall_clock_ms
    warning = exposure_warning(settings)
    if warning is not None:
        logger.warning("%s", warning)
    # Certificate files are checked before anything starts: a bad one stops the start.
    tls = CertificateFiles(settings.tls) if settings.tls.enabled else None
    consumer = consumer_name()
    owns_telemetry = telemetry is None
    if telemetry is None:
        telemetry = Telemetry.create(settings.telemetry, instance_id=consumer)
    embedded = None
    url = settings.redis.url
    if url is None:
        appendfsync = "always" if settings.redis.durability == "aof" else "everysec"
        embedded = EmbeddedRedis(
            data_dir=settings.redis.data_dir / "redis", appendfsync=appendfsync
        )
        url = await embedded.start()
    client = redis_client(url, settings)
    scheduler: Scheduler | None = None
    retention: RetentionKeeper | None = None
    policies: PolicyLayer | None = None
    admin: AdminServer | None = None
    engines: EngineProcesses | None = None
    heartbeat: ConsumerHeartbeat | None = None
    store: RedisStore | None = None
    health_server: grpc.aio.Server | None = None
    health_port = 0
    waiting: WaitingServers | None = None
    health_servicer = health_aio.HealthServicer()
    reporter = HealthReporter(health_servicer, READINESS_SERVICES)
    credentials = server_credentials(tls, mutual=settings.tls.mutual) if tls is not None else None
    listen = settings.server.listen
    try:
        # Alive, not ready until everything below has started.
        await reporter.set_live(True)
        await reporter.set_ready(False)
        if settings.server.health_listen is not None:
            health_server, health_port = build_health_server(
                health_servicer, settings.server.health_listen
            )
            await health_server.start()
        try:
            # Before anything is written: a level the server cannot give stops the start.
            await check_durability(client, settings.redis.durability)
            store = await open_store(settings, url, client)
        except StoreUnavailableError:
            # Exiting would only be restarted into the same wait: hold the ports for probes.
            waiting = await WaitingServers.start(
                health_servicer=health_servicer,
                listen=listen,
                credentials=credentials,
                admin_listen=admin_listen,
                probes=reporter,
            )
            listen, admin_listen = waiting.listen, waiting.admin_listen
            try:
                store = await wait_for(
                    lambda: open_store(settings, url, client),
                    what="Redis",
                    wait_s=settings.redis.wait_s,
                )
            except StoreUnavailableError as exc:
                raise unreachable_redis(url, exc, waited_s=settings.redis.wait_s) from exc
        registry = WorkflowRegistry(store=store)
        definitions = []
        if settings.workflows_dir is not None:
            # Off the event loop: parsing and checking files is CPU-bound.
            definitions = await asyncio.to_thread(
                read_directory,
                settings.workflows_dir,
                max_bytes=settings.engine.max_definition_bytes,
            )
            await registry.register(definitions)
        policies = build_policy_layer(settings, client=client, store=store, registry=registry)
        await policies.manager.start()
        liveness = build_liveness(settings, client, store)
        heartbeat = ConsumerHeartbeat(liveness, consumer)
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
        # Which instance caused which: chains that loop back stop, fan-out is bounded.
        causes = RedisEffectStore(redis=client, keys=store.keys)
        causation = CausationGuard(
            instances=causes,
            limiter=policies.rates,
            secret=causes.shared_secret,
            per_minute=settings.host.max_caused_per_minute,
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
            triggers=EventTriggers(
                store=store,
                schedules=scheduler.schedules,
                registry=registry,
                host=settings.host,
                clock=now_ms,
                authorize=policies.firings,
                causation=causation,
            ).offer,
            authorize=policies.firings,
            causation=causation,
        )
        servicer = WorkflowHostServicer(
            store=store,
            registry=registry,
            settings=settings.host,
            metrics=telemetry.metrics,
            effects=effects.effects,
            causation=causation,
            changes=store.changes,
        )
        task_worker = TaskWorkerServicer(
            effects=effects.effects,
            lease_ms=settings.effects.task_lease_ms,
            read_block_ms=settings.engine.read_block_ms,
            max_input_depth=settings.host.max_input_depth,
        )
        if waiting is not None:
            # The real servers take the ports over (the same ones, even where 0 was asked).
            await waiting.stop()
            waiting = None
        server, port = build_server(
            servicer=servicer,
            health_servicer=health_servicer,
            schedules=ScheduleHostServicer(
                scheduler=scheduler,
                registry=registry,
                settings=settings.host,
                # The schedule keeps its creator's claims: firings run as that caller.
                owner=lambda: current_identity().claims,
                authorize=policies.firings,
            ),
            listen=listen,
            telemetry=telemetry,
            policies=policies,
            task_worker=task_worker,
            credentials=credentials,
        )
        if admin_listen is not None:
            # The console calls the gRPC port as its user; it does not dial the port's TLS yet.
            console = None
            if tls is None:
                target = loopback_target(settings.server.listen, port)
                console = ConsoleGateway(target=target, registry=registry)
            admin = AdminServer(
                listen=admin_listen, registry=telemetry.registry, console=console, probes=reporter
            )
            await admin.start()
        assert heartbeat is not None
        await heartbeat.start()  # before the runner or the executors read anything
        if settings.engine.processes > 0:
            engines = EngineProcesses(
                settings=replace(settings, redis=replace(settings.redis, url=url)),
                count=settings.engine.processes,
                on_fault=runner.fail_instance,
                on_exit=liveness.mark_dead,
            )
            await engines.start()
        else:
            logger.warning(
                "engineProcesses: 0: expressions run in the serving process, without time "
                "or memory budgets; run only trusted definitions this way"
            )
            await runner.start()
        await scheduler.start()
        await retention.start()
        await effects.start()
        await server.start()
        await reporter.set_ready(True)
    except BaseException:
        if waiting is not None:
            await waiting.stop()
        if health_server is not None:
            await health_server.stop(None)
        if engines is not None:
            await engines.stop()
        if heartbeat is not None:
            await heartbeat.stop()
        if admin is not None:
            await admin.stop()
        for loop in (scheduler, retention):
            if loop is not None:
                await loop.stop()
        if policies is not None:
            await policies.manager.stop()
        if store is not None:
            await store.aclose()
        await client.aclose()
        if embedded is not None:
            await embedded.stop()
        if owns_telemetry:
            telemetry.shutdown()
        raise
    watcher = asyncio.create_task(_watch_redis(store, reporter))
    gauge_task = None
    if telemetry.meter_provider is not None:
        gauge_task = asyncio.create_task(
            telemetry.metrics.sample_forever(
                lambda: _read_gauges(store), interval_s=settings.telemetry.gauge_interval_s
            )
        )
    return Sidecar(
        server=server,
        port=port,
        health=health_servicer,
        reporter=reporter,
        runner=runner,
        store=store,
        redis=client,
        embedded=embedded,
        redis_url=url,
        health_task=watcher,
        telemetry=telemetry,
        owns_telemetry=owns_telemetry,
        admin=admin,
        gauge_task=gauge_task,
        scheduler=scheduler,
        retention=retention,
        policies=policies.manager,
        effects=effects,
        engines=engines,
        tls=tls,
        health_server=health_server,
        health_port=health_port,
        heartbeat=heartbeat,
    )


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
