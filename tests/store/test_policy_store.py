"""Policy state in Redis: shared rate limits, the policy set and its channel, audit, limits."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from okra_sidecar.engine.runtime.cancelling import cancel_instance
from okra_sidecar.errors import InstanceChangedError, InvalidInputError, ResourceExhaustedError
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.cluster_client import store_commands
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.policy_store import RedisPolicyStore
from okra_sidecar.store.redis_store import RedisStore
from tests.helpers import apply_outbox
from tests.store.test_redis_store import IDS, commit, new


@pytest_asyncio.fixture(params=["pooled", "multiplexed"])
async def policy_store(
    request: pytest.FixtureRequest, redis: Redis, redis_url: str
) -> AsyncIterator[RedisPolicyStore]:
    """On redis-py's pool, and on the multiplexed connections the sidecar gives it.

    Each test has a prefix of its own: on a Redis Cluster a PUBLISH reaches the other nodes
    over the cluster bus, so an earlier test's announcement may arrive after the flush.
    """
    keys = RedisKeys(prefix=f"okra:{uuid.uuid4().hex[:8]}:")
    if request.param == "pooled":
        yield RedisPolicyStore(redis=redis, keys=keys, audit_max_length=50)
        return
    hot = store_commands(redis_url, redis, socket_timeout=5.0, connect_timeout=5.0)
    try:
        yield RedisPolicyStore(redis=redis, keys=keys, audit_max_length=50, hot=hot)
    finally:
        await hot.aclose()


@pytest.fixture
def store(redis: Redis) -> RedisStore:
    return RedisStore(redis=redis, keys=RedisKeys(partitions=2))


async def test_gcra_allows_the_burst_then_says_when(
    policy_store: RedisPolicyStore, redis: Redis
) -> None:
    # 5 per 5 s: five at once, then one a second. The script reads Redis' clock, so the wait
    # is bounded by the interval only; the six calls need just take less than a second.
    other = RedisPolicyStore(redis=redis, keys=policy_store.keys, audit_max_length=50)
    results = [
        await store.acquire_rate("svc:run", interval_ms=1000.0, period_ms=5000)
        for store in (policy_store, other, policy_store, other, policy_store, other)
    ]
    assert results[:5] == [None] * 5
    wait = results[5]
    assert wait is not None and 0 < wait <= 1.0
    # Refused calls take no slot: asking again at once is refused again, never sooner.
    again = await policy_store.acquire_rate("svc:run", interval_ms=1000.0, period_ms=5000)
    assert again is not None and again <= wait
    await asyncio.sleep(wait + 0.01)
    assert await other.acquire_rate("svc:run", interval_ms=1000.0, period_ms=5000) is None
    # Names are separate limits.
    assert await other.acquire_rate("svc:signal", interval_ms=1000.0, period_ms=5000) is None


async def test_gcra_is_atomic_under_concurrency(policy_store: RedisPolicyStore) -> None:
    results = await asyncio.gather(
        *(
            policy_store.acquire_rate("svc:burst", interval_ms=2000.0, period_ms=60_000)
            for _ in range(80)
        )
    )
    assert sum(r is None for r in results) == 30


async def test_published_policies_are_announced(policy_store: RedisPolicyStore) -> None:
    assert await policy_store.get_policies() is None
    async with policy_store.policy_changes() as changes:
        version = await policy_store.publish_policies(
            '{"policy.workflow.audit":true}', source="file:p.json", digest="d1", file_digest="f1"
        )
        assert await changes.next(timeout_s=1.0) == version == 1
    stored = await policy_store.get_policies()
    assert stored is not None
    assert (stored.version, stored.document, stored.source) == (
        1,
        {"policy.workflow.audit": True},
        "file:p.json",
    )
    again = await policy_store.publish_policies("{}", source="admin:ada", digest="d2")
    stored = await policy_store.get_policies()
    assert again == 2 and stored is not None
    # An admin change keeps the digest of the file that was last applied.
    assert (stored.document, stored.file_digest) == ({}, "f1")
    assert await policy_store.get_policy_version() == 2


async def test_audit_stream_is_capped_and_paged(
    policy_store: RedisPolicyStore, redis: Redis
) -> None:
    for i in range(500):
        await policy_store.append_audit({"n": i})
    # Records are written in batches behind the calls; flushing waits for them.
    await policy_store.flush_audit()
    # Trimming is approximate (whole stream nodes), but it does trim.
    assert await redis.xlen(policy_store.keys.audit) < 500
    first = await policy_store.list_audit(limit=3)
    assert [e.record["n"] for e in first] == [499, 498, 497]
    second = await policy_store.list_audit(limit=2, before=first[-1].entry_id)
    assert [e.record["n"] for e in second] == [496, 495]
    with pytest.raises(InvalidInputError, match="cursor"):
        await policy_store.list_audit(limit=2, before="nonsense")


async def test_per_workflow_limit_is_admitted_atomically(store: RedisStore, redis: Redis) -> None:
    async def create(instance_id: str) -> bool:
        try:
            return await store.create_instance(
                new(instance_id, time.time_ns() // 1000),
                max_active=0,
                max_per_workflow=3,
                workflow_limit_policy="policy.workflow.maxInstancesPerWorkflow",
            )
        except ResourceExhaustedError as exc:
            assert exc.policy == "policy.workflow.maxInstancesPerWorkflow"
            assert "limit of 3 concurrent instances of t.w" in str(exc)
            return False

    admitted = await asyncio.gather(*(create(i) for i in IDS))
    assert sum(admitted) == 3
    assert await store.limits.held_by_workflow("t.w") == 3
    winner = IDS[admitted.index(True)]
    snapshot = await store.load_turn(winner)
    assert snapshot is not None
    assert await store.commit_turn(snapshot, commit(InstanceStatus.COMPLETED))
    # On a Cluster the release reaches the limit's slot through the outbox, which the relay
    # applies; on a single Redis the finishing commit gave it back already.
    assert await store.limits.held_by_workflow("t.w") == (2 if store.one_node else 3)
    await apply_outbox(store)
    assert await store.limits.held_by_workflow("t.w") == 2
    loser = IDS[admitted.index(False)]
    assert await create(loser) is True
    await cancel_instance(store, loser, reason="", now_ms=1)
    assert await store.limits.held_by_workflow("t.w") == 2
    assert await store.limits.held() == 2


async def test_signal_and_cancel_apply_only_on_the_checked_status(
    store: RedisStore, redis: Redis
) -> None:
    await store.create_instance(new(IDS[0]), max_active=0)
    event = {"type": "go"}
    with pytest.raises(InstanceChangedError, match="changed to pending"):
        await store.signal(IDS[0], signal_id="s1", event=event, now_ms=1, expect_status="waiting")
    with pytest.raises(InstanceChangedError):
        await cancel_instance(store, IDS[0], reason="r", now_ms=1, expect_status="running")
    assert await redis.xlen(store.keys.inbox(IDS[0])) == 0
    assert not await redis.exists(store.keys.signal_ids(IDS[0]))  # the id given back
    assert await redis.hget(store.keys.instance(IDS[0]), "status") == b"pending"
    assert not await store.signal(
        IDS[0], signal_id="s1", event=event, now_ms=1, expect_status="pending"
    )
    await cancel_instance(store, IDS[0], reason="r", now_ms=1, expect_status="pending")
    assert await redis.hget(store.keys.instance(IDS[0]), "status") == b"cancelled"
