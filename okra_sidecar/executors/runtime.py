"""EffectRuntime: the executors, the event router and what they share, started and stopped
together by the composition root (server/)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from opentelemetry.trace import Tracer

from okra_sidecar.config import EngineSettings, Settings
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.engine.runtime.sandbox import ExpressionSandbox, expression_sandbox
from okra_sidecar.engine.runtime.scheduler import FiringAuthorizer
from okra_sidecar.executors.children import ChildStarter
from okra_sidecar.executors.dispatcher import EffectDispatcher
from okra_sidecar.executors.grpc_call import GrpcCaller
from okra_sidecar.executors.hosts import HostMap
from okra_sidecar.executors.http import HttpCaller
from okra_sidecar.executors.openapi import OpenApiCaller
from okra_sidecar.executors.outbound import OutboundGuard, redis_endpoints
from okra_sidecar.executors.reconciler import LimitReconciler
from okra_sidecar.executors.relay import OutboxRelay
from okra_sidecar.executors.router import EventRouter
from okra_sidecar.policy.causation import CausationGuard
from okra_sidecar.store.base import Store
from okra_sidecar.store.effect_store import EffectEntry, RedisEffectStore
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.limit_store import RedisLimitStore
from okra_sidecar.store.liveness import ConsumerLiveness
from okra_sidecar.store.outbox_store import OutboxEntry, RedisOutboxStore

# Entries taken over from one stopped consumer per stream and pass.
ORPHAN_BATCH = 100

__all__ = ["EffectRuntime"]


@dataclass
class EffectRuntime:
    effects: RedisEffectStore
    http: HttpCaller
    openapi: OpenApiCaller
    grpc: GrpcCaller
    dispatcher: EffectDispatcher
    router: EventRouter
    relay: OutboxRelay
    reconciler: LimitReconciler

    @classmethod
    def build(
        cls,
        *,
        redis: aioredis.Redis,
        keys: RedisKeys,
        store: Store,
        registry: WorkflowRegistry,
        settings: Settings,
        consumer: str,
        tracer: Tracer | None = None,
        triggers: Callable[[dict[str, Any]], Awaitable[object]] | None = None,
        authorize: FiringAuthorizer | None = None,
        causation: CausationGuard | None = None,
        liveness: ConsumerLiveness | None = None,
        limits: RedisLimitStore | None = None,
        sandbox: ExpressionSandbox | None = None,
    ) -> EffectRuntime:
        effects = RedisEffectStore(redis=redis, keys=keys)
        orphans = None
        if liveness is not None:

            async def orphans(consumer: str, held: Collection[str]) -> list[EffectEntry]:
                return await effects.claim_orphan_effects(
                    liveness, consumer, held=held, count=ORPHAN_BATCH
                )

        http, openapi, grpc = _callers(settings, causation)
        # Child runs pass the run policies as their parent's owner, and the instance limits.
        children = ChildStarter(
            store=store,
            effects=effects,
            registry=registry,
            host=settings.host,
            authorize=authorize,
            causation=causation,
        )
        engine = settings.engine
        dispatcher = EffectDispatcher(
            effects=effects,
            http=http,
            openapi=openapi,
            grpc=grpc,
            children=children,
            registry=registry,
            consumer=consumer,
            concurrency=settings.effects.concurrency,
            claim_idle_ms=engine.claim_idle_ms,
            read_block_ms=engine.read_block_ms,
            tracer=tracer,
            orphans=orphans,
            orphan_interval_s=engine.heartbeat_ms / 2000,
            max_call_timeout_ms=int(settings.effects.max_call_timeout_s * 1000),
            workflow_share=settings.effects.workflow_share,
        )
        router = EventRouter(
            effects=effects,
            sandbox=sandbox or expression_sandbox(settings),
            consumer=consumer,
            claim_idle_ms=engine.claim_idle_ms,
            read_block_ms=engine.read_block_ms,
            triggers=triggers,
            registry=registry,
        )
        if limits is None:
            limits = RedisLimitStore(redis=redis, keys=keys)
        relay = build_relay(
            RedisOutboxStore(redis=redis, keys=keys),
            effects=effects,
            limits=limits,
            consumer=consumer,
            engine=engine,
            liveness=liveness,
        )
        reconciler = LimitReconciler(limits=limits)
        return cls(effects, http, openapi, grpc, dispatcher, router, relay, reconciler)

    async def start(self) -> None:
        await self.dispatcher.start()
        await self.router.start()
        await self.relay.start()
        await self.reconciler.start()

    async def stop(self, *, timeout_s: float) -> None:
        """Stop reading; calls in flight get `timeout_s`, then stay pending for another sidecar."""
        await self.reconciler.stop()
        await self.relay.stop()
        await self.router.stop()
        await self.dispatcher.stop(timeout_s=timeout_s)
        await self.http.aclose()
        await self.openapi.aclose()
        await self.grpc.aclose()


def _callers(
    settings: Settings, causation: CausationGuard | None
) -> tuple[HttpCaller, OpenApiCaller, GrpcCaller]:
    """The outbound callers, sharing the host map and the guard on what they may reach."""
    hosts = HostMap(settings.effects.http_hosts)
    timeout_s = settings.effects.call_timeout_s
    base_dir = settings.workflows_dir or Path.cwd()
    guard = OutboundGuard(
        allow=settings.effects.outbound_allow,
        deny=settings.effects.outbound_deny,
        private_endpoints=redis_endpoints(settings.redis.url),
        file_roots=[base_dir, *settings.effects.proto_paths],
    )
    http = HttpCaller(hosts=hosts, default_timeout_s=timeout_s, guard=guard, causation=causation)
    grpc = GrpcCaller(
        hosts=hosts,
        base_dir=base_dir,
        default_timeout_s=timeout_s,
        guard=guard,
        causation=causation,
    )
    return http, OpenApiCaller(http=http, hosts=hosts, guard=guard), grpc


def build_relay(
    outbox: RedisOutboxStore,
    *,
    effects: RedisEffectStore,
    limits: RedisLimitStore,
    consumer: str,
    engine: EngineSettings,
    liveness: ConsumerLiveness | None,
) -> OutboxRelay:
    """The relay, taking over a dead relay's entries by heartbeat when `liveness` is given."""
    orphans = None
    if liveness is not None:

        async def orphans(name: str, held: Collection[str]) -> list[OutboxEntry]:
            return await outbox.claim_orphans(liveness, name, held=held, count=ORPHAN_BATCH)

    return OutboxRelay(
        outbox=outbox,
        orphans=orphans,
        orphan_interval_s=engine.heartbeat_ms / 2000,
        effects=effects,
        limits=limits,
        consumer=consumer,
        claim_idle_ms=engine.claim_idle_ms,
        read_block_ms=engine.read_block_ms,
        read_linger_ms=engine.read_linger_ms,
    )
