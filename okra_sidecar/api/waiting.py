"""InstanceWaiting: AwaitInstance and WatchInstance on the change feed, without polling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Generic, TypeVar

from okra_sidecar.errors import InvalidInputError, instance_not_found
from okra_sidecar.instances import FINISHED_STATUSES, InstanceRecord, InstanceStatus
from okra_sidecar.store.base import Store
from okra_sidecar.store.change_feed import Change, ChangeFeed, Watching

__all__ = ["MAX_AWAIT_S", "InstanceWaiting", "await_budget", "check_revision"]

T = TypeVar("T")

# A call without a deadline returns the instance as it is after this long.
MAX_AWAIT_S = 60.0
# How long before the call's deadline AwaitInstance answers, so the answer arrives in time
# on a busy machine too: a fifth of the time left, between these bounds.
MIN_MARGIN_S = 0.05
MAX_MARGIN_S = 1.0


def await_budget(time_remaining_s: float | None) -> float:
    """How long AwaitInstance may wait, given the seconds left before the call's deadline."""
    if time_remaining_s is None:
        return MAX_AWAIT_S
    margin = min(MAX_MARGIN_S, max(MIN_MARGIN_S, time_remaining_s / 5))
    return max(0.0, min(MAX_AWAIT_S, time_remaining_s - margin))


def check_revision(revision: int | None) -> int | None:
    """A revision to wait past: None, or one that WorkflowInstance.revision can hold."""
    if revision is not None and revision < 0:
        raise InvalidInputError.for_field(
            "revision", f"is {revision}; a revision is 0 or more, as GetStatus returns it"
        )
    return revision


def _satisfied(
    status: InstanceStatus, revision: int, wanted: Collection[InstanceStatus], since: int | None
) -> bool:
    return status in wanted or (since is not None and revision != since)


class InstanceWaiting:
    """Answers once an instance is in a wanted state, and streams its changes.

    Each reads the instance first and answers from that read when nothing is left to wait
    for. Otherwise it subscribes to the feed and reads again, so a change committed between
    the subscription and the read is seen either in the read or as an announcement.
    """

    def __init__(self, *, store: Store, changes: ChangeFeed) -> None:
        self._store = store
        self._changes = changes

    async def _read(self, instance_id: str) -> InstanceRecord:
        record = await self._store.get_instance(instance_id)
        if record is None:
            raise instance_not_found(instance_id)
        return record

    async def await_instance(
        self,
        instance_id: str,
        *,
        statuses: Collection[InstanceStatus],
        revision: int | None,
        budget_s: float,
    ) -> InstanceRecord:
        """The instance once it is in `statuses` (any final one when empty) or its revision is
        not `revision`; after `budget_s`, the instance as it is.

        Raises:
            NotFoundError: the instance does not exist (or was purged while waited on).
            StoreUnavailableError: Redis is unreachable, or the feed lost its connection.
        """
        wanted = frozenset(statuses) or FINISHED_STATUSES
        loop = asyncio.get_running_loop()
        until = loop.time() + budget_s
        # An instance already as wanted (often so for a caller that waits on a short run)
        # answers from one read, without a subscription to make and take down.
        record = await self._read(instance_id)
        if _satisfied(record.status, record.revision, wanted, revision) or budget_s <= 0:
            return record
        async with self._changes.watch(instance_id) as waiter:
            record = await self._read(instance_id)
            stale = False
            while not _satisfied(record.status, record.revision, wanted, revision):
                left = until - loop.time()
                if left <= 0 or not await waiter.wait(left):
                    break
                change, resync = waiter.take()
                if resync or change is None or _satisfied(*_of(change), wanted, revision):
                    record, stale = await self._read(instance_id), False
                else:
                    stale = True  # a change this call does not wait for: read it at the end
            if stale:
                record = await self._read(instance_id)
            return record

    def watch(
        self,
        instance_id: str,
        convert: Callable[[InstanceRecord], T],
        *,
        decide: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[T]:
        """The instance now, then once per newer revision, each through `convert`; ends
        after a final status. Between changes only the revision is kept, not the record.
        `decide` (the policy gate) runs first: a denied stream reads nothing.

        Its iteration raises:
            NotFoundError: the instance does not exist (or was purged while watched).
            StoreUnavailableError: Redis is unreachable, or the feed lost its connection.
            PolicyDeniedError: `decide` refused the call.
        """
        return _InstanceWatch(self._read, self._changes, instance_id, convert, decide)


class _InstanceWatch(Generic[T]):
    """WatchInstance's stream (`InstanceWaiting.watch`). A slotted class rather than an async
    generator: a held stream keeps this object and the coroutine of the `__anext__` that
    waits, not a generator's frame, its `asend` and its entry in the loop's set of async
    generators. It leaves the feed's channel when it ends, fails, is cancelled, or is
    dropped unfinished (`__del__`, what an async generator's finalizer would do)."""

    __slots__ = ("_changes", "_convert", "_decide", "_ended", "_id", "_read", "_seen", "_watching")

    def __init__(
        self,
        read: Callable[[str], Awaitable[InstanceRecord]],
        changes: ChangeFeed,
        instance_id: str,
        convert: Callable[[InstanceRecord], T],
        decide: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self._read = read
        self._changes = changes
        self._id = instance_id
        self._convert = convert
        self._decide = decide
        self._watching: Watching | None = None
        self._seen = -1
        self._ended = False

    def __aiter__(self) -> _InstanceWatch[T]:
        return self

    async def __anext__(self) -> T:
        if self._ended:
            raise StopAsyncIteration
        try:
            watching = self._watching
            if watching is None:
                decide, self._decide = self._decide, None  # a held stream keeps no call
                if decide is not None:
                    await decide()
                record = await self._read(self._id)
                if record.status.finished:
                    # Nothing more can change: no subscription is made.
                    self._ended = True
                    return self._convert(record)
                del record
                watching = self._watching = self._changes.watch(self._id)
                await watching.__aenter__()
                read = True
            else:
                read = False  # the last answer is what was read: wait for a change first
            waiter = watching.waiter
            while True:
                if read:
                    record = await self._read(self._id)
                    if record.revision > self._seen:
                        self._seen = record.revision
                        if record.status.finished:
                            self._end()
                        return self._convert(record)
                    del record  # a held stream waits with its revision only
                await waiter.changed()
                change, resync = waiter.take()
                # A change announced before the read that already showed it needs no read.
                read = resync or change is None or change.revision > self._seen
        except BaseException:
            self._end()
            raise

    def _end(self) -> None:
        self._ended = True
        watching, self._watching = self._watching, None
        if watching is not None:
            watching.leave()

    def __del__(self) -> None:
        if self._watching is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: the feed is gone too
                self._end()


def _of(change: Change) -> tuple[InstanceStatus, int]:
    return change.status, change.revision
