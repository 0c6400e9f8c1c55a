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
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from okra_sidecar.errors import Reason, StoreUnavailableError
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.replies import map_redis_errors, text
from okra_sidecar.tasks import cancel_and_wait

__all__ = ["Change", "ChangeFeed", "ChangeWaiter", "Watching"]

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

    A held WatchInstance stream keeps one of these for as long as it is open, so it holds
    no Event (a deque and a dict of its own): a future exists only while the caller waits.
    """

    __slots__ = ("_error", "_wakeup", "_woken", "latest", "resync")

    def __init__(self) -> None:
        self._wakeup: asyncio.Future[None] | None = None
        self._woken = False
        self._error: Exception | None = None
        self.latest: Change | None = None
        self.resync = False

    def notify(self, change: Change | None) -> None:
        if change is None:
            self.resync = True
        elif self.latest is None or change.revision > self.latest.revision:
            self.latest = change
        self._wake()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        self._woken = True
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def wait(self, timeout_s: float | None) -> bool:
        """Wait up to `timeout_s` (None: for ever) for a change; False when none came.

        Raises:
            StoreUnavailableError: the feed lost its connection, so changes may be missed.
        """
        if not self._woken:
            wakeup = self._wakeup = asyncio.get_running_loop().create_future()
            try:
                if timeout_s is None:
                    await wakeup
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout_s):
                            await wakeup
            finally:
                self._wakeup = None
        if self._error is not None:
            raise self._error
        if not self._woken:
            return False
        self._woken = False
        return True

    def changed(self) -> asyncio.Future[None]:
        """A future done at the next change, or at once if one came (or the feed failed)
        since the last `take`: what a caller with no deadline awaits, then `take`s. Unlike
        `wait`, no coroutine frame of the waiter's is alive while the caller waits, and a
        held WatchInstance stream waits so for its whole life."""
        wakeup = self._wakeup
        if wakeup is None or wakeup.done():
            wakeup = self._wakeup = asyncio.get_running_loop().create_future()
            if self._woken or self._error is not None:
                wakeup.set_result(None)
        return wakeup

    def take(self) -> tuple[Change | None, bool]:
        """The newest change and whether a resync was asked for since the last take.

        Raises:
            StoreUnavailableError: the feed lost its connection, so changes may be missed.
        """
        self._wakeup = None
        self._woken = False
        if self._error is not None:
            raise self._error
        change, resync = self.latest, self.resync
        self.latest, self.resync = None, False
        return change, resync


class Watching:
    """`async with feed.watch(id) as waiter`: joins the channel on entry, leaves on exit.

    A class rather than an asynccontextmanager: a held stream keeps this for its whole
    life, and a generator's frame (with the locals of the subscription) would cost more.
    """

    __slots__ = ("_channel", "_feed", "_waiter")

    def __init__(self, feed: ChangeFeed, channel: bytes) -> None:
        self._feed = feed
        self._channel = channel
        self._waiter = ChangeWaiter()

    @property
    def waiter(self) -> ChangeWaiter:
        return self._waiter

    async def __aenter__(self) -> ChangeWaiter:
        await self._feed._join(self._channel, self._waiter)
        return self._waiter

    async def __aexit__(self, *exc_info: object) -> None:
        self.leave()

    def leave(self) -> None:
        """Leave the channel (again: no effect), for a holder that cannot await its exit."""
        self._feed._leave(self._channel, self._waiter)


class ChangeFeed:
    """The sidecar's one subscription to instance change channels, shared by every waiter."""

    def __init__(self, *, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        # A list, not a set: most channels have one waiter, and a held stream pays for it.
        # Keyed by the channel's name in bytes, the very object redis-py keeps in its own map
        # of subscribed channels: one copy of the name per held stream, not two.
        self._waiters: dict[bytes, list[ChangeWaiter]] = {}
        # SUBSCRIBE confirmations awaited, per channel, in the order the commands were sent.
        self._confirmations: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._pubsub: Any = None  # redis.asyncio.client.PubSub while anybody waits
        self._reader: asyncio.Task[None] | None = None
        # Commands go out in call order, so an UNSUBSCRIBE never overtakes a later SUBSCRIBE.
        self._send_lock = asyncio.Lock()

    @property
    def channels(self) -> int:
        """How many instance channels this sidecar is subscribed to now."""
        return len(self._waiters)

    def watch(self, instance_id: str) -> Watching:
        """`async with feed.watch(id) as waiter`: wait on one instance, subscribed (confirmed
        by Redis) on entry, so a caller that reads the instance afterwards cannot miss a
        change committed after that read.

        Entering raises StoreUnavailableError when Redis did not confirm the subscription.
        """
        return Watching(self, self._keys.changes(instance_id).encode())

    async def _join(self, channel: bytes, waiter: ChangeWaiter) -> None:
        waiters = self._waiters.get(channel)
        confirmed: asyncio.Future[None] | None = None
        if waiters is None:
            self._waiters[channel] = [waiter]
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
            waiters.append(waiter)
            queued = self._confirmations.get(channel)
            confirmed = queued[-1] if queued else None
        if confirmed is not None:
            try:
                await self._confirmed(channel, confirmed)
            except BaseException:
                self._leave(channel, waiter)
                raise

    async def _confirmed(self, channel: bytes, confirmed: asyncio.Future[None]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT_S)
        except TimeoutError:
            raise StoreUnavailableError(
                f"Redis did not confirm the subscription to {channel.decode()} within "
                f"{SUBSCRIBE_TIMEOUT_S:g} s; retry",
                reason=Reason.REDIS_UNAVAILABLE,
            ) from None

    def _leave(self, channel: bytes, waiter: ChangeWaiter) -> None:
        waiters = self._waiters.get(channel)
        if waiters is None:
            return
        with contextlib.suppress(ValueError):
            waiters.remove(waiter)
        if not waiters:
            del self._waiters[channel]
            task = asyncio.get_running_loop().create_task(self._unsubscribe(channel))
            task.add_done_callback(_log_failure)

    async def _unsubscribe(self, channel: bytes) -> None:
        async with self._send_lock:
            # A waiter may have come back to the channel meanwhile: then it stays.
            if channel not in self._waiters and self._pubsub is not None:
                with map_redis_errors():
                    await self._pubsub.unsubscribe(channel)

    async def _subscribe(self, channel: bytes) -> None:
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
        name = message.get("channel")
        channel = name.encode() if isinstance(name, str) else bytes(name or b"")
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
