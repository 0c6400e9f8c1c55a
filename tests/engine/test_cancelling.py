"""Cancel as the engine drives it: the parent's outcome, the cascade, the store's retry."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from okra_sidecar.engine.runtime.cancelling import cancel_instance
from okra_sidecar.errors import FailedPreconditionError
from okra_sidecar.executors.relay import OutboxRelay
from okra_sidecar.instances import InstanceStatus, ParentLink
from okra_sidecar.store.base import CancelLinks
from okra_sidecar.store.effect_store import RedisEffectStore
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.outbox_store import DELIVER, RELEASE, RedisOutboxStore
from okra_sidecar.store.redis_store import RedisStore
from tests.store.test_redis_store import IDS, new


@pytest.fixture
def store(redis: Redis) -> RedisStore:
    return RedisStore(redis=redis, keys=RedisKeys(partitions=2))


async def _family(store: RedisStore) -> tuple[str, str, str]:
    """A parent, its child run (effect `c#1`) and the child's own child (effect `g#1`)."""
    parent, child, grandchild = IDS[0], IDS[1], IDS[2]
    if store.one_node:
        await store.limits.track()  # a scope that counts: each instance holds a place
    await store.create_instance(new(parent), max_active=0)
    link = ParentLink(parent, "c#1", ("t.w.1.0.0",))
    await store.create_instance(replace(new(child), parent=link), max_active=0)
    link = ParentLink(child, "g#1", ("t.w.1.0.0", "t.w.1.0.0"))
    await store.create_instance(replace(new(grandchild), parent=link), max_active=0)
    return parent, child, grandchild


async def _inbox(store: RedisStore, instance_id: str) -> list[dict[str, Any]]:
    snapshot = await store.load_turn(instance_id)
    assert snapshot is not None
    return [entry.event for entry in snapshot.inbox]


async def test_a_cancelled_child_hands_its_parent_a_runtime_error_once(
    store: RedisStore, redis: Redis
) -> None:
    parent, child, grandchild = await _family(store)
    assert await cancel_instance(store, child, reason="stop", now_ms=7) == "t.w.1.0.0"
    # The parent may live in another slot: the outcome waits in the child's partition outbox.
    assert await _inbox(store, parent) == []
    outbox = RedisOutboxStore(redis=redis, keys=store.keys)
    await outbox.ensure_groups()
    entries = await outbox.read("r1", count=10, block_ms=10)
    # The child's outcome for the parent, and the grandchild's (cancelled in the cascade) for
    # the child, which no longer takes deliveries.
    delivered = sorted((e.kind, e.instance_id) for e in entries if e.kind == DELIVER)
    assert delivered == [(DELIVER, parent), (DELIVER, child)]
    # Each cancelled instance also hands its admission back to its limit scope.
    released = sorted(e.instance_id for e in entries if e.kind == RELEASE)
    assert released == sorted([child, grandchild])
    relay = OutboxRelay(
        outbox=outbox,
        effects=RedisEffectStore(redis=redis, keys=store.keys),
        limits=store.limits,
        consumer="r1",
        claim_idle_ms=1000,
    )
    await relay.relay(entries)
    await relay.relay(entries)  # as a relay that died before acknowledging, claimed again
    (event,) = await _inbox(store, parent)
    assert event["data"]["effectId"] == "c#1" and event["data"]["ok"] is False
    assert event["data"]["error"]["status"] == 499
    assert event["data"]["error"]["detail"] == f"child run {child} was cancelled: stop"
    assert await outbox.read("r1", count=10, block_ms=10) == []
    assert (await store.get_instance(parent)).status is InstanceStatus.PENDING  # type: ignore[union-attr]


async def test_cancelling_a_parent_cascades_down_every_generation(store: RedisStore) -> None:
    parent, child, grandchild = await _family(store)
    await cancel_instance(store, parent, reason="enough", now_ms=7)
    for instance_id, reason in [
        (parent, "enough"),
        (child, f"parent {parent} cancelled"),
        (grandchild, f"parent {child} cancelled"),
    ]:
        record = await store.get_instance(instance_id)
        assert record is not None and record.status is InstanceStatus.CANCELLED
        assert record.cancel_reason == reason


async def test_links_that_keep_moving_refuse_the_cancel_and_write_nothing(
    store: RedisStore, redis: Redis
) -> None:
    parent, _, _ = await _family(store)

    async def stale_links(instance_id: str) -> CancelLinks:
        # As if a turn registered a subscription after every read of the links.
        return CancelLinks("", "", '{"types": ["x"], "filters": []}')

    store.cancel_links = stale_links  # type: ignore[method-assign]
    with pytest.raises(FailedPreconditionError, match="kept changing"):
        await cancel_instance(store, parent, reason="r", now_ms=7)
    assert await redis.hget(store.keys.instance(parent), "status") == b"pending"
