"""cancel_and_wait ends tasks that swallow a cancellation, as asyncio.wait_for does on 3.11."""

from __future__ import annotations

import asyncio

import pytest

from okra_sidecar.tasks import cancel_and_wait


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed < 2:  # what 3.11's wait_for does when its inner call just ended
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task]), timeout=5)
    assert swallowed == 2 and task.cancelled()


async def test_finished_and_failed_tasks_are_waited_for_without_raising() -> None:
    async def fail() -> None:
        raise ValueError("on the way out")

    done = asyncio.create_task(asyncio.sleep(0))
    failed = asyncio.create_task(fail())
    sleeping = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0.01)
    await cancel_and_wait([done, failed, sleeping])
    assert done.done() and not done.cancelled()
    assert isinstance(failed.exception(), ValueError)
    assert sleeping.cancelled()
    await cancel_and_wait([])  # nothing to stop


async def test_the_stopping_caller_can_itself_be_cancelled() -> None:
    deaf = True

    async def deaf_while_told() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if not deaf:
                    raise

    task = asyncio.create_task(deaf_while_told())
    stopper = asyncio.create_task(cancel_and_wait([task]))
    await asyncio.sleep(0.25)  # a few rounds of cancelling again
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert not task.done()
    deaf = False
    await cancel_and_wait([task])
    assert task.cancelled()
