"""RedisBulkStore: bulk operations, their matched instances, and the lease that runs each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from okra_sidecar.bulks import BulkRecord, BulkSpec, BulkState, ItemOutcome
from okra_sidecar.store.jsontext import dumps, loads
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.replies import map_redis_errors, text
from okra_sidecar.store.scripts import load_script

__all__ = ["Claim", "ClaimResult", "RedisBulkStore"]

# Instance ids are written to the operation's list this many per command.
IDS_PER_PUSH = 1000
# ListBulkOperations shows this many, newest first.
LIST_LIMIT = 100


class ClaimResult:
    """What bulk_claim.lua answered (see its header)."""

    NEW = "new"
    AGAIN = "again"
    ACTED = "acted"
    LOST = "lost"
    STOPPED = "stopped"


class Claim(NamedTuple):
    """A ClaimResult value and, for a new or repeated claim, the workflow the instance ran
    when the operation matched it ('' when the operation kept none: it is no bulk SIGNAL, or
    an earlier version started it)."""

    result: str
    workflow: str = ""


class RedisBulkStore:
    """Every write of an operation is one script on its own hash-tagged keys."""

    def __init__(self, *, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._lease = redis.register_script(load_script("bulk_lease"))
        self._claim = redis.register_script(load_script("bulk_claim"))
        self._record = redis.register_script(load_script("bulk_record"))
        self._cancel = redis.register_script(load_script("bulk_cancel"))

    async def create(
        self,
        operation_id: str,
        spec: BulkSpec,
        instance_ids: Sequence[str],
        *,
        now_ms: int,
        workflows: Mapping[str, str] | None = None,
    ) -> None:
        """Store a new operation with the instances it matched, for any sidecar to run, and
        the `workflows` they run when its action needs them (a bulk SIGNAL's schemas)."""
        keys = self.keys
        workflow_pairs = list((workflows or {}).items())
        state = BulkState.RUNNING if instance_ids else BulkState.COMPLETED
        with map_redis_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                for start in range(0, len(instance_ids), IDS_PER_PUSH):
                    chunk = instance_ids[start : start + IDS_PER_PUSH]
                    pipe.rpush(keys.bulk_ids(operation_id), *chunk)
                for start in range(0, len(workflow_pairs), IDS_PER_PUSH):
                    pairs: dict[Any, Any] = dict(workflow_pairs[start : start + IDS_PER_PUSH])
                    pipe.hset(keys.bulk_workflows(operation_id), mapping=pairs)
                pipe.hset(
                    keys.bulk(operation_id),
                    mapping={
                        "spec": dumps(spec.to_json()),
                        "state": state.value,
                        "matched": len(instance_ids),
                        "cursor": 0,
                        "created": now_ms,
                        "updated": now_ms,
                    },
                )
                pipe.zadd(keys.bulks, {operation_id: now_ms})
                if instance_ids:
                    pipe.sadd(keys.bulks_running, operation_id)
                await pipe.execute()

    async def get(self, operation_id: str) -> BulkRecord | None:
        with map_redis_errors():
            fields: Any = await self.redis.hgetall(self.keys.bulk(operation_id))
        return _decode(operation_id, fields)

    async def recent(self, limit: int = LIST_LIMIT) -> list[BulkRecord]:
        """The newest operations first."""
        with map_redis_errors():
            newest: Any = await self.redis.zrevrange(self.keys.bulks, 0, limit - 1)
            ids = [text(i) for i in newest]
            async with self.redis.pipeline(transaction=False) as pipe:
                for operation_id in ids:
                    pipe.hgetall(self.keys.bulk(operation_id))
                rows = await pipe.execute()
        records = [_decode(i, row) for i, row in zip(ids, rows, strict=True)]
        return [r for r in records if r is not None]

    async def running(self) -> list[str]:
        with map_redis_errors():
            return sorted(text(i) for i in await self.redis.smembers(self.keys.bulks_running))

    async def cancel(self, operation_id: str, *, now_ms: int) -> list[str]:
        """Stop a running operation: ['ok'], ['missing'] or ['finished', state]."""
        keys = self.keys
        with map_redis_errors():
            result = await self._cancel(
                keys=[keys.bulk(operation_id), keys.bulks_running], args=[operation_id, now_ms]
            )
        return [text(x) for x in result]

    async def take_lease(
        self, operation_id: str, owner: str, *, now_ms: int, lease_ms: int
    ) -> bool:
        keys = self.keys
        with map_redis_errors():
            held = await self._lease(
                keys=[keys.bulk(operation_id), keys.bulks_running],
                args=[operation_id, owner, now_ms, lease_ms],
            )
        return int(held) == 1

    async def instance_ids(self, operation_id: str, start: int, count: int) -> list[str]:
        with map_redis_errors():
            ids = await self.redis.lrange(
                self.keys.bulk_ids(operation_id), start, start + count - 1
            )
        return [text(i) for i in ids]

    async def claim(
        self, operation_id: str, owner: str, instance_id: str, *, now_ms: int, lease_ms: int
    ) -> Claim:
        """Claim one instance for the lease holder."""
        keys = self.keys
        with map_redis_errors():
            result = await self._claim(
                keys=[
                    keys.bulk(operation_id),
                    keys.bulk_items(operation_id),
                    keys.bulk_workflows(operation_id),
                ],
                args=[owner, instance_id, now_ms, lease_ms],
            )
        outcome = text(result[0])
        if outcome in (ClaimResult.NEW, ClaimResult.AGAIN):
            return Claim(outcome, text(result[1]))
        return Claim(outcome)

    async def record(
        self,
        operation_id: str,
        owner: str,
        instance_id: str,
        *,
        outcome: ItemOutcome,
        why: str,
        next_cursor: int,
        now_ms: int,
    ) -> bool:
        """Record an instance's outcome and move the cursor; False if the lease was lost."""
        keys = self.keys
        with map_redis_errors():
            recorded = await self._record(
                keys=[keys.bulk(operation_id), keys.bulk_items(operation_id), keys.bulks_running],
                args=[owner, instance_id, outcome.value, why, next_cursor, now_ms, operation_id],
            )
        return int(recorded) == 1

    async def item_outcomes(self, operation_id: str) -> dict[str, str]:
        """Instance id -> what the operation did to it, for reports and tests."""
        with map_redis_errors():
            items: Any = await self.redis.hgetall(self.keys.bulk_items(operation_id))
        return {text(k): text(v) for k, v in items.items()}


def _decode(operation_id: str, raw: dict[Any, Any]) -> BulkRecord | None:
    fields = {text(k): text(v) for k, v in raw.items()}
    if "spec" not in fields:
        return None
    return BulkRecord(
        operation_id=operation_id,
        spec=BulkSpec.from_json(loads(fields["spec"])),
        state=BulkState(fields["state"]),
        matched=int(fields.get("matched", 0)),
        done=int(fields.get(ItemOutcome.DONE.value, 0)),
        skipped=int(fields.get(ItemOutcome.SKIPPED.value, 0)),
        failed=int(fields.get(ItemOutcome.FAILED.value, 0)),
        reasons={k[4:]: int(v) for k, v in fields.items() if k.startswith("why:")},
        created_ms=int(fields.get("created", 0)),
        updated_ms=int(fields.get("updated", 0)),
        cursor=int(fields.get("cursor", 0)),
    )
