"""The turn board an engine child writes and the budgets its parent judges it by."""

from __future__ import annotations

import time

from okra_sidecar.engine.interpreter.effects import RUNTIME_ERROR
from okra_sidecar.engine.runtime.board import BoardReading, TurnBoard
from okra_sidecar.engine.runtime.deadlines import TIMEOUT_ERROR_TYPE
from okra_sidecar.engine.runtime.watchdog import TurnBudget, crash_fault, judge

BUDGET = TurnBudget(expression_ms=1000, turn_ms=10_000)
SECOND_NS = 1_000_000_000


def test_a_board_shows_the_turn_task_and_evaluation_in_progress() -> None:
    board, fd = TurnBoard.create()
    child = TurnBoard.attach(fd)  # what a child maps from the descriptor it inherits
    try:
        assert board.read() == BoardReading(0, 0, "", "")
        child.begin_turn("instance-1")
        child.enter_task("/do/1/spin")
        child.begin_evaluation()
        seen = board.read()
        assert seen.instance_id == "instance-1"
        assert seen.task == "/do/1/spin"
        assert 0 < seen.turn_started_ns <= seen.evaluation_started_ns <= time.monotonic_ns()
        child.end_evaluation()
        assert board.read().evaluation_started_ns == 0
        child.end_turn()
        assert board.read().turn_started_ns == 0
        # A new turn forgets the task of the last one.
        child.begin_turn("instance-2")
        assert board.read().task == ""
    finally:
        child.close()
        board.close()


def test_a_board_without_a_page_marks_nothing() -> None:
    board = TurnBoard(None)
    board.begin_turn("x")
    board.enter_task("/do/0/a")
    board.begin_evaluation()
    assert board.read() == BoardReading(0, 0, "", "")


def test_an_evaluation_over_budget_is_a_timeout_naming_the_task() -> None:
    start = 5 * SECOND_NS
    reading = BoardReading(start, start, "inst", "/do/2/spin")
    assert judge(reading, start + SECOND_NS // 2, BUDGET) is None
    verdict = judge(reading, start + 2 * SECOND_NS, BUDGET)
    assert verdict is not None
    assert verdict.instance_id == "inst"
    assert verdict.error["type"] == TIMEOUT_ERROR_TYPE
    assert verdict.error["status"] == 408
    assert "/do/2/spin" in verdict.error["title"]
    assert verdict.error["instance"] == "/do/2/spin"
    assert "expressionTimeoutMs" in verdict.error["detail"]


def test_a_turn_over_budget_is_judged_even_between_evaluations() -> None:
    start = 5 * SECOND_NS
    reading = BoardReading(start, 0, "inst", "/do/0/loop")
    assert judge(reading, start + 9 * SECOND_NS, BUDGET) is None
    verdict = judge(reading, start + 11 * SECOND_NS, BUDGET)
    assert verdict is not None
    assert "turnTimeoutMs" in verdict.error["detail"]
    assert verdict.error["title"] == "Turn timed out in /do/0/loop"


def test_no_turn_or_no_budget_means_no_verdict() -> None:
    assert judge(BoardReading(0, 0, "", ""), 100 * SECOND_NS, BUDGET) is None
    unlimited = TurnBudget(expression_ms=0, turn_ms=0)
    assert judge(BoardReading(1, 1, "inst", "/do/0/a"), 100 * SECOND_NS, unlimited) is None


def test_a_crash_fault_is_a_runtime_error_naming_the_task() -> None:
    error = crash_fault(BoardReading(1, 1, "inst", "/do/0/grow"), 3)
    assert error["type"] == RUNTIME_ERROR
    assert error["status"] == 500
    assert error["title"] == "Turn crashed its engine process in /do/0/grow"
    assert "3 times" in error["detail"]
