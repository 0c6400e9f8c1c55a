"""ChangeFeed: wakes the callers waiting on instances when a commit announces a change.

`commit.lua` and `cancel.lua` publish `<revision> <status>` on the instance's channel
(`RedisKeys.changes`) in the step that changes it. A sidecar subscribes to a channel only
while someone here waits on that instance, all on one pub/sub connection, and unsubscribes
when the last waiter leaves: nothing is read from Redis while nobody waits, and nothing is
polled while somebody does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from okra_sidecar.errors import Reason, StoreUnavailableError
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.replies import map_redis_errors, text
from okra_sidecar.tasks import cancel_and_wait

__all__ = ["Change", "ChangeFeed", "ChangeWaiter"]

logger = logging.getLogger(__name__)

# How long a SUBSCRIBE may take to be confirmed before the waiter gives up (UNAVAILABLE).
SUBSCRIBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Change:
    """One announced change: the revision the commit wrote and the status it left."""

    revision: int
    status: InstanceStatus


def _parse(data: Any) -> Change | None:
    revision, _, status = text(data).partition(" ")
    try:
        return Change(int(revision), InstanceStatus(status))
    except ValueError:
        return None


class ChangeWaiter:
    """One caller's view of an instance's channel: wakes on each announced change.

    Changes that arrive before the caller looks again are folded into one: `latest` is the
    newest, and `resync` says that some may have gone unseen (a resubscription), so the
    caller must read the instance instead of trusting `latest`.
    """

    __slots__ = ("_error", "_event", "latest", "resync")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._error: Exception | None = None
        self.latest: Change | None = None
        self.resync = False

    def notify(self, change: Change | None) -> None:
        if change is None:
            self.resync = True
        elif self.latest is None or change.revision > self.latest.revision:
            self.latest = change
        self._event.set()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._event.set()

    async def wait(self, timeout_s: float | None) -> bool:
        """Wait up to `timeout_s` (None: for ever) for a change; False when none came.

        Raises:
            StoreUnavailableError: the feed lost its connection, so changes may be missed.
        """
        if not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout_s)
        if self._error is not None:
            raise self._error
        if not self._event.is_set():
            return False
        self._event.clear()
        return True

    def take(self) -> tuple[Change | None, bool]:
        """The newest change and whether a resync was asked for since the last take."""
        change, resync = self.latest, self.resync
        self.latest, self.resync = None, False
        return change, resync


class ChangeFeed:
    """The sidecar's one subscription to instance change channels, shared by every waiter."""

    def __init__(self, *, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._waiters: dict[str, set[ChangeWaiter]] = {}
        # SUBSCRIBE confirmations awaited, per channel, in the order the commands were sent.
        self._confirmations: dict[str, deque[asyncio.Future[None]]] = {}
        self._pubsub: Any = None  # redis.asyncio.client.PubSub while anybody waits
        self._reader: asyncio.Task[None] | None = None
        # Commands go out in call order, so an UNSUBSCRIBE never overtakes a later SUBSCRIBE.
        self._send_lock = asyncio.Lock()

    @property
    def channels(self) -> int:
        """How many instance channels this sidecar is subscribed to now."""
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def watch(self, instance_id: str) -> AsyncIterator[ChangeWaiter]:
        """Wait on one instance: subscribed (confirmed by Redis) on entry, so a caller that
        reads the instance afterwards cannot miss a change committed after that read.

        Raises:
            StoreUnavailableError: Redis did not confirm the subscription.
        """
        channel = self._keys.changes(instance_id)
        waiter = ChangeWaiter()
        waiters = self._waiters.get(channel)
        confirmed: asyncio.Future[None] | None = None
        if waiters is None:
            self._waiters[channel] = {waiter}
            confirmed = asyncio.get_running_loop().create_future()
            pending = self._confirmations.setdefault(channel, deque())
            pending.append(confirmed)
            try:
                await self._subscribe(channel)
            except BaseException:
                with contextlib.suppress(ValueError):
                    pending.remove(confirmed)
                self._leave(channel, waiter)
                raise
        else:
            waiters.add(waiter)
            queued = self._confirmations.get(channel)
            confirmed = queued[-1] if queued else None
        try:
            if confirmed is not None:
                await self._confirmed(channel, confirmed)
            yield waiter
        finally:
            self._leave(channel, waiter)

    async def _confirmed(self, channel: str, confirmed: asyncio.Future[None]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT_S)
        except TimeoutError:
            raise StoreUnavailableError(
                f"Redis did not confirm the subscription to {channel} within "
                f"{SUBSCRIBE_TIMEOUT_S:g} s; retry",
                reason=Reason.REDIS_UNAVAILABLE,
            ) from None

    def _leave(self, channel: str, waiter: ChangeWaiter) -> None:
        waiters = self._waiters.get(channel)
        if waiters is None:
            return
        waiters.discard(waiter)
        if not waiters:
            del self._waiters[channel]
            task = asyncio.get_running_loop().create_task(self._unsubscribe(channel))
            task.add_done_callback(_log_failure)

    async def _unsubscribe(self, channel: str) -> None:
        async with self._send_lock:
            # A waiter may have come back to the channel meanwhile: then it stays.
            if channel not in self._waiters and self._pubsub is not None:
                with map_redis_errors():
                    await self._pubsub.unsubscribe(channel)

    async def _subscribe(self, channel: str) -> None:
        async with self._send_lock:
            pubsub = self._pubsub
            opened = pubsub is None
            if pubsub is None:
                pubsub = self._redis.pubsub()
            try:
                with map_redis_errors():
                    await pubsub.subscribe(channel)
            except BaseException:
                if opened:
                    await pubsub.aclose()
                raise
            if opened:
                # Each connection has one reader, which ends only with its connection.
                self._pubsub = pubsub
                self._reader = asyncio.get_running_loop().create_task(self._read(pubsub))

    async def _read(self, pubsub: Any) -> None:
        """Dispatch what the subscription connection receives, for as long as the feed runs.

        The connection stays open while nobody waits (subscribed to nothing, it receives
        nothing); closing it then would race a SUBSCRIBE on its way out.
        """
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
                logger.warning("the change feed lost its Redis connection: %s", exc)
                pubsub = await self._resubscribe(pubsub, exc)
                if pubsub is None:
                    return
                continue
            if message is not None:
                self._dispatch(message)

    async def _resubscribe(self, broken: Any, exc: Exception) -> Any:
        """Subscribe every waited channel again on a new connection; None if that fails.

        Each confirmation wakes its channel's waiters to read the instance again, since
        changes announced while the connection was down are lost.
        """
        task = asyncio.get_running_loop().create_task(broken.aclose())
        task.add_done_callback(_log_failure)
        async with self._send_lock:
            self._pubsub = None
            channels = list(self._waiters)
            if not channels:
                return None  # the next waiter opens a connection
            pubsub = self._redis.pubsub()
            try:
                async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                    await pubsub.subscribe(*channels)
            except (redis_errors.RedisError, OSError, TimeoutError):
                await pubsub.aclose()
                self._fail_all(exc)
                return None
            self._pubsub = pubsub
            return pubsub

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = text(message.get("channel"))
        waiters = self._waiters.get(channel, ())
        if kind == "message":
            change = _parse(message.get("data"))
            for waiter in waiters:
                waiter.notify(change)
        elif kind == "subscribe":
            pending = self._confirmations.get(channel)
            if pending:
                pending.popleft().set_result(None)
                if not pending:
                    del self._confirmations[channel]
            else:
                # redis-py subscribed again after a reconnect: changes may have been missed.
                for waiter in waiters:
                    waiter.notify(None)

    def _fail_all(self, exc: Exception) -> None:
        """Every waiter fails (UNAVAILABLE, retryable): its changes may have been lost."""
        error = StoreUnavailableError(
            "the sidecar lost its Redis subscription for instance changes; retry",
            reason=Reason.REDIS_UNAVAILABLE,
        )
        error.__cause__ = exc
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.fail(error)
        for pending in self._confirmations.values():
            for confirmed in pending:
                if not confirmed.done():
                    confirmed.set_exception(error)
        self._confirmations.clear()
        self._waiters.clear()

    async def aclose(self) -> None:
        """Stop reading and close the subscription connection (waiters fail with UNAVAILABLE)."""
        if self._reader is not None:
            await cancel_and_wait([self._reader])
            self._reader = None
        if self._waiters:
            self._fail_all(ConnectionError("the sidecar is stopping"))
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await pubsub.aclose()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("change feed: %s", task.exception())
