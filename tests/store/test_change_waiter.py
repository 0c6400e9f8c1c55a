"""ChangeWaiter: how one caller wakes on announced changes (no Redis: the feed's part)."""

from __future__ import annotations

import asyncio

import pytest

from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.change_feed import Change, ChangeWaiter

WAITING = InstanceStatus.WAITING
DONE = InstanceStatus.COMPLETED


async def test_a_wait_with_no_change_ends_false_after_its_timeout() -> None:
    waiter = ChangeWaiter()
    assert await waiter.wait(0.01) is False
    assert waiter.take() == (None, False)


async def test_a_change_before_the_wait_answers_at_once_and_changes_fold_into_the_newest() -> None:
    waiter = ChangeWaiter()
    waiter.notify(Change(3, WAITING))
    waiter.notify(Change(5, DONE))
    waiter.notify(Change(4, WAITING))  # older than what is already there: not kept
    assert await waiter.wait(None) is True
    assert waiter.take() == (Change(5, DONE), False)
    # Taken and woken once: the next wait waits again.
    assert await waiter.wait(0.01) is False


async def test_a_waiting_caller_wakes_on_the_next_change() -> None:
    waiter = ChangeWaiter()
    woken = asyncio.create_task(waiter.wait(5.0))
    await asyncio.sleep(0)
    assert not woken.done()
    waiter.notify(None)  # a resubscription: changes may have gone unseen
    assert await asyncio.wait_for(woken, 5.0) is True
    assert waiter.take() == (None, True)


async def test_a_failed_feed_fails_the_waiting_caller_and_every_later_wait() -> None:
    waiter = ChangeWaiter()
    waiting = asyncio.create_task(waiter.wait(None))
    await asyncio.sleep(0)
    error = StoreUnavailableError("the sidecar lost its Redis subscription; retry")
    waiter.fail(error)
    with pytest.raises(StoreUnavailableError):
        await asyncio.wait_for(waiting, 5.0)
    with pytest.raises(StoreUnavailableError):
        await waiter.wait(0.01)


async def test_a_cancelled_wait_leaves_the_waiter_usable() -> None:
    waiter = ChangeWaiter()
    waiting = asyncio.create_task(waiter.wait(None))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    waiter.notify(Change(1, WAITING))
    assert await waiter.wait(0.01) is True


async def test_changed_is_done_at_once_after_a_change_and_waits_again_once_taken() -> None:
    waiter = ChangeWaiter()
    waiter.notify(Change(2, WAITING))
    changed = waiter.changed()
    assert changed.done()
    await changed
    assert waiter.take() == (Change(2, WAITING), False)
    assert not waiter.changed().done()


async def test_changed_wakes_a_caller_waiting_on_it_at_the_next_change() -> None:
    waiter = ChangeWaiter()
    waiting = asyncio.ensure_future(waiter.changed())
    await asyncio.sleep(0)
    assert not waiting.done()
    waiter.notify(Change(7, DONE))
    await asyncio.wait_for(waiting, 5.0)
    assert waiter.take() == (Change(7, DONE), False)


async def test_changed_then_take_raises_once_the_feed_failed() -> None:
    waiter = ChangeWaiter()
    changed = waiter.changed()
    waiter.fail(StoreUnavailableError("the sidecar lost its Redis subscription; retry"))
    await asyncio.wait_for(changed, 5.0)
    with pytest.raises(StoreUnavailableError):
        waiter.take()
    # A later wait sees the failure at once too.
    assert waiter.changed().done()


async def test_a_cancelled_caller_of_changed_leaves_the_waiter_usable() -> None:
    waiter = ChangeWaiter()

    async def wait_for_change() -> None:
        await waiter.changed()

    waiting = asyncio.create_task(wait_for_change())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    waiter.notify(Change(1, WAITING))
    assert waiter.changed().done()
    assert waiter.take() == (Change(1, WAITING), False)
