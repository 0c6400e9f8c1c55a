"""StoreConnections: the Redis clients the instance store shares, and its durable writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from okra_sidecar.errors import (
    FailedPreconditionError,
    InstanceChangedError,
    Reason,
    StoreUnavailableError,
    instance_not_found,
    instance_status_violation,
)
from okra_sidecar.store.change_feed import ChangeFeed
from okra_sidecar.store.cluster_client import is_cluster_client, pooled_commands
from okra_sidecar.store.commands import HotCommands
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.multiplexed import Arg, MultiplexedScript, evalsha_with
from okra_sidecar.store.replies import map_redis_errors, text

__all__ = ["DURABILITY_LEVELS", "StoreConnections"]

DURABILITY_LEVELS = ("memory", "aof", "replicas")


class StoreConnections:
    """The clients every part of RedisStore works through, on connections it does not own.

    `hot` carries the commands of every rpc and turn (see store/commands.py); `reader`, a
    connection of its own, the engine's blocking read of the work streams (one at a time);
    `redis`, the pooled client, everything else (pipelines, administration; on a Redis
    Cluster, redis-py's RedisCluster).
    """

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        keys: RedisKeys,
        hot: HotCommands | None = None,
        reader: HotCommands | None = None,
        durability: str = "memory",
        replicas: int = 1,
        durability_timeout_ms: int = 1000,
    ) -> None:
        if durability not in DURABILITY_LEVELS:
            raise ValueError(f"durability must be one of {DURABILITY_LEVELS}, not {durability!r}")
        self.redis = redis
        # A single Redis (not a Cluster): a script may touch keys of several slots.
        self.one_node = not is_cluster_client(redis)
        # The pool, replies raw: writes that wait for durability (each with its WAIT on one
        # connection), and hot commands and reads when no connection of their own is given.
        self._pooled = pooled_commands(redis)
        self.hot = hot if hot is not None else self._pooled
        self._reader = reader if reader is not None else self._pooled
        self.keys = keys
        self._durability = durability
        self._replicas = replicas
        self._durability_timeout_ms = durability_timeout_ms
        self._waitaof: bool | None = None
        self._stream_partition = {k.encode(): p for p, k in enumerate(keys.all_work())}
        # Instance changes as the scripts announce them; subscribes only while waited on.
        self.changes = ChangeFeed(redis=redis, keys=keys)

    async def aclose(self) -> None:
        """Close the store's own connections (not `redis`, which its owner closes)."""
        await self.changes.aclose()
        await self.hot.aclose()
        await self._reader.aclose()

    async def ping(self) -> None:
        with map_redis_errors():
            await self.redis.ping()

    async def _durable_write(
        self, script: MultiplexedScript, keys: Sequence[str], args: Sequence[Arg]
    ) -> tuple[Any, Any]:
        """Run a write script and then, at durability `aof` or `replicas`, the wait for it.

        Returns the script's reply and the wait's (None when nothing waits). WAIT and WAITAOF
        wait for the writes of their own connection, so the two go in one pipeline on one pool
        connection: on the shared multiplexed one a WAIT would hold every caller behind it.
        """
        # No wait at `memory`, the default: no coroutine to ask _wait_command either.
        wait = None if self._durability == "memory" else await self._wait_command()
        if wait is None:
            return await self.hot.evalsha(script, keys, args), None

        async def then_wait(*command: Arg) -> Any:
            return await self._pooled.pipeline([command, wait])

        # The SCRIPT LOAD after a NOSCRIPT (a restarted or new master) writes no data to wait
        # for, so it goes alone: on a Cluster it goes to every master the slot map lists, and
        # one that was failed over since refuses a WAIT.
        reply, waited = await evalsha_with(then_wait, script, keys, args, load=self._pooled.execute)
        return reply, waited

    async def _wait_command(self) -> tuple[Arg, ...] | None:
        if self._durability == "memory":
            return None
        timeout = self._durability_timeout_ms
        if self._durability == "replicas":
            return ("WAIT", self._replicas, timeout)
        if self._waitaof is None:
            # Raw INFO through the hot commands: on a Cluster, one master answers for all.
            info = text(await self.hot.execute("INFO", "server"))
            version = info.split("redis_version:", 1)[1].split()[0]
            major, minor = (int(x) for x in version.split(".")[:2])
            self._waitaof = (major, minor) >= (7, 2)
        # Below 7.2, `aof` relies on `appendfsync always`, which the embedded server sets.
        return ("WAITAOF", 1, 0, timeout) if self._waitaof else None

    def _check_durable(self, waited: Any) -> None:
        """Refuse a write that too few replicas acknowledged (durability `replicas`)."""
        if waited is None or self._durability != "replicas":
            return
        if int(waited) < self._replicas:
            raise StoreUnavailableError(
                f"only {waited} of {self._replicas} Redis replicas acknowledged the write "
                f"within {self._durability_timeout_ms} ms",
                reason=Reason.REPLICAS_NOT_ACKNOWLEDGED,
                metadata={"acknowledged": str(waited), "required": str(self._replicas)},
            )

    @staticmethod
    def _raise_for(instance_id: str, outcome: list[str], verb: str) -> None:
        """Raise for a refusal of signal.lua, cancel.lua or suspend.lua; `verb` is `signal`
        or what the instance cannot be (`cancelled`, `suspended`)."""
        if outcome[0] == "missing":
            raise instance_not_found(instance_id)
        if outcome[0] == "changed":
            raise InstanceChangedError(instance_id, outcome[1])
        if outcome[0] == "finished":
            # A suspended instance takes signals and Cancel, but cannot be suspended again.
            allowed = (
                "pending, running, waiting or suspended"
                if verb in ("signal", "cancelled")
                else "pending, running or waiting"
            )
            raise FailedPreconditionError(
                f"instance {instance_id} is already {outcome[1]}; only a {allowed} instance "
                f"can be sent a {verb}"
                if verb == "signal"
                else f"instance {instance_id} is already {outcome[1]} and cannot be {verb}",
                reason=Reason.INSTANCE_ALREADY_FINISHED,
                violation=instance_status_violation(instance_id, f"the instance must be {allowed}"),
                metadata={"instance": instance_id, "status": outcome[1]},
            )
