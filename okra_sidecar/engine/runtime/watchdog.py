"""Budgets of an engine child's turns, judged by its parent from the child's TurnBoard.

A child over budget is killed (nothing gentler reaches a process stuck inside jq) and the
instance whose turn it was fails with the specification's timeout error, titled with the task.
A child that dies on its own in the middle of a turn (jq aborts when its allocation fails
under the child's memory limit) leaves that turn to be retried; after `crash_retries` retries
the instance fails with a runtime error instead of taking the next process down with it.

Before any of that, an evaluation that computes past `slowExpressionMs` (CPU time, not time
spent waiting for a busy host's CPU) in a regular child moves its instance to the slow lane
(`running_slow`), where the budgets above apply in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from okra_sidecar.engine.interpreter.effects import RUNTIME_ERROR
from okra_sidecar.engine.runtime.board import BoardReading
from okra_sidecar.engine.runtime.deadlines import TIMEOUT_ERROR_TYPE

__all__ = ["TurnBudget", "TurnVerdict", "crash_fault", "judge", "running_slow"]


@dataclass(frozen=True)
class TurnBudget:
    """What one evaluation and one turn may take (0: no limit)."""

    expression_ms: int
    turn_ms: int


@dataclass(frozen=True)
class TurnVerdict:
    """A turn stopped over budget: the instance to fail and the problem to fail it with."""

    instance_id: str
    error: dict[str, Any]


def judge(reading: BoardReading, now_ns: int, budget: TurnBudget) -> TurnVerdict | None:
    """The verdict on a board read at `now_ns` (monotonic), or None while within budget."""
    if not reading.turn_started_ns or not reading.instance_id:
        return None
    task = reading.task or "/"
    checks = (
        ("Expression", "an expression", reading.evaluation_started_ns, budget.expression_ms,
         "expressionTimeoutMs"),
        ("Turn", "the turn", reading.turn_started_ns, budget.turn_ms, "turnTimeoutMs"),
    )  # fmt: skip
    for what, subject, started_ns, limit_ms, setting in checks:
        if started_ns and limit_ms and (now_ns - started_ns) // 1_000_000 > limit_ms:
            detail = (
                f"{subject} ran longer than {limit_ms} ms ({setting}); "
                "the engine process running it was stopped"
            )
            error = _timeout(f"{what} timed out in {task}", detail, task)
            return TurnVerdict(reading.instance_id, error)
    return None


def running_slow(reading: BoardReading, ran_ms: int, slow_ms: int) -> str | None:
    """The instance whose evaluation has run (on the CPU: cpu_clock.py) past `slow_ms` after
    `ran_ms`, or None (0: never)."""
    if not slow_ms or not reading.evaluation_started_ns or not reading.instance_id:
        return None
    return reading.instance_id if ran_ms > slow_ms else None


def crash_fault(reading: BoardReading, crashes: int) -> dict[str, Any]:
    """The problem of an instance whose turn crashed its engine process `crashes` times."""
    task = reading.task or "/"
    return {
        "type": RUNTIME_ERROR,
        "status": 500,
        "title": f"Turn crashed its engine process in {task}",
        "detail": (
            f"the engine process taking this instance's turn died {crashes} times "
            "(an expression over engineMemoryMb aborts it); the turn is not retried again"
        ),
        "instance": task,
    }


def _timeout(title: str, detail: str, task: str) -> dict[str, Any]:
    return {
        "type": TIMEOUT_ERROR_TYPE,
        "status": 408,
        "title": title,
        "detail": detail,
        "instance": task,
    }
