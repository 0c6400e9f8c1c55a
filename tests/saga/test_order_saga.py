"""The order saga (examples/saga) with a real worker: it ships, or compensates in reverse."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.worker import TaskContext, TaskFailedError, TaskWorker
from tests.helpers import Stub, make_settings, running_sidecar, to_python, value, wait_for_status

SAGA_DIR = Path(__file__).resolve().parents[2] / "examples" / "saga"
DONE = {pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED}


class Shop:
    """The shop's worker: records every call, fails the functions it is told to."""

    def __init__(self, worker: TaskWorker) -> None:
        self.calls: list[tuple[str, str, int]] = []  # (function, order, attempt)
        self.failing: dict[str, str] = {}
        for function in (
            "book-inventory",
            "charge-payment",
            "ship-order",
            "refund-payment",
            "release-inventory",
        ):
            worker.task(function)(self._handler(function))

    def _handler(self, function: str) -> Any:
        async def handle(arguments: Any, context: TaskContext) -> Any:
            order = arguments["orderId"]
            self.calls.append((function, order, context.attempt))
            if self.failing.get(order) == function:
                raise TaskFailedError(f"{function} failed for {order}", status=503)
            return {"function": function, "ref": f"{function}:{order}"}

        return handle

    def order_calls(self, order: str) -> list[str]:
        return [function for function, o, _ in self.calls if o == order]


@pytest_asyncio.fixture
async def shop(redis: Redis, redis_url: str) -> AsyncIterator[tuple[Stub, Shop]]:
    async with running_sidecar(make_settings(redis_url, workflows=SAGA_DIR)) as (sidecar, stub):
        worker = TaskWorker(target=f"127.0.0.1:{sidecar.port}", service="shop", heartbeat_s=0.5)
        state = Shop(worker)
        run = asyncio.create_task(worker.run())
        try:
            yield stub, state
        finally:
            worker.stop()
            await asyncio.wait_for(run, timeout=10)


async def place(stub: Stub, order: str) -> pb.WorkflowInstance:
    reply = await stub.Run(
        pb.RunRequest(
            workflow_id="shop.order-saga.1.0.0",
            input=value({"orderId": order, "amount": 42, "items": ["tea"]}),
        )
    )
    return await wait_for_status(stub, reply.instance_id, DONE, timeout_s=20)


async def test_a_good_order_books_charges_and_ships(shop: tuple[Stub, Shop]) -> None:
    stub, state = shop
    done = await place(stub, "o-1")
    assert done.status == pb.WORKFLOW_STATUS_COMPLETED, done.error
    assert to_python(done.output)["status"] == "shipped"
    assert state.order_calls("o-1") == ["book-inventory", "charge-payment", "ship-order"]


async def test_a_failure_after_the_charge_refunds_then_releases(shop: tuple[Stub, Shop]) -> None:
    stub, state = shop
    state.failing["o-2"] = "ship-order"
    done = await place(stub, "o-2")
    assert done.status == pb.WORKFLOW_STATUS_COMPLETED, done.error
    output = to_python(done.output)
    assert output["status"] == "compensated"
    assert output["reason"] == "ship-order failed for o-2"
    assert output["failedAt"].endswith("/ship")
    assert state.order_calls("o-2") == [
        "book-inventory",
        "charge-payment",
        "ship-order",
        "refund-payment",
        "release-inventory",
    ]


async def test_a_failed_charge_only_releases_the_booking(shop: tuple[Stub, Shop]) -> None:
    stub, state = shop
    state.failing["o-3"] = "charge-payment"
    done = await place(stub, "o-3")
    assert to_python(done.output)["status"] == "compensated"
    assert state.order_calls("o-3") == ["book-inventory", "charge-payment", "release-inventory"]
