"""RedisEffectStore: the streams between turns and the outside world.

Three kinds of streams, each read through a consumer group so that every sidecar shares the
work and a stopped reader's entries are claimed by another (XAUTOCLAIM):

- `effects:{p}`: effects committed by turns (http, grpc, openapi, child, worker), read by the
  executors. A result goes back with deliver.lua, which also acknowledges the effect.
- `tasks:{service}`, one per partition beside its effects: worker tasks, read by the workers
  polling through TaskWorker. A task stays pending (leased) until CompleteTask or FailTask; a
  heartbeat re-claims it to reset its idle time, and a task idle longer than the lease is
  claimed for another worker.
- `events`: CloudEvents published by emit tasks and the Emit rpc, read by the event router,
  which delivers each to the instances whose listen subscriptions match.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.cluster_client import pooled_commands
from okra_sidecar.store.jsontext import dumps, loads
from okra_sidecar.store.keys import (
    EXECUTOR_GROUP,
    ROUTER_GROUP,
    TASK_DELIVERED_FIELD,
    WORKER_GROUP,
    RedisKeys,
)
from okra_sidecar.store.replies import map_redis_errors
from okra_sidecar.store.replies import text as _text
from okra_sidecar.store.scripts import load_script
from okra_sidecar.store.streams import claim_partitions, read_partitions

if TYPE_CHECKING:
    from okra_sidecar.store.liveness import ConsumerLiveness

__all__ = [
    "EffectEntry",
    "EventEntry",
    "Listener",
    "RedisEffectStore",
    "TaskEntry",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EffectEntry:
    """An effect read from an effects stream: its stream, entry id, instance and effect JSON."""

    partition: int
    entry_id: str
    instance_id: str
    effect: dict[str, Any]


@dataclass(frozen=True)
class TaskEntry:
    """A worker task read from a service's task stream of one partition."""

    service: str
    partition: int
    entry_id: str
    instance_id: str
    effect_id: str
    function: str
    arguments: Any
    deadline_ms: int  # 0: none
    fields: dict[str, str]

    @property
    def delivered_before(self) -> int:
        """How many times the task was handed out before `migrate` moved it to this entry."""
        return int(self.fields.get(TASK_DELIVERED_FIELD) or 0)


@dataclass(frozen=True)
class EventEntry:
    entry_id: str
    event: dict[str, Any]


@dataclass(frozen=True)
class Listener:
    """An instance listening for routed events: its subscription record and its workflow."""

    record: str
    workflow_id: str


class RedisEffectStore:
    """Effects, worker tasks and events in Redis, on a client it does not own."""

    def __init__(self, *, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        # The shared pool, replies raw, for read_partitions.
        self._pooled = pooled_commands(redis)
        self._deliver = redis.register_script(load_script("deliver"))
        self._refuse = redis.register_script(load_script("refuse_event"))
        self._complete = redis.register_script(load_script("complete_task"))
        self._enqueue = redis.register_script(load_script("enqueue_task"))
        self._heartbeat = redis.register_script(load_script("heartbeat"))
        self._effect_partition = {k.encode(): p for p, k in enumerate(keys.all_effects())}
        self._task_groups: set[str] = set()

    async def _ensure_group(self, stream: str, group: str) -> None:
        try:
            await self.redis.xgroup_create(stream, group, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def ensure_groups(self) -> None:
        with map_redis_errors():
            for stream in self.keys.all_effects():
                await self._ensure_group(stream, EXECUTOR_GROUP)
            await self._ensure_group(self.keys.events, ROUTER_GROUP)
            for service in self._task_groups:
                for stream in self.keys.all_tasks(service):
                    await self._ensure_group(stream, WORKER_GROUP)

    # -- effects ------------------------------------------------------------------------------

    def _effect_entry(self, partition: int, eid: Any, fields: dict[bytes, bytes]) -> EffectEntry:
        return EffectEntry(partition, _text(eid), _text(fields[b"i"]), loads(fields[b"e"]))

    async def read_effects(self, consumer: str, *, count: int, block_ms: int) -> list[EffectEntry]:
        entries = await read_partitions(
            self._pooled,
            EXECUTOR_GROUP,
            consumer,
            self.keys.all_effects(),
            self._effect_partition,
            count=count,
            block_ms=block_ms,
            recreate_groups=self.ensure_groups,
        )
        return [self._effect_entry(partition, eid, fields) for partition, eid, fields in entries]

    async def claim_stale_effects(
        self, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[EffectEntry]:
        """Effects another executor read but neither finished nor kept alive (it stopped)."""
        entries = await claim_partitions(
            self._pooled,
            EXECUTOR_GROUP,
            consumer,
            self.keys.all_effects(),
            min_idle_ms=min_idle_ms,
            count=count,
        )
        return [self._effect_entry(partition, eid, fields) for partition, eid, fields in entries]

    async def claim_orphan_effects(
        self, liveness: ConsumerLiveness, consumer: str, *, held: Collection[str], count: int
    ) -> list[EffectEntry]:
        """Effects of executors without a heartbeat, and `consumer`'s own outside `held`
        (store/liveness.py)."""
        entries = await liveness.claim_orphans(
            EXECUTOR_GROUP, self.keys.all_effects(), consumer, held=held, count=count
        )
        return [self._effect_entry(partition, eid, fields) for partition, eid, fields in entries]

    async def keep_effects(self, consumer: str, entries: Sequence[EffectEntry]) -> None:
        """Reset the idle time of effects still running here, so nobody claims them."""
        by_stream: dict[str, list[Any]] = {}
        for entry in entries:
            by_stream.setdefault(self.keys.effects(entry.partition), []).append(entry.entry_id)
        with map_redis_errors():
            for stream, ids in by_stream.items():
                await self.redis.xclaim(stream, EXECUTOR_GROUP, consumer, 0, ids, justid=True)

    async def ack_effect(self, entry: EffectEntry) -> None:
        stream = self.keys.effects(entry.partition)
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xack(stream, EXECUTOR_GROUP, entry.entry_id)
                pipe.xdel(stream, entry.entry_id)
                await pipe.execute()

    async def defer_effect(self, entry: EffectEntry) -> EffectEntry:
        """Put an effect back at the end of its stream (a new entry) and drop the one read:
        its workflow holds its share of this executor's slots, others may come first."""
        stream = self.keys.effects(entry.partition)
        with map_redis_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(stream, {"i": entry.instance_id, "e": dumps(entry.effect)})
                pipe.xack(stream, EXECUTOR_GROUP, entry.entry_id)
                pipe.xdel(stream, entry.entry_id)
                new_id, _, _ = await pipe.execute()
        return EffectEntry(entry.partition, _text(new_id), entry.instance_id, entry.effect)

    async def instance_statuses(self, instance_ids: Collection[str]) -> dict[str, str | None]:
        """Each instance's status ('' for none), in one round trip."""
        ids = list(instance_ids)
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for instance_id in ids:
                    pipe.hget(self.keys.instance(instance_id), "status")
                values = await pipe.execute()
        return {i: None if v is None else _text(v) for i, v in zip(ids, values, strict=True)}

    async def deliver_result(self, entry: EffectEntry, event: dict[str, Any]) -> str:
        """Put an effect's result event in its instance's inbox and acknowledge the effect."""
        with map_redis_errors():
            outcome = await self._deliver(
                keys=[
                    *self.keys.delivery_keys(entry.instance_id),
                    self.keys.effects(entry.partition),
                ],
                args=[entry.instance_id, event["id"], dumps(event), EXECUTOR_GROUP, entry.entry_id],
            )
        return _text(outcome)

    async def deliver(self, instance_id: str, dedup: str, event: dict[str, Any]) -> str:
        """Put an event in an instance's inbox once per dedup id ('ok', 'duplicate', ...)."""
        with map_redis_errors():
            outcome = await self._deliver(
                keys=self.keys.delivery_keys(instance_id), args=[instance_id, dedup, dumps(event)]
            )
        return _text(outcome)

    async def refuse(self, instance_id: str, dedup: str, record: dict[str, Any]) -> str:
        """Record in an instance's history, once per dedup id, a routed event it was not given
        ('ok', 'duplicate', 'finished' or 'missing'); see refuse_event.lua."""
        keys = self.keys
        with map_redis_errors():
            outcome = await self._refuse(
                keys=[
                    keys.instance(instance_id),
                    keys.history(instance_id),
                    keys.delivered(instance_id),
                ],
                args=[dedup, dumps(record)],
            )
        return _text(outcome)

    async def instance_fields(self, instance_id: str, *names: str) -> list[str | None]:
        with map_redis_errors():
            values = await self.redis.hmget(self.keys.instance(instance_id), list(names))
        return [None if v is None else _text(v) for v in values]

    # -- worker tasks ---------------------------------------------------------------------------

    async def enqueue_task(self, entry: EffectEntry, service: str, task: dict[str, Any]) -> bool:
        """Move a worker effect to its service's task stream in the effect's partition (False:
        another executor did)."""
        fields = [
            *("i", entry.instance_id, "x", task["effectId"], "f", task["function"]),
            *("a", dumps(task.get("arguments")), "d", str(task.get("deadlineMs") or 0)),
        ]
        if task.get("trace"):
            fields += ["t", task["trace"]]
        with map_redis_errors():
            await self.ensure_task_group(service)
            moved = await self._enqueue(
                keys=[
                    self.keys.tasks(service, entry.partition),
                    self.keys.effects(entry.partition),
                ],
                args=[EXECUTOR_GROUP, entry.entry_id, dumps(fields)],
            )
        return int(moved) == 1

    async def ensure_task_group(self, service: str) -> None:
        if service not in self._task_groups:
            with map_redis_errors():
                for stream in self.keys.all_tasks(service):
                    await self._ensure_group(stream, WORKER_GROUP)
            self._task_groups.add(service)

    def _task_entry(
        self, service: str, partition: int, eid: Any, raw: dict[bytes, bytes]
    ) -> TaskEntry:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return TaskEntry(
            service=service,
            partition=partition,
            entry_id=_text(eid),
            instance_id=fields["i"],
            effect_id=fields["x"],
            function=fields["f"],
            arguments=json.loads(fields.get("a") or "null"),
            deadline_ms=int(fields.get("d") or 0),
            fields=fields,
        )

    async def read_tasks(
        self, service: str, worker: str, *, count: int, block_ms: int
    ) -> list[TaskEntry]:
        """New tasks of every partition's stream of `service`, for `worker`: up to `count` per
        partition, in one blocking read (one per slot on a Cluster)."""
        await self.ensure_task_group(service)
        streams = self.keys.all_tasks(service)

        async def forget_groups() -> None:
            self._task_groups.discard(service)

        entries = await read_partitions(
            self._pooled,
            WORKER_GROUP,
            worker,
            streams,
            {stream.encode(): p for p, stream in enumerate(streams)},
            count=count,
            block_ms=block_ms,
            recreate_groups=forget_groups,
        )
        return [self._task_entry(service, p, eid, fields) for p, eid, fields in entries]

    async def claim_expired_tasks(
        self, service: str, worker: str, *, lease_ms: int, count: int
    ) -> list[TaskEntry]:
        """Tasks whose worker let the lease run out (it stopped): they go to `worker`."""
        await self.ensure_task_group(service)
        entries = await claim_partitions(
            self._pooled,
            WORKER_GROUP,
            worker,
            self.keys.all_tasks(service),
            min_idle_ms=lease_ms,
            count=count,
        )
        return [self._task_entry(service, p, eid, fields) for p, eid, fields in entries]

    async def heartbeat(
        self, service: str, worker: str, tasks: Sequence[tuple[int, str]], *, lease_ms: int
    ) -> list[tuple[int, str]]:
        """Extend the leases `worker` still holds and that have not run out, of the tasks given
        as (partition, entry id); returns those it extended."""
        by_partition: dict[int, list[str]] = {}
        for partition, entry_id in tasks:
            by_partition.setdefault(partition, []).append(entry_id)
        held: list[tuple[int, str]] = []
        with map_redis_errors():
            for partition, entry_ids in by_partition.items():
                try:
                    kept = await self._heartbeat(
                        keys=[self.keys.tasks(service, partition)],
                        args=[WORKER_GROUP, worker, lease_ms, *entry_ids],
                    )
                except redis_errors.ResponseError as exc:
                    # A service with no task stream yet: the worker holds nothing of it.
                    if "NOGROUP" not in str(exc):
                        raise
                    continue
                held += [(partition, _text(x)) for x in kept]
        return held

    async def release_tasks(
        self, worker: str, tasks: Sequence[TaskEntry], *, lease_ms: int
    ) -> None:
        """Give back tasks read for `worker` but never handed to it.

        Each is marked idle for a whole lease, so the next poller's claim takes it at once, and
        its delivery count goes back to what it was, so that poller sees the attempt it is.
        """
        with map_redis_errors():
            for task in tasks:
                stream = self.keys.tasks(task.service, task.partition)
                pending: Any = await self.redis.xpending_range(
                    stream, WORKER_GROUP, task.entry_id, task.entry_id, 1
                )
                if not pending or _text(pending[0]["consumer"]) != worker:
                    continue
                await self.redis.xclaim(
                    stream,
                    WORKER_GROUP,
                    worker,
                    0,
                    [task.entry_id],
                    idle=lease_ms,
                    retrycount=max(0, int(pending[0]["times_delivered"]) - 1),
                    justid=True,
                )

    async def task_attempt(self, task: TaskEntry) -> int:
        """How many times the task was handed out (1 the first time)."""
        with map_redis_errors():
            pending: Any = await self.redis.xpending_range(
                self.keys.tasks(task.service, task.partition),
                WORKER_GROUP,
                task.entry_id,
                task.entry_id,
                1,
            )
        # A task `migrate` moved counts on from its deliveries before the move.
        return (int(pending[0]["times_delivered"]) if pending else 1) + task.delivered_before

    async def get_task(self, service: str, partition: int, entry_id: str) -> TaskEntry | None:
        with map_redis_errors():
            entries: Any = await self.redis.xrange(
                self.keys.tasks(service, partition), entry_id, entry_id
            )
        if not entries:
            return None
        eid, fields = entries[0]
        return self._task_entry(service, partition, eid, fields)

    async def complete_task(self, task: TaskEntry, event: dict[str, Any], *, worker: str) -> str:
        """Deliver a task's result and remove the task, if `worker` holds it.

        Returns 'gone' if it was completed before, 'moved' if its lease ran out and another
        worker holds it now.
        """
        stream = self.keys.tasks(task.service, task.partition)
        with map_redis_errors():
            outcome = await self._complete(
                keys=[stream, *self.keys.delivery_keys(task.instance_id)],
                args=[
                    *(WORKER_GROUP, task.entry_id, task.instance_id, event["id"], dumps(event)),
                    worker,
                ],
            )
        return _text(outcome)

    async def shared_secret(self) -> bytes:
        """The cluster's signing key, created by the first sidecar that asks."""
        with map_redis_errors():
            await self.redis.set(self.keys.secret, secrets.token_hex(32), nx=True)
        secret = await self.existing_secret()
        assert secret is not None  # set just above, and never deleted
        return secret

    async def existing_secret(self) -> bytes | None:
        """The signing key if some sidecar made it, else None; writes nothing."""
        with map_redis_errors():
            value: Any = await self.redis.get(self.keys.secret)
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)

    # -- events -------------------------------------------------------------------------------

    async def publish(self, event: dict[str, Any]) -> str:
        with map_redis_errors():
            entry_id = await self.redis.xadd(self.keys.events, {"e": dumps(event)})
        return _text(entry_id)

    async def read_events(self, consumer: str, *, count: int, block_ms: int) -> list[EventEntry]:
        with map_redis_errors():
            try:
                reply: Any = await self.redis.xreadgroup(
                    ROUTER_GROUP, consumer, {self.keys.events: ">"}, count=count, block=block_ms
                )
            except redis_errors.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_groups()
                return []
        return [
            EventEntry(_text(eid), loads(fields[b"e"]))
            for _, entries in reply or []
            for eid, fields in entries
            if fields
        ]

    async def claim_stale_events(
        self, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[EventEntry]:
        with map_redis_errors():
            reply = await self.redis.xautoclaim(
                self.keys.events, ROUTER_GROUP, consumer, min_idle_ms, start_id="0-0", count=count
            )
        return [EventEntry(_text(eid), loads(f[b"e"])) for eid, f in reply[1] if f]

    async def ack_events(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xack(self.keys.events, ROUTER_GROUP, *entry_ids)
                pipe.xdel(self.keys.events, *entry_ids)
                await pipe.execute()

    async def subscribers(self, event_types: Sequence[str]) -> dict[str, Listener]:
        """Instance id -> its subscription record and workflow, for every instance listening to
        the types."""
        keys = self.keys
        with map_redis_errors():
            # Every partition's sets, one command each (they live in different slots).
            async with self.redis.pipeline(transaction=False) as pipe:
                for partition in range(keys.partitions):
                    for event_type in event_types:
                        pipe.smembers(keys.subscribers(partition, event_type))
                found_sets: list[set[bytes]] = await pipe.execute()
            ids = sorted({_text(m) for members in found_sets for m in members})
            if not ids:
                return {}
            async with self.redis.pipeline(transaction=False) as pipe:
                for instance_id in ids:
                    pipe.hmget(self.keys.instance(instance_id), "subs", "status", "wf")
                rows = await pipe.execute()
        found: dict[str, Listener] = {}
        stale: list[tuple[str, str]] = []
        for instance_id, (record, status, workflow_id) in zip(ids, rows, strict=True):
            if record and status and InstanceStatus(_text(status)) is not InstanceStatus.CANCELLED:
                found[instance_id] = Listener(_text(record), _text(workflow_id or b""))
            elif not record:
                stale += [(t, instance_id) for t in event_types]
        if stale:
            # Left behind by an instance that stopped listening without cleaning up (a crash
            # between steps cannot cause this, but an old sidecar version could).
            with map_redis_errors():
                async with self.redis.pipeline(transaction=False) as pipe:
                    for event_type, instance_id in stale:
                        partition = keys.partition(instance_id)
                        pipe.srem(keys.subscribers(partition, event_type), instance_id)
                    await pipe.execute()
        return found
