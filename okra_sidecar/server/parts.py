"""Parts the serving process and engine children build alike: Redis, store, policies, runner."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import cast

import redis.asyncio as aioredis
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from okra_sidecar.api.admin import PolicyAdminServicer
from okra_sidecar.api.gate import PolicyGate
from okra_sidecar.api.interceptors import AuthInterceptor, PolicyInterceptor
from okra_sidecar.api.resource_gates import ScheduleGate, TaskGate
from okra_sidecar.clock import Clock
from okra_sidecar.config import Settings
from okra_sidecar.engine.runtime.event_triggers import EventTriggers
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.engine.runtime.runner import EngineLane, EngineRunner
from okra_sidecar.engine.runtime.sandbox import expression_sandbox
from okra_sidecar.engine.runtime.scheduler import Scheduler
from okra_sidecar.executors.runtime import EffectRuntime
from okra_sidecar.policy.alerts import FailureAlerts
from okra_sidecar.policy.audit import AuditLog, ServiceIdentity
from okra_sidecar.policy.auth import TokenVerifier
from okra_sidecar.policy.bulk_items import PolicyBulkItemAuthorizer
from okra_sidecar.policy.causation import CausationGuard
from okra_sidecar.policy.cel import CelEngine
from okra_sidecar.policy.evaluator import PolicyEvaluator
from okra_sidecar.policy.firing import PolicyFiringAuthorizer
from okra_sidecar.policy.live import PolicyManager
from okra_sidecar.store.base import WorkItem
from okra_sidecar.store.cluster_client import cluster_redis, store_commands
from okra_sidecar.store.effect_store import RedisEffectStore
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.layout import open_layout
from okra_sidecar.store.liveness import ConsumerLiveness
from okra_sidecar.store.policy_store import RedisPolicyStore
from okra_sidecar.store.redis_store import RedisStore
from okra_sidecar.store.schedule_store import RedisScheduleStore
from okra_sidecar.telemetry import Telemetry

# Work items taken over from one stopped consumer per stream and pass.
ORPHAN_BATCH = 100
REDIS_POOL_BASE = 128
REDIS_POOL_WAIT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 10.0


@dataclass
class PolicyLayer:
    """Identity and policies: two interceptors, the servicers' gates, the admin api and the
    live policy set."""

    manager: PolicyManager
    auth: AuthInterceptor
    policy: PolicyInterceptor
    # Each servicer decides its rpcs through its gate, with the request it parsed.
    gate: PolicyGate
    schedule_gate: ScheduleGate
    task_gate: TaskGate
    admin: PolicyAdminServicer
    audit: AuditLog
    alerts: FailureAlerts
    # Schedule firings and event triggers go through the run policies too.
    firings: PolicyFiringAuthorizer
    # Each instance a bulk operation acts on goes through its action's policies.
    bulk_items: PolicyBulkItemAuthorizer
    # The shared rate limits (also how many instances one instance may cause).
    rates: RedisPolicyStore


def build_policy_layer(
    settings: Settings, *, client: aioredis.Redis, store: RedisStore
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
        policy=PolicyInterceptor(decides=evaluator.decides),
        gate=PolicyGate(evaluator=evaluator, store=store),
        schedule_gate=ScheduleGate(
            evaluator=evaluator, schedules=RedisScheduleStore(redis=client, keys=store.keys)
        ),
        task_gate=TaskGate(evaluator=evaluator),
        admin=PolicyAdminServicer(
            manager=manager, store=policy_store, admin_claim=settings.policy.admin_claim
        ),
        audit=audit,
        alerts=FailureAlerts(policies=manager, audit=audit),
        firings=PolicyFiringAuthorizer(evaluator=evaluator),
        bulk_items=PolicyBulkItemAuthorizer(evaluator=evaluator),
        rates=policy_store,
    )


def consumer_name() -> str:
    """This process's name in every consumer group (and its heartbeat's)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def build_liveness(
    settings: Settings, client: aioredis.Redis, store: RedisStore
) -> ConsumerLiveness:
    """Heartbeats that expire after three missed beats (store/liveness.py)."""
    return ConsumerLiveness(redis=client, keys=store.keys, ttl_ms=3 * settings.engine.heartbeat_ms)


def redis_client(url: str, settings: Settings, *, cluster: bool = False) -> aioredis.Redis:
    """The process's one Redis client, its pool sized for the engine and the executors."""
    # Effects hold connections too: blocking reads (executors, router, one per task poller).
    max_connections = REDIS_POOL_BASE + 2 * settings.engine.concurrency
    max_connections += settings.effects.concurrency
    if cluster:
        # RedisCluster answers every command the stores send (each names keys of one slot),
        # with a pool of that size per node; it is not a subclass of Redis, hence the cast.
        return cast(
            aioredis.Redis,
            cluster_redis(
                url,
                max_connections=max_connections,
                socket_timeout=REDIS_SOCKET_TIMEOUT_S,
                connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            ),
        )
    # A blocking pool makes a burst wait for a free connection instead of failing the call.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
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
    # Instance limits are counted per service namespace (see store/limit_store.py).
    keys = replace(keys, scope=settings.telemetry.service_namespace)
    return build_store(settings, url, client, keys)


def build_store(
    settings: Settings, url: str, client: aioredis.Redis, keys: RedisKeys
) -> RedisStore:
    """The store on `client`, its per-call commands on one multiplexed connection (one per
    master on a Redis Cluster)."""
    # The engine's blocking XREADGROUP waits up to read_block_ms for a reply.
    read_timeout = REDIS_SOCKET_TIMEOUT_S + settings.engine.read_block_ms / 1000
    hot = store_commands(
        url, client, socket_timeout=REDIS_SOCKET_TIMEOUT_S, connect_timeout=REDIS_CONNECT_TIMEOUT_S
    )
    reader = store_commands(
        url,
        client,
        socket_timeout=read_timeout,
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
    lane: EngineLane = EngineLane.ALL,
) -> EngineRunner:
    """The engine runner; the serving process and engine children build it alike."""
    slow = lane is EngineLane.SLOW

    async def orphans(name: str, held: Collection[str]) -> list[WorkItem]:
        return await store.claim_orphan_work(
            liveness, name, held=held, count=ORPHAN_BATCH, slow=slow
        )

    return EngineRunner(
        store=store,
        registry=registry,
        settings=settings.engine,
        consumer=consumer,
        turns=telemetry.turns,
        clock=clock,
        on_failure=policies.alerts,
        orphans=orphans,
        lane=lane,
    )


def build_effects(
    settings: Settings,
    client: aioredis.Redis,
    store: RedisStore,
    registry: WorkflowRegistry,
    consumer: str,
    telemetry: Telemetry,
    liveness: ConsumerLiveness,
    policies: PolicyLayer,
    scheduler: Scheduler,
    clock: Clock,
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
    # Bounds the router's and the triggers' filter expressions; the router stops it.
    sandbox = expression_sandbox(settings)
    triggers = EventTriggers(
        sandbox=sandbox,
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
        limits=store.limits,
        tracer=telemetry.tracer,
        triggers=triggers.offer,
        sandbox=sandbox,
        authorize=policies.firings,
        causation=causation,
    )
    return effects, causation
