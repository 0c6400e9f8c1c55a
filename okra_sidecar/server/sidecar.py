"""A sidecar started and stopped: each part registers its close on one exit stack as it
starts, so the stop is the start in reverse, by construction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace

import grpc
import redis.asyncio as aioredis
from grpc_health.v1.health import aio as health_aio

from okra_sidecar.api.operator_servicer import WorkflowOperatorServicer
from okra_sidecar.api.readiness import HealthReporter, WaitingServers, wait_for
from okra_sidecar.api.schedule_servicer import ScheduleHostServicer
from okra_sidecar.api.servicer import WorkflowHostServicer
from okra_sidecar.api.task_worker import TaskWorkerServicer
from okra_sidecar.api.tls import CertificateFiles, server_credentials
from okra_sidecar.clock import Clock, now_ms
from okra_sidecar.config import Settings, unbounded_engine
from okra_sidecar.console.gateway import ConsoleGateway, loopback_target
from okra_sidecar.engine.definitions.dsl import WorkflowDefinition
from okra_sidecar.engine.runtime.bulk import BulkRunner
from okra_sidecar.engine.runtime.processes import (
    EngineProcesses,
)
from okra_sidecar.engine.runtime.registry import WorkflowRegistry, read_directory
from okra_sidecar.engine.runtime.retention import RetentionKeeper
from okra_sidecar.engine.runtime.runner import EngineRunner
from okra_sidecar.engine.runtime.scheduler import Scheduler
from okra_sidecar.errors import StartupError, StoreUnavailableError
from okra_sidecar.executors.runtime import EffectRuntime
from okra_sidecar.exposure import exposure_warning
from okra_sidecar.policy.causation import CausationGuard
from okra_sidecar.policy.model import current_identity
from okra_sidecar.server.grpc_server import READINESS_SERVICES, build_health_server, build_server
from okra_sidecar.server.parts import (
    REDIS_CONNECT_TIMEOUT_S,
    PolicyLayer,
    build_effects,
    build_liveness,
    build_policy_layer,
    build_runner,
    consumer_name,
    open_store,
    redis_client,
)
from okra_sidecar.startup import (
    ADMIN_LISTEN_SETTING,
    check_listen,
    unreachable_redis,
)
from okra_sidecar.store.bulk_store import RedisBulkStore
from okra_sidecar.store.cluster_client import names_a_cluster
from okra_sidecar.store.embedded import EmbeddedRedis
from okra_sidecar.store.liveness import ConsumerHeartbeat, ConsumerLiveness
from okra_sidecar.store.persistence import check_durability
from okra_sidecar.store.redis_store import RedisStore
from okra_sidecar.store.retention_store import RedisRetentionStore
from okra_sidecar.store.schedule_store import RedisScheduleStore
from okra_sidecar.tasks import cancel_and_wait
from okra_sidecar.telemetry import ClusterGauges, Telemetry
from okra_sidecar.telemetry.admin import AdminServer
from okra_sidecar.telemetry.providers import scrape_listen

logger = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 1.0
HEALTH_PING_TIMEOUT_S = 1.0


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
    bulk: BulkRunner
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


async def _read_gauges(store: RedisStore) -> ClusterGauges:
    stats = await store.stats()
    now = time.time() * 1000
    return ClusterGauges(
        running=stats.running,
        waiting=stats.waiting,
        backlog=stats.backlog,
        oldest_age_s={p: max(now - ms, 0.0) / 1000 for p, ms in stats.oldest_ms.items()},
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
    bulks: RedisBulkStore
    bulk: BulkRunner
    effects: EffectRuntime
    causation: CausationGuard
    clock: Clock


async def start_sidecar(
    settings: Settings,
    *,
    telemetry: Telemetry | None = None,
    clock: Clock | None = None,
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
        cluster = await names_a_cluster(url, connect_timeout=REDIS_CONNECT_TIMEOUT_S)
        client = redis_client(url, settings, cluster=cluster)
        stack.push_async_callback(client.aclose)
        probes = await _start_probes(settings, stack)
        store = await _open_store(settings, url, client, probes, ports, credentials, stack)
        parts = await _build_parts(
            settings, client, store, consumer, telemetry, clock or now_ms, stack
        )
        if ports.waiting is not None:
            # The real servers take the ports over (the same ones, even where 0 was asked).
            await ports.waiting.stop()
        server, port = _build_server(settings, parts, store, telemetry, probes, ports, credentials)
        admin = await _start_admin(settings, ports, port, tls, parts, telemetry, probes, stack)
        engines = await _start_engine(settings, consumer, url, store, parts, grace, stack)
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
            bulk=parts.bulk,
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
    """What can be refused before anything starts: taken ports, certificate files, budgets
    that in-process turns could not keep."""
    unbounded = unbounded_engine(settings.engine)
    if unbounded is not None:
        raise StartupError(unbounded)
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
    clock: Clock,
    stack: contextlib.AsyncExitStack,
) -> _Parts:
    """Definitions registered, policies loaded; the engine, effects and servicers built."""
    registry = WorkflowRegistry(store=store)
    definitions = await _register_definitions(settings, registry)
    policies = build_policy_layer(settings, client=client, store=store)
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
        clock=clock,
        liveness=liveness,
    )
    scheduler = Scheduler(
        schedules=RedisScheduleStore(redis=client, keys=store.keys),
        store=store,
        registry=registry,
        host=settings.host,
        settings=settings.schedule,
        clock=clock,
        authorize=policies.firings,
    )
    await scheduler.sync_definitions(definitions)
    retention = RetentionKeeper(
        store=RedisRetentionStore(redis=client, keys=store.keys),
        host=settings.host,
        settings=settings.schedule,
        clock=clock,
    )
    # Bulk operations go on on whichever sidecar holds an operation's lease.
    bulks = RedisBulkStore(redis=client, keys=store.keys)
    bulk = BulkRunner(
        store=store,
        bulks=bulks,
        clock=now_ms,
        authorize=policies.bulk_items,
        registry=registry,
    )
    effects, causation = build_effects(
        settings,
        client,
        store,
        registry,
        consumer,
        telemetry,
        liveness,
        policies,
        scheduler,
        clock,
    )
    return _Parts(
        registry=registry,
        policies=policies,
        liveness=liveness,
        runner=runner,
        scheduler=scheduler,
        retention=retention,
        bulks=bulks,
        bulk=bulk,
        effects=effects,
        causation=causation,
        clock=clock,
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
            gate=parts.policies.gate,
            clock=parts.clock,
        ),
        health_servicer=probes.servicer,
        schedules=ScheduleHostServicer(
            scheduler=parts.scheduler,
            registry=parts.registry,
            settings=settings.host,
            gate=parts.policies.schedule_gate,
            # The schedule keeps its creator's claims: firings run as that caller.
            owner=lambda: current_identity().claims,
            authorize=parts.policies.firings,
        ),
        listen=ports.listen,
        telemetry=telemetry,
        policies=parts.policies,
        task_worker=TaskWorkerServicer(
            effects=parts.effects.effects,
            gate=parts.policies.task_gate,
            lease_ms=settings.effects.task_lease_ms,
            read_block_ms=settings.engine.read_block_ms,
            max_input_depth=settings.host.max_input_depth,
        ),
        operator=WorkflowOperatorServicer(
            store=store,
            bulks=parts.bulks,
            registry=parts.registry,
            settings=settings.host,
            gate=parts.policies.gate,
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
    store: RedisStore,
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
            on_slow=store.mark_slow,
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
    for loop in (parts.scheduler, parts.retention, parts.bulk):
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
