"""decide(): overlap and catch-up policies, `after` schedules and ends, without Redis."""

from __future__ import annotations

from typing import Any

from okra_sidecar.engine.runtime.firing import decide, first_fire
from okra_sidecar.schedules import (
    CatchUpPolicy,
    OverlapPolicy,
    PreviousRun,
    ScheduleRecord,
    ScheduleSource,
    ScheduleSpec,
)

MINUTE = 60_000
GRACE = 5_000
POLL = 250
RUNNING = PreviousRun(finished=False)
DONE = PreviousRun(finished=True, finished_ms=0)


def record(**spec: Any) -> ScheduleRecord:
    fields = {"workflow_id": "tests.steps.1.0.0", "every_ms": MINUTE, **spec}
    made = ScheduleRecord(
        schedule_id="5f0c8e1e-0000-4000-8000-000000000001",
        spec=ScheduleSpec(**fields),
        source=ScheduleSource.API,
        generation="g1",
        anchor_ms=0,
        created_ms=0,
        updated_ms=0,
    )
    return made.evolve(next_fire_ms=first_fire(made, 0))


def test_nothing_before_the_fire_time() -> None:
    schedule = record()
    decision = decide(schedule, MINUTE - 1, None, grace_ms=GRACE, poll_ms=POLL)
    assert decision.start_ms is None
    assert decision.check_at_ms == MINUTE


def test_a_due_time_starts_and_moves_on() -> None:
    decision = decide(record(), MINUTE + 10, None, grace_ms=GRACE, poll_ms=POLL)
    assert decision.start_ms == MINUTE
    assert decision.next_fire_ms == 2 * MINUTE
    assert decision.check_at_ms == 2 * MINUTE
    assert decision.skipped == 0


def test_late_within_the_grace_fires_each_time() -> None:
    schedule = record(every_ms=1000).evolve(next_fire_ms=1000)
    decision = decide(schedule, 3500, None, grace_ms=GRACE, poll_ms=POLL)
    assert (decision.start_ms, decision.next_fire_ms, decision.check_at_ms) == (1000, 2000, 2000)


def test_missed_times_fire_once_for_the_latest() -> None:
    schedule = record(catch_up=CatchUpPolicy.FIRE_ONCE)
    decision = decide(schedule, 10 * MINUTE + 30_000, DONE, grace_ms=GRACE, poll_ms=POLL)
    assert decision.start_ms == 10 * MINUTE
    assert decision.skipped == 9
    assert decision.next_fire_ms == 11 * MINUTE
    assert "missed" in decision.reason


def test_missed_times_can_be_skipped() -> None:
    schedule = record(catch_up=CatchUpPolicy.SKIP_MISSED)
    decision = decide(schedule, 10 * MINUTE + 30_000, None, grace_ms=GRACE, poll_ms=POLL)
    assert decision.start_ms is None
    assert decision.skipped == 10
    assert decision.next_fire_ms == 11 * MINUTE


def test_overlap_allow_starts_beside_a_running_instance() -> None:
    decision = decide(record(), MINUTE, RUNNING, grace_ms=GRACE, poll_ms=POLL)
    assert decision.start_ms == MINUTE


def test_overlap_skip_drops_the_firing() -> None:
    schedule = record(overlap=OverlapPolicy.SKIP)
    decision = decide(schedule, MINUTE, RUNNING, grace_ms=GRACE, poll_ms=POLL)
    assert decision.start_ms is None
    assert decision.skipped == 1
    assert decision.next_fire_ms == 2 * MINUTE
    assert "still running" in decision.reason


def test_overlap_buffer_one_keeps_one_and_starts_it_when_the_previous_ends() -> None:
    schedule = record(overlap=OverlapPolicy.BUFFER_ONE)
    first = decide(schedule, MINUTE, RUNNING, grace_ms=GRACE, poll_ms=POLL)
    assert (first.start_ms, first.buffered_ms, first.check_at_ms) == (None, MINUTE, MINUTE + POLL)
    schedule = schedule.evolve(next_fire_ms=first.next_fire_ms, buffered_ms=first.buffered_ms)
    second = decide(schedule, 2 * MINUTE, RUNNING, grace_ms=GRACE, poll_ms=POLL)
    assert (second.start_ms, second.buffered_ms, second.skipped) == (None, MINUTE, 1)
    schedule = schedule.evolve(next_fire_ms=second.next_fire_ms)
    waiting = decide(schedule, 2 * MINUTE + 100, RUNNING, grace_ms=GRACE, poll_ms=POLL)
    assert waiting.start_ms is None
    assert waiting.check_at_ms == 2 * MINUTE + 100 + POLL
    ended = decide(schedule, 2 * MINUTE + 200, DONE, grace_ms=GRACE, poll_ms=POLL)
    assert (ended.start_ms, ended.buffered_ms, ended.next_fire_ms) == (MINUTE, None, 3 * MINUTE)


def test_the_schedule_ends_at_its_end_time() -> None:
    schedule = record(end_ms=2 * MINUTE)
    decision = decide(schedule, MINUTE, None, grace_ms=GRACE, poll_ms=POLL)
    schedule = schedule.evolve(next_fire_ms=decision.next_fire_ms)
    assert decision.start_ms == MINUTE
    assert decision.next_fire_ms == 2 * MINUTE
    last = decide(schedule, 2 * MINUTE, None, grace_ms=GRACE, poll_ms=POLL)
    assert (last.start_ms, last.next_fire_ms, last.check_at_ms) == (2 * MINUTE, None, None)


def test_after_runs_at_once_then_after_each_end() -> None:
    schedule = record(every_ms=None, after_ms=10_000)
    assert schedule.next_fire_ms == 0
    first = decide(schedule, 5, None, grace_ms=GRACE, poll_ms=POLL)
    assert first.start_ms == 0
    schedule = schedule.evolve(last_instance_id="i1", last_fire_ms=0, next_fire_ms=None)
    running = decide(schedule, 3000, RUNNING, grace_ms=GRACE, poll_ms=POLL)
    assert (running.start_ms, running.check_at_ms) == (None, 3000 + POLL)
    finished = PreviousRun(finished=True, finished_ms=4000)
    waiting = decide(schedule, 5000, finished, grace_ms=GRACE, poll_ms=POLL)
    assert (waiting.start_ms, waiting.next_fire_ms, waiting.check_at_ms) == (None, 14_000, 14_000)
    due = decide(schedule, 60_000, finished, grace_ms=GRACE, poll_ms=POLL)
    assert due.start_ms == 14_000


def test_after_counts_from_the_last_start_when_the_instance_is_gone() -> None:
    schedule = record(every_ms=None, after_ms=10_000).evolve(
        last_instance_id="purged", last_fire_ms=1000, next_fire_ms=None
    )
    decision = decide(schedule, 5000, None, grace_ms=GRACE, poll_ms=POLL)
    assert decision.next_fire_ms == 11_000
