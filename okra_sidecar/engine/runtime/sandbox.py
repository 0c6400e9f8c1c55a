"""ExpressionSandbox: jq that the serving process evaluates, bounded like the engine's.

The event router (and the event triggers it offers events to) matches events against the
expressions of listen filters and `schedule.on` filters in the serving process. jq holds the
GIL while it evaluates, so an endless filter there would stop every rpc and every other event.
So those evaluations run in a worker process (`sandbox_worker.py`) with the engine's budget
per evaluation (`expressionTimeoutMs`) and memory cap (`engineMemoryMb`): one over budget, or
one that crashes the worker, raises ExpressionBudgetError, and the worker is killed and started
again for the next. An expression that ran over budget is not evaluated again for
HOSTILE_FOR_S: each further event would otherwise wait out the whole budget for it.

Plain paths (`.data.order`) are walked in Python and never leave the process; with both budgets
at 0 (what the settings allow only without engine processes) everything is evaluated here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from okra_sidecar.config import Settings
from okra_sidecar.engine.definitions.expressions import CompiledExpression, ExpressionError
from okra_sidecar.engine.runtime.forking import wait_or_kill
from okra_sidecar.subprocesses import signal_child

__all__ = [
    "ExpressionBudgetError",
    "ExpressionSandbox",
    "SandboxEvaluate",
    "evaluate_here",
    "expression_sandbox",
]

logger = logging.getLogger(__name__)

# How long an expression that ran over budget is refused without being evaluated.
HOSTILE_FOR_S = 600.0
# The worker imports jq before its first answer: seconds on a busy host, not the budget's.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
# Evaluates one expression against one value (no runtime arguments).
SandboxEvaluate = Callable[[CompiledExpression, Any], Awaitable[Any]]


class ExpressionBudgetError(ExpressionError):
    """The expression ran past its budget or crashed the process evaluating it."""


async def evaluate_here(expression: CompiledExpression, data: Any) -> Any:
    """Unbounded, in this process: for budgets turned off, and for tests of the matching."""
    return expression.evaluate(data, {})


def expression_sandbox(settings: Settings) -> ExpressionSandbox:
    """The sandbox with the engine's budgets (none when `expressionTimeoutMs` is 0)."""
    engine = settings.engine
    return ExpressionSandbox(budget_ms=engine.expression_timeout_ms, memory_mb=engine.memory_mb)


class ExpressionSandbox:
    """Evaluates expressions in a worker process, one at a time, within a time budget."""

    def __init__(self, *, budget_ms: int, memory_mb: int) -> None:
        self._budget_s = budget_ms / 1000
        self._memory_mb = memory_mb
        self._worker: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        # Expression texts that ran over budget, with when they may be evaluated again.
        self._hostile: dict[str, float] = {}

    @property
    def worker_pid(self) -> int | None:
        worker = self._worker
        return None if worker is None or worker.returncode is not None else worker.pid

    async def evaluate(self, expression: CompiledExpression, data: Any) -> Any:
        """The expression's first output for `data`.

        Raises:
            ExpressionBudgetError: over budget now, or within HOSTILE_FOR_S of it.
            ExpressionError: the expression failed (as in the engine).
        """
        if expression.runs_in_python or not self._budget_s:
            return expression.evaluate(data, {})
        until = self._hostile.get(expression.text)
        if until is not None and time.monotonic() < until:
            raise ExpressionBudgetError(expression.text, "it ran past its budget recently")
        self._hostile.pop(expression.text, None)
        try:
            request = json.dumps({"text": expression.source, "data": data}).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            raise ExpressionError(expression.text, f"value is not JSON: {exc}") from None
        async with self._lock:
            worker = await self._running()
            assert worker.stdin is not None and worker.stdout is not None
            try:
                worker.stdin.write(request)
                await worker.stdin.drain()
                line = await asyncio.wait_for(worker.stdout.readline(), self._budget_s)
            except (TimeoutError, ConnectionError) as exc:
                await self._kill()
                raise self._over_budget(expression, "ran past its budget") from exc
            if not line:
                await self._kill()
                raise self._over_budget(expression, "ended the process evaluating it")
        answer = json.loads(line)
        if "error" in answer:
            raise ExpressionError(expression.text, str(answer["error"]))
        return answer.get("value")

    def _over_budget(self, expression: CompiledExpression, what: str) -> ExpressionBudgetError:
        self._hostile[expression.text] = time.monotonic() + HOSTILE_FOR_S
        budget_ms = int(self._budget_s * 1000)
        logger.warning(
            "event filter %.200s %s (%d ms, expressionTimeoutMs); it matches as unknown "
            "for the next %d s",
            expression.text,
            what,
            budget_ms,
            HOSTILE_FOR_S,
        )
        return ExpressionBudgetError(expression.text, f"the expression {what} ({budget_ms} ms)")

    async def _running(self) -> asyncio.subprocess.Process:
        worker = self._worker
        if worker is not None and worker.returncode is None:
            return worker
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "okra_sidecar.engine.runtime.sandbox_worker",
            str(self._memory_mb),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # An expression's output can be large: one line per answer, however long.
            limit=2**31 - 1,
        )
        self._worker = worker
        assert worker.stdout is not None
        try:
            ready = await asyncio.wait_for(worker.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            ready = b""
        if ready.strip() != b"ready":
            await self._kill()
            raise ExpressionBudgetError("", "the expression sandbox did not start")
        return worker

    async def _kill(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        # Not worker.kill(): a worker that crashed would be reaped there, before asyncio.
        signal_child(worker, signal.SIGKILL)
        await worker.wait()

    async def close(self) -> None:
        """Stop the worker: it exits at the end of its input."""
        async with self._lock:
            worker, self._worker = self._worker, None
            if worker is None or worker.returncode is not None:
                return
            assert worker.stdin is not None
            worker.stdin.close()
            await wait_or_kill(worker, STOP_TIMEOUT_S)
