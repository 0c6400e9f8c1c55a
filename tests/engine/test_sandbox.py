"""ExpressionSandbox: the serving process's jq, bounded in time and memory by a worker process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from okra_sidecar.engine.definitions.expressions import ExpressionError, compile_expression
from okra_sidecar.engine.runtime.routing import subscription_matches
from okra_sidecar.engine.runtime.sandbox import ExpressionBudgetError, ExpressionSandbox
from tests.helpers import process_alive

ENDLESS = "${ def f: f; f }"


@pytest_asyncio.fixture
async def sandbox() -> AsyncIterator[ExpressionSandbox]:
    sandbox = ExpressionSandbox(budget_ms=1000, memory_mb=64)
    try:
        yield sandbox
    finally:
        await sandbox.close()


async def test_expressions_are_evaluated_in_the_worker(sandbox: ExpressionSandbox) -> None:
    assert await sandbox.evaluate(compile_expression("${ .a + 1 }"), {"a": 1}) == 2
    assert sandbox.worker_pid is not None
    with pytest.raises(ExpressionError, match="boom") as failed:
        await sandbox.evaluate(compile_expression('${ error("boom") }'), None)
    assert not isinstance(failed.value, ExpressionBudgetError)


async def test_a_plain_path_never_starts_the_worker(sandbox: ExpressionSandbox) -> None:
    assert (
        await sandbox.evaluate(compile_expression("${ .data.order }"), {"data": {"order": 7}}) == 7
    )
    assert sandbox.worker_pid is None


async def test_an_endless_expression_is_stopped_and_then_refused_at_once(
    sandbox: ExpressionSandbox,
) -> None:
    assert await sandbox.evaluate(compile_expression("${ . + 1 }"), 1) == 2
    first = sandbox.worker_pid
    assert first is not None
    with pytest.raises(ExpressionBudgetError, match="ran past its budget"):
        await sandbox.evaluate(compile_expression(ENDLESS), {})
    assert sandbox.worker_pid is None and not process_alive(first)
    # Remembered: refused without a worker, which would otherwise wait out the budget again.
    with pytest.raises(ExpressionBudgetError, match="recently"):
        await sandbox.evaluate(compile_expression(ENDLESS), {})
    assert sandbox.worker_pid is None
    # Other expressions go on, in a new worker.
    assert await sandbox.evaluate(compile_expression("${ [.[] * 2] }"), [1, 2]) == [2, 4]
    assert sandbox.worker_pid not in (None, first)


async def test_an_allocation_past_the_memory_cap_ends_the_worker_not_the_caller(
    sandbox: ExpressionSandbox,
) -> None:
    with pytest.raises(ExpressionBudgetError):
        await sandbox.evaluate(compile_expression("${ [range(1e9)] | length }"), None)
    assert await sandbox.evaluate(compile_expression("${ length }"), "abc") == 3


async def test_matching_takes_an_expression_over_budget_as_the_caller_says(
    sandbox: ExpressionSandbox,
) -> None:
    hostile = [{"with": {"type": "t", "data": ENDLESS}}]
    event = {"type": "t", "data": 1}
    # A listening instance gets the event (its bounded engine decides); a trigger does not fire.
    assert await subscription_matches(hostile, event, sandbox.evaluate)
    assert not await subscription_matches(hostile, event, sandbox.evaluate, over_budget=False)


async def test_a_value_that_is_not_json_is_an_expression_error(sandbox: ExpressionSandbox) -> None:
    with pytest.raises(ExpressionError, match="not JSON") as failed:
        await sandbox.evaluate(compile_expression("${ . + 1 }"), {1, 2})
    assert not isinstance(failed.value, ExpressionBudgetError)
