"""Deciding a schedule's firings: a pure function of the record, its previous run and now.

The scheduler of every sidecar calls decide() for each due schedule and applies the decision
only if the schedule has not changed since it read it; the instance a decision starts has an
id derived from the schedule and fire time, so two sidecars deciding the same firing create
one instance between them.
"""

from __future__ import annotations

from dataclasses import dataclass

from okra_sidecar.engine.runtime.timing import FireTimes
from okra_sidecar.schedules import CatchUpPolicy, OverlapPolicy, PreviousRun, ScheduleRecord

__all__ = ["Decision", "decide", "first_fire"]


@dataclass(frozen=True)
class Decision:
    """What to do now.

    `start_ms`: start one instance for this fire time now (None: start nothing).
    `next_fire_ms`, `buffered_ms`: the schedule's new next fire time and buffered firing.
    `skipped`: fire times dropped by this decision. `check_at_ms`: when the scheduler must
    look at the schedule again (None: never, it has ended). `reason`: why times were skipped.
    """

    start_ms: int | None
    next_fire_ms: int | None
    buffered_ms: int | None
    skipped: int
    check_at_ms: int | None
    reason: str = ""


def first_fire(record: ScheduleRecord, now_ms: int) -> int | None:
    """The first fire time of a new, resumed or changed schedule: the next one after now.

    An `after` schedule's first run is due at once (at its anchor), then each next one `after`
    its predecessor finished.
    """
    spec = record.spec
    if spec.after_ms is not None:
        due = max(record.anchor_ms, spec.start_ms or 0)
        return None if spec.end_ms is not None and due > spec.end_ms else due
    return FireTimes(spec, anchor_ms=record.anchor_ms).next_after(now_ms)


def decide(
    record: ScheduleRecord,
    now_ms: int,
    previous: PreviousRun | None,
    *,
    grace_ms: int,
    poll_ms: int,
) -> Decision:
    """Decide one step for a due schedule; call again while `check_at_ms` <= now.

    Args:
        record: the schedule as stored.
        now_ms: the scheduler's clock.
        previous: the latest instance the schedule started (None: none, or purged).
        grace_ms: a fire time found later than this was missed (no sidecar was up), and the
            catch-up policy decides about it; later by less, it fires as usual.
        poll_ms: how soon to look again while waiting for the previous run to finish.
    """
    running = previous is not None and not previous.finished
    if record.spec.after_ms is not None:
        return _decide_after(record, now_ms, previous, poll_ms)
    buffered = record.buffered_ms
    if buffered is not None and not running:
        # The previous run ended: the buffered firing goes first.
        return Decision(buffered, record.next_fire_ms, None, 0, now_ms)
    fire = record.next_fire_ms
    if fire is None or fire > now_ms:
        check = fire
        if buffered is not None:
            check = now_ms + poll_ms if fire is None else min(fire, now_ms + poll_ms)
        return Decision(None, fire, buffered, 0, check)
    times = FireTimes(record.spec, anchor_ms=record.anchor_ms)
    skipped = 0
    reason = ""
    if now_ms - fire > grace_ms:
        # Missed while no sidecar was up: the catch-up policy decides.
        latest = times.latest_at_or_before(now_ms) or fire
        missed = max(times.count_between(fire, latest), 1)
        following = times.next_after(now_ms)
        if record.spec.catch_up is CatchUpPolicy.SKIP_MISSED:
            reason = f"{missed} fire time(s) missed while no sidecar was up (skip-missed)"
            return Decision(
                None,
                following,
                buffered,
                missed,
                _check(following, buffered, now_ms, poll_ms),
                reason,
            )
        skipped, fire = missed - 1, latest
        if skipped:
            reason = f"{skipped} fire time(s) missed while no sidecar was up (fire-once)"
    else:
        following = times.next_after(fire)
    if running:
        return _overlapping(record, fire, following, buffered, skipped, reason, now_ms, poll_ms)
    return Decision(
        fire, following, buffered, skipped, _check(following, buffered, now_ms, poll_ms), reason
    )


def _overlapping(
    record: ScheduleRecord,
    fire: int,
    following: int | None,
    buffered: int | None,
    skipped: int,
    reason: str,
    now_ms: int,
    poll_ms: int,
) -> Decision:
    """A firing due while the previous run still runs, decided by the overlap policy."""
    check = _check(following, buffered, now_ms, poll_ms)
    overlap = record.spec.overlap
    if overlap is OverlapPolicy.SKIP:
        return Decision(
            None,
            following,
            buffered,
            skipped + 1,
            check,
            "the previous instance was still running (overlap: skip)",
        )
    if overlap is OverlapPolicy.BUFFER_ONE:
        if buffered is None:
            buffered = fire
        else:
            skipped += 1
            reason = "one firing is already buffered (overlap: buffer-one)"
        return Decision(
            None, following, buffered, skipped, _check(following, buffered, now_ms, poll_ms), reason
        )
    return Decision(fire, following, buffered, skipped, check, reason)


def _check(following: int | None, buffered: int | None, now_ms: int, poll_ms: int) -> int | None:
    if buffered is None:
        return following
    soon = now_ms + poll_ms
    return soon if following is None else min(following, soon)


def _decide_after(
    record: ScheduleRecord, now_ms: int, previous: PreviousRun | None, poll_ms: int
) -> Decision:
    spec = record.spec
    assert spec.after_ms is not None
    if previous is not None and not previous.finished:
        return Decision(None, None, None, 0, now_ms + poll_ms)
    if not record.last_instance_id:
        fire = record.next_fire_ms
    elif previous is not None and previous.finished_ms is not None:
        fire = previous.finished_ms + spec.after_ms
    else:
        # The previous run is gone (purged): count from when it was started.
        fire = (record.last_fire_ms or record.anchor_ms) + spec.after_ms
    if fire is None or (spec.end_ms is not None and fire > spec.end_ms):
        return Decision(None, None, None, 0, None)
    if fire > now_ms:
        return Decision(None, fire, None, 0, fire)
    # Whatever the catch-up policy, an `after` schedule has one pending run: it starts now.
    return Decision(fire, None, None, 0, now_ms + poll_ms)
