"""RedisLimitStore: instance admissions held per limit scope, in the scope's own slot.

`maxConcurrentInstances` and `maxInstancesPerWorkflow` are counted as sets of admitted
instance ids under the scope's hash tag (`okra:limits:{ns:<scope>}:...`), not beside the
instances, which live in their partitions' slots. A Run a limit applies to reserves its id there
first (reserve.lua, atomic, so concurrent Runs never overshoot), then creates the instance in
its partition (on a single Redis in one script, reserve_create.lua, which creates a Run
uncounted while no limit has applied to its scope yet: `track` counts those when one does);
on a Cluster, a Run no limit applies to creates it at once and hands its reservation to the
partition's outbox, which the relay applies (admit.lua); finishing or
cancelling hands a release to the partition's outbox, which the relay applies (release.lua).
Every step is idempotent by instance id. What a process that died between two steps leaves
behind (a reservation without an instance, a finished instance still held) is repaired by
`repair`, which executors/reconciler.py runs every second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from okra_sidecar.instances import FINISHED_STATUSES, InstanceStatus
from okra_sidecar.store.cluster_client import pooled_commands
from okra_sidecar.store.commands import HotCommands
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.multiplexed import Arg, MultiplexedScript
from okra_sidecar.store.replies import map_redis_errors, text
from okra_sidecar.store.scripts import load_script

__all__ = ["Admission", "LimitRepair", "RedisLimitStore"]

# A reservation younger than this is left alone by the reconciler: its create may be on the way.
RESERVATION_GRACE_US = 2_000_000
# How long a voided reservation's marker outlives it: far beyond any create still in flight.
VOID_MARKER_MS = 3_600_000
# Limit set names kept per (scope, workflow key); cleared when this many are held.
SET_KEYS_CACHE_SIZE = 1024
_FINISHED = frozenset(s.value.encode() for s in FINISHED_STATUSES)


@dataclass(frozen=True)
class Admission:
    """reserve's answer: `refused` names the limit reached ('active', 'workflow') or is ''
    ('untracked' from reserve_create.lua: the scope counts nothing yet, see `track`)."""

    refused: str = ""
    score: str = ""  # the reservation's time (µs), which names it
    fresh: bool = False  # made by this call, not held from an earlier one


@dataclass(frozen=True)
class LimitRepair:
    """What one reconcile pass found and released."""

    checked: int = 0
    released_finished: int = 0  # instance final (or purged) but still held
    released_missing: int = 0  # reserved, never created
    last: str = ""  # the score of the last reservation checked ('' when none was)


class RedisLimitStore:
    """The limit sets of every scope; reserve and release are one script each, in one slot."""

    _reserve = MultiplexedScript(load_script("reserve"))
    _admit = MultiplexedScript(load_script("admit"))
    _release = MultiplexedScript(load_script("release"))
    _void = MultiplexedScript(load_script("void"))
    _track = MultiplexedScript(load_script("track"))

    def __init__(
        self, *, redis: aioredis.Redis, keys: RedisKeys, hot: HotCommands | None = None
    ) -> None:
        self.redis = redis
        self.keys = keys
        # Raw replies on redis-py (RedisCluster's own on a Cluster) when no hot commands are given.
        self._hot = hot if hot is not None else pooled_commands(redis)
        self._set_key_names: dict[tuple[str, str], tuple[str, str, str]] = {}

    def _set_keys(self, scope: str, workflow_key: str) -> list[str]:
        # Every Run names the same few: built once per scope and workflow (a fresh list each
        # time, as callers extend it).
        names = self._set_key_names.get((scope, workflow_key))
        if names is None:
            if len(self._set_key_names) >= SET_KEYS_CACHE_SIZE:
                self._set_key_names.clear()
            keys = self.keys
            names = self._set_key_names[scope, workflow_key] = (
                keys.limit_active(scope),
                keys.limit_workflow(scope, workflow_key),
                keys.limit_held(scope),
            )
        return list(names)

    async def reserve(
        self, instance_id: str, workflow_key: str, *, max_active: int, max_per_workflow: int
    ) -> Admission:
        """Admit `instance_id` in this sidecar's scope unless a limit is reached."""
        keys, args = self.reserve_call(
            instance_id, workflow_key, max_active=max_active, max_per_workflow=max_per_workflow
        )
        with map_redis_errors():
            reply = await self._hot.evalsha(self._reserve, keys, args)
        return self.admission(reply)

    def reserve_call(
        self, instance_id: str, workflow_key: str, *, max_active: int, max_per_workflow: int
    ) -> tuple[list[str], list[Arg]]:
        """reserve.lua's KEYS and ARGV (also the head of reserve_create.lua's)."""
        keys = self._set_keys(self.keys.scope, workflow_key)
        return keys, [instance_id, max_active, max_per_workflow, workflow_key]

    @staticmethod
    def admission(reply: list[Any]) -> Admission:
        """reserve.lua's reply as an Admission."""
        outcome = text(reply[0])
        if outcome in ("active", "workflow", "untracked"):
            return Admission(refused=outcome)
        return Admission(score=text(reply[1]), fresh=outcome == "new")

    async def track(self) -> int:
        """Start counting this sidecar's scope, on a single Redis (track.lua: every partition
        at once): reserve its unfinished instances created uncounted, then mark the scope
        counted, in one step; how many it reserved (0 if it was counted already)."""
        keys, scope = self.keys, self.keys.scope
        unfinished = [s for s in InstanceStatus if not s.finished]
        indexes = [
            (keys.index_status(p, s), keys.tag(p))
            for p in range(keys.partitions)
            for s in unfinished
        ]
        script_keys = [keys.limit_active(scope), keys.limit_held(scope), keys.limit_tracked(scope)]
        script_keys += [index for index, _ in indexes]
        args = [scope, keys.limit_tag(scope), *(tag for _, tag in indexes)]
        with map_redis_errors():
            return int(await self._hot.evalsha(self._track, script_keys, args))

    async def admit_many(self, scope: str, admitted: Sequence[tuple[str, str]]) -> int:
        """Record the admissions (instance id, workflow key) of one scope that creates handed
        to the outbox, in one script call (admit.lua); how many were not held before."""
        keys = self.keys
        set_keys = [keys.limit_active(scope), keys.limit_held(scope)]
        set_keys += [keys.limit_workflow(scope, workflow_key) for _, workflow_key in admitted]
        args = [workflow_key for _, workflow_key in admitted]
        args += [instance_id for instance_id, _ in admitted]
        with map_redis_errors():
            return int(await self._hot.evalsha(self._admit, set_keys, args))

    async def release(
        self, instance_id: str, scope: str, workflow_key: str, *, score: str = ""
    ) -> bool:
        """Free `instance_id`'s place (only the reservation `score`, when given)."""
        return await self.release_many(scope, [(instance_id, workflow_key, score)]) == 1

    async def release_many(self, scope: str, places: Sequence[tuple[str, str, str]]) -> int:
        """Free the places (instance id, workflow key, reservation score or '') of one scope
        in one script call; how many were held."""
        keys = self.keys
        set_keys = [keys.limit_active(scope), keys.limit_held(scope)]
        set_keys += [keys.limit_workflow(scope, workflow_key) for _, workflow_key, _ in places]
        args = [value for instance_id, _, score in places for value in (instance_id, score)]
        with map_redis_errors():
            return int(await self._hot.evalsha(self._release, set_keys, args))

    async def held(self, scope: str | None = None) -> int:
        """How many instances the scope holds (this sidecar's by default)."""
        with map_redis_errors():
            return int(await self.redis.zcard(self.keys.limit_active(self._scope(scope))))

    async def held_by_workflow(self, workflow_key: str, scope: str | None = None) -> int:
        key = self.keys.limit_workflow(self._scope(scope), workflow_key)
        with map_redis_errors():
            return int(await self.redis.zcard(key))

    def _scope(self, scope: str | None) -> str:
        return self.keys.scope if scope is None else scope

    async def repair(self, *, after: str = "-inf", count: int = 500) -> LimitRepair:
        """Check up to `count` reservations of this sidecar's scope scored above `after` and
        at least RESERVATION_GRACE_US old; release those whose instance is finished or gone,
        voiding first a reservation whose create never came.

        Every sidecar may run it at once: it writes only what it repairs, and each repair is
        guarded by the reservation's score, so a second reconciler's repeat changes nothing.
        """
        keys, scope = self.keys, self.keys.scope
        with map_redis_errors():
            seconds, micros = await self._hot.execute("TIME")
            cutoff = int(seconds) * 1_000_000 + int(micros) - RESERVATION_GRACE_US
            start = after if after == "-inf" else f"({after}"
            reply = await self._hot.execute(
                "ZRANGE",
                keys.limit_active(scope),
                *(start, cutoff, "BYSCORE", "LIMIT", 0, count, "WITHSCORES"),
            )
            pairs = _pairs(reply)
            if not pairs:
                return LimitRepair()
            ids = [instance_id for instance_id, _ in pairs]
            commands: list[Sequence[str]] = [("HMGET", keys.limit_held(scope), *ids)]
            commands += [("HGET", keys.instance(i), "status") for i in ids]
            workflow_keys, *statuses = await self._hot.pipeline(commands)
        finished = missing = 0
        for (instance_id, score), workflow_key, status in zip(
            pairs, workflow_keys, statuses, strict=True
        ):
            if status is None:
                if await self._void_reservation(instance_id, score):
                    missing += await self.release(
                        instance_id, scope, text(workflow_key), score=score
                    )
            elif status in _FINISHED:
                finished += await self.release(instance_id, scope, text(workflow_key), score=score)
        return LimitRepair(len(pairs), finished, missing, last=pairs[-1][1])

    async def _void_reservation(self, instance_id: str, score: str) -> bool:
        """Reserved but never created: void it where the create would land, so that a create
        still on its way cannot run uncounted; False if the instance exists by now."""
        keys = self.keys
        with map_redis_errors():
            voided = await self._hot.evalsha(
                self._void,
                [keys.instance(instance_id), keys.voided(instance_id)],
                [score, VOID_MARKER_MS],
            )
        return int(voided) == 1


def _pairs(reply: list[Any]) -> list[tuple[str, str]]:
    """ZRANGE ... WITHSCORES as (member, score) pairs, the score as reserve.lua wrote it:
    flat under RESP2, nested with the score a double under RESP3."""
    if reply and isinstance(reply[0], list):
        return [(text(member), _score(score)) for member, score in reply]
    return [(text(reply[i]), _score(reply[i + 1])) for i in range(0, len(reply), 2)]


def _score(value: bytes | float) -> str:
    # Reservation scores are whole microseconds, exact in a double.
    return str(int(float(value)))
