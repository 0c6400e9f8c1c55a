"""WorkflowHandle and the waiting verbs of OkraClient against a real sidecar: nothing polls."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from okra_client import (
    InstanceAlreadyFinishedError,
    InstanceNotFailedError,
    InstanceNotFoundError,
    InvalidArgumentError,
    OkraClient,
    StatusUnreachableError,
    WorkflowFailedError,
    WorkflowHandle,
    WorkflowStatus,
)

from okra_sidecar.server import Sidecar
from tests.helpers import Stub

APPROVAL = "tests.approval.1.0.0"


class CallCounter(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts the unary calls a channel makes, by method name."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else method
        self.calls[name.rpartition("/")[2]] += 1
        return await continuation(client_call_details, request)


@pytest_asyncio.fixture
async def counted(
    sidecar: tuple[Sidecar, Stub],
) -> AsyncIterator[tuple[OkraClient, CallCounter]]:
    counter = CallCounter()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar[0].port}", interceptors=[counter])
    try:
        yield OkraClient(channel=channel, timeout_s=5.0), counter
    finally:
        await channel.close()


async def test_start_result_and_signal_through_a_handle(
    counted: tuple[OkraClient, CallCounter],
) -> None:
    client, counter = counted
    handle = await client.start(APPROVAL, {"amount": 9})
    assert isinstance(handle, WorkflowHandle)
    waiting = await handle.wait(until=["waiting"])
    assert waiting.status is WorkflowStatus.WAITING and waiting.revision >= 1
    await handle.signal("approve", {"by": "ed"})
    assert await handle.result(timeout_s=10) == {"amount": 9, "approvedBy": "ed"}
    assert (await handle.describe()).status is WorkflowStatus.COMPLETED
    # Waiting went through AwaitInstance, one call per wait: no GetStatus loop.
    assert counter.calls["AwaitInstance"] == 2
    assert counter.calls["GetStatus"] == 1  # describe()


async def test_wait_does_not_poll_while_nothing_changes(
    counted: tuple[OkraClient, CallCounter],
) -> None:
    client, counter = counted
    handle = await client.start(APPROVAL, {"amount": 1})
    await handle.wait(until=["waiting"])
    before = counter.calls["AwaitInstance"]
    with pytest.raises(TimeoutError, match=r"was not cancelled, completed or failed within 1.5 s"):
        await handle.wait(timeout_s=1.5)
    # One long poll for the whole wait (the sidecar answers just before its deadline, and
    # the client stops there), where polling every 100 ms would have made about fifteen.
    assert counter.calls["AwaitInstance"] - before <= 2
    assert counter.calls["GetStatus"] == 0


async def test_result_of_a_cancelled_instance_raises(
    counted: tuple[OkraClient, CallCounter],
) -> None:
    client, _ = counted
    handle = await client.start(APPROVAL, {"amount": 2})
    await handle.cancel("not needed")
    with pytest.raises(WorkflowFailedError) as raised:
        await handle.result()
    assert raised.value.instance.status is WorkflowStatus.CANCELLED
    assert "not needed" in str(raised.value)


async def test_wait_for_a_status_a_finished_instance_cannot_reach_raises_at_once(
    counted: tuple[OkraClient, CallCounter],
) -> None:
    client, counter = counted
    handle = await client.start(APPROVAL, {"amount": 7})
    await handle.wait(until=["waiting"])
    # Finishing while waited on for another status ends the wait, with no deadline given.
    suspended = asyncio.create_task(handle.wait(until=["suspended"], timeout_s=None))
    await asyncio.sleep(0.2)
    assert not suspended.done()
    await handle.signal("approve", {"by": "ed"})
    with pytest.raises(StatusUnreachableError) as raised:
        await asyncio.wait_for(suspended, 5)
    assert raised.value.instance.status is WorkflowStatus.COMPLETED
    assert raised.value.until == {WorkflowStatus.SUSPENDED}
    assert str(raised.value) == (
        f"instance {handle.id} is completed and will not be suspended unless an operator "
        "resets or retries it"
    )
    # Already finished: one AwaitInstance call answers at once.
    before = counter.calls["AwaitInstance"]
    with pytest.raises(StatusUnreachableError, match="will not be running or waiting"):
        await asyncio.wait_for(handle.wait(until=["waiting", "running"], timeout_s=None), 5)
    assert counter.calls["AwaitInstance"] - before == 1
    # A status in `until` still wins, and a Reset makes waiting reachable again.
    assert (await handle.wait(until=["completed", "waiting"])).status is WorkflowStatus.COMPLETED
    await handle.reset("/do/0/askForApproval", "again")
    assert (await handle.wait(until=["waiting"])).status is WorkflowStatus.WAITING


async def test_watch_yields_each_change_until_finished(
    counted: tuple[OkraClient, CallCounter],
) -> None:
    client, _ = counted
    handle = await client.start(APPROVAL, {"amount": 3})
    await handle.wait(until=["waiting"])
    seen = []
    async for instance in handle.watch():
        seen.append(instance)
        if len(seen) == 1:
            await handle.signal("approve", {"by": "fe"})
    assert seen[0].status is WorkflowStatus.WAITING
    assert seen[-1].status is WorkflowStatus.COMPLETED
    assert [i.revision for i in seen] == sorted({i.revision for i in seen})


async def test_a_handle_carries_the_operator_verbs(
    counted: tuple[OkraClient, CallCounter],
) -> None:
    client, _ = counted
    handle = await client.start(APPROVAL, {"amount": 6})
    await handle.wait(until=["waiting"])
    await handle.suspend("audit")
    assert (await handle.describe()).status is WorkflowStatus.SUSPENDED
    await handle.signal("approve", {"by": "op"})  # kept until Resume
    await handle.resume("audit done")
    assert await handle.result(timeout_s=10) == {"amount": 6, "approvedBy": "op"}
    with pytest.raises(InstanceNotFailedError):
        await handle.retry("nothing failed", variables={"attempt": 2})
    assert await handle.reset("/do/0/askForApproval", "again") is WorkflowStatus.COMPLETED
    await handle.wait(until=["waiting"])
    await handle.cancel("done with it")
    await handle.delete()
    with pytest.raises(InstanceNotFoundError):
        await handle.describe()


async def test_signal_with_start_and_count(counted: tuple[OkraClient, CallCounter]) -> None:
    client, _ = counted
    first = await client.signal_with_start(
        APPROVAL, {"amount": 4}, "note", {"text": "hi"}, request_id="req-1", signal_id="n1"
    )
    assert first.started and not first.duplicate
    again = await client.signal_with_start(
        APPROVAL, {"amount": 4}, "approve", {"by": "gu"}, request_id="req-1"
    )
    assert again.instance_id == first.instance_id and not again.started
    handle = client.get_handle(first.instance_id)
    assert await handle.result(timeout_s=10) == {"amount": 4, "approvedBy": "gu"}
    with pytest.raises(InstanceAlreadyFinishedError):
        await client.signal_with_start(APPROVAL, {"amount": 4}, "approve", request_id="req-1")
    assert await client.count(workflow_id=APPROVAL, status=["completed"]) == 1
    assert await client.count(workflow_id=APPROVAL, status=["waiting"]) == 0


async def test_waiting_verbs_raise_typed_errors(counted: tuple[OkraClient, CallCounter]) -> None:
    client, _ = counted
    missing = client.get_handle("00000000-0000-4000-8000-000000000000")
    with pytest.raises(InstanceNotFoundError):
        await missing.result()
    with pytest.raises(InstanceNotFoundError):
        async for _ in missing.watch():
            pass
    with pytest.raises(InvalidArgumentError):
        await client.await_instance("not-an-id")
