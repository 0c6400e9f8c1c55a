"""A process killed between the two steps of an admission or a release leaks no place."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis

from okra_sidecar.errors import ResourceExhaustedError
from okra_sidecar.executors.reconciler import LimitReconciler
from okra_sidecar.executors.relay import OutboxRelay
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.effect_store import RedisEffectStore
from okra_sidecar.store.keys import RELAY_GROUP
from okra_sidecar.store.liveness import ConsumerLiveness
from okra_sidecar.store.outbox_store import OutboxEntry, RedisOutboxStore
from okra_sidecar.store.redis_store import RedisStore
from tests.helpers import eventually, eventually_held
from tests.store.limit_child import KEYS
from tests.store.test_redis_store import IDS, commit, new


@asynccontextmanager
async def child(
    redis_url: str, step: str, instance_id: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """tests/store/limit_child.py doing `step`, killed on the way out if still running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.store.limit_child",
        redis_url,
        step,
        instance_id,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode().strip()


@asynccontextmanager
async def reconciling(store: RedisStore) -> AsyncIterator[None]:
    """A sidecar's reconciler for the store's scope, every 0.1 s."""
    reconciler = LimitReconciler(limits=store.limits, interval_s=0.1)
    await reconciler.start()
    try:
        yield
    finally:
        await reconciler.stop()


async def finished_instance(redis: Redis) -> RedisStore:
    """A store whose instance IDS[0] finished: its release waits in the outbox (on a Redis
    Cluster; a single Redis has no such window, see the test after these)."""
    store = RedisStore(redis=redis, keys=KEYS)
    if store.one_node:
        pytest.skip("on a single Redis the finishing commit gives the place back itself")
    await store.create_instance(new(IDS[0]), max_active=1)
    snapshot = await store.load_turn(IDS[0])
    assert snapshot is not None
    assert await store.commit_turn(snapshot, commit(InstanceStatus.COMPLETED))
    return store


async def test_a_kill_between_reserve_and_create_is_repaired(redis: Redis, redis_url: str) -> None:
    store = RedisStore(redis=redis, keys=KEYS)
    async with child(redis_url, "reserve", IDS[0]) as process:
        assert await line(process)  # the reservation's score: reserved, not created
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert await store.limits.held() == 1
    async with reconciling(store):
        await eventually_held(redis, 0, keys=KEYS)
        await eventually_held(redis, 0, "t.w", keys=KEYS)
    assert await store.get_instance(IDS[0]) is None
    # A retried Run is admitted again and created.
    assert await store.create_instance(new(IDS[0]), max_active=1) is True
    assert await store.limits.held() == 1


async def test_a_create_later_than_its_repair_is_refused(redis: Redis, redis_url: str) -> None:
    store = RedisStore(redis=redis, keys=KEYS)
    async with child(redis_url, "reserve", IDS[0]) as process:
        assert await line(process)
        # The process stalls between its two steps long enough for the repair ...
        async with reconciling(store):
            await eventually_held(redis, 0, keys=KEYS)
        # ... then goes on: its create must not run uncounted.
        assert process.stdin is not None
        process.stdin.write(b"create\n")
        assert await line(process) == "lapsed"
    assert await store.get_instance(IDS[0]) is None
    assert await store.limits.held() == 0
    assert await store.create_instance(new(IDS[0]), max_active=1) is True


async def test_a_kill_between_final_and_release_is_repaired(redis: Redis, redis_url: str) -> None:
    store = await finished_instance(redis)
    await RedisOutboxStore(redis=redis, keys=KEYS).ensure_groups()
    async with child(redis_url, "relay", IDS[0]) as process:
        assert await line(process) == "1"  # the release, read and not applied
        process.send_signal(signal.SIGKILL)
        await process.wait()
    partition = KEYS.partition(IDS[0])
    pending = await redis.xpending(KEYS.outbox(partition), RELAY_GROUP)
    assert pending["pending"] == 1
    assert await store.limits.held() == 1
    with_limit = new(IDS[1])
    # The finished instance still holds the only place.
    with pytest.raises(ResourceExhaustedError, match="limit of 1"):
        await store.create_instance(with_limit, max_active=1)
    async with reconciling(store):
        await eventually_held(redis, 0, keys=KEYS)
    assert await store.create_instance(with_limit, max_active=1) is True


async def test_a_dead_relays_release_is_applied_by_another(redis: Redis, redis_url: str) -> None:
    store = await finished_instance(redis)
    outbox = RedisOutboxStore(redis=redis, keys=KEYS)
    await outbox.ensure_groups()
    async with child(redis_url, "relay", IDS[0]) as process:
        assert await line(process) == "1"
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert await store.limits.held() == 1
    # A live sidecar's relay takes over what a relay without a heartbeat left pending, long
    # before claimIdleMs (here an hour).
    liveness = ConsumerLiveness(redis=redis, keys=KEYS, ttl_ms=300)

    async def orphans(consumer: str, held: Collection[str]) -> list[OutboxEntry]:
        return await outbox.claim_orphans(liveness, consumer, held=held, count=100)

    relay = OutboxRelay(
        outbox=outbox,
        effects=RedisEffectStore(redis=redis, keys=KEYS),
        limits=store.limits,
        consumer="alive",
        claim_idle_ms=3_600_000,
        orphans=orphans,
        orphan_interval_s=0.1,
    )
    outbox_key = KEYS.outbox(KEYS.partition(IDS[0]))

    async def acknowledged() -> bool:
        return int((await redis.xpending(outbox_key, RELAY_GROUP))["pending"]) == 0

    await relay.start()
    try:
        await eventually_held(redis, 0, keys=KEYS)
        # The relay acknowledges the entries it applied right after applying them.
        await eventually(acknowledged, what="the taken-over release acknowledged")
    finally:
        await relay.stop()
    assert await redis.xpending(outbox_key, RELAY_GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_on_one_node_the_finishing_commit_gives_the_place_back(redis: Redis) -> None:
    store = RedisStore(redis=redis, keys=KEYS)
    if not store.one_node:
        pytest.skip("on a Redis Cluster the release goes through the outbox (tests above)")
    await store.create_instance(new(IDS[0]), max_active=1)
    assert await store.limits.held() == 1
    snapshot = await store.load_turn(IDS[0])
    assert snapshot is not None and snapshot.limit_scope == KEYS.scope
    assert await store.commit_turn(snapshot, commit(InstanceStatus.COMPLETED))
    # Released in the same step, with nothing left for a relay to apply.
    assert await store.limits.held() == 0
    assert await store.limits.held_by_workflow("t.w") == 0
    assert await redis.xlen(KEYS.outbox(KEYS.partition(IDS[0]))) == 0
    assert await store.create_instance(new(IDS[1]), max_active=1) is True
