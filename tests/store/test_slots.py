"""Every script the instance store runs keeps to one Redis Cluster slot, limits included."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.crc import key_slot

from okra_sidecar.engine.interpreter.effects import Effect, EffectKind
from okra_sidecar.engine.runtime.cancelling import cancel_instance
from okra_sidecar.instances import InstanceStatus, ParentLink
from okra_sidecar.store.base import Subscriptions, TurnExtras
from okra_sidecar.store.commands import PooledCommands
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.multiplexed import Arg, MultiplexedScript, ScriptLike, evalsha_with
from okra_sidecar.store.redis_store import RedisStore
from okra_sidecar.store.scripts import load_script
from tests.store.test_redis_store import IDS, commit, new

SCRIPTS = ("create", "signal", "commit", "cancel", "timers", "reserve", "release", "void")


class RecordingCommands:
    """HotCommands on the pool that records the KEYS of every script it sends."""

    def __init__(self, redis: Redis) -> None:
        self._pool = PooledCommands(redis)
        self.calls: list[tuple[str, list[str]]] = []

    def _record(self, command: Sequence[Arg]) -> None:
        if command and command[0] == "EVALSHA":
            count = int(command[2])
            self.calls.append((str(command[1]), [str(k) for k in command[3 : 3 + count]]))

    async def execute(self, *args: Arg) -> Any:
        self._record(args)
        return await self._pool.execute(*args)

    async def evalsha(
        self, script: ScriptLike, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        return await evalsha_with(self.execute, script, keys, args)

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        for command in commands:
            self._record(command)
        return await self._pool.pipeline(commands)

    async def aclose(self) -> None:
        await self._pool.aclose()


async def test_every_instance_script_touches_one_slot(redis: Redis) -> None:
    keys = RedisKeys(partitions=4, scope="shop")
    hot = RecordingCommands(redis)
    store = RedisStore(redis=redis, keys=keys, hot=hot)
    # As on a Cluster: admission and create in two scripts, each in its own slot (on one node
    # they go in one script, reserve_create.lua).
    store.one_node = False
    await store.ensure_groups()
    parent = IDS[0]
    # A child in another partition than its parent: what crosses partitions is in the test.
    child = next(i for i in IDS if keys.partition(i) != keys.partition(parent))
    await store.create_instance(new(parent, team="a"), max_active=10, max_per_workflow=10)
    link = ParentLink(parent, "c#1", ("t.w.1.0.0",))
    await store.create_instance(replace(new(child), parent=link), max_active=10)
    await store.signal(parent, signal_id="s1", event={"id": "s1"}, now_ms=2)
    effect = Effect("e#1", EffectKind.HTTP, "/do/0/call", {"endpoint": "http://x"}).to_json()
    listen = Subscriptions(types=("paid",), filters=[{"with": {"type": "paid"}}])
    snapshot = await store.load_turn(parent)
    assert snapshot is not None
    extras = TurnExtras(effects=[effect], events=[{"id": "ev1"}], subscriptions=listen)
    assert await store.commit_turn(
        snapshot, commit(InstanceStatus.WAITING, extras=extras, wake_at_ms=1)
    )
    snapshot = await store.load_turn(child)
    assert snapshot is not None
    outcome = TurnExtras(parent_event={"id": "r#1", "type": "io.okra.effect.result"})
    assert await store.commit_turn(snapshot, commit(InstanceStatus.COMPLETED, extras=outcome))
    await store.fire_timers(10, limit=10)
    await cancel_instance(store, parent, reason="done", now_ms=20)
    # The relay's release of the child's place, and a reservation the reconciler voids.
    await store.limits.release(child, "shop", "t.w")
    await store.limits.reserve(IDS[3], "t.w", max_active=0, max_per_workflow=0)
    await redis.zadd(keys.limit_active("shop"), {IDS[3]: 1})
    await store.limits.repair()

    names = {MultiplexedScript(load_script(name)).sha: name for name in SCRIPTS}
    seen: set[str] = set()
    for sha, call_keys in hot.calls:
        slots = {key_slot(key.encode()) for key in call_keys}
        assert len(slots) == 1, (names[sha], call_keys)
        seen.add(names[sha])
    assert seen == set(SCRIPTS)
