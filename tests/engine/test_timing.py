"""Cron expressions, time zones and intervals: fire times without Redis or a real clock."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from okra_sidecar.engine.runtime.timing import (
    CronExpression,
    FireTimes,
    TimingError,
    parse_time_zone,
)
from okra_sidecar.schedules import ScheduleSpec


def ms(text: str, zone: str = "UTC") -> int:
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC if zone == "UTC" else ZoneInfo(zone))
    return int(moment.timestamp() * 1000)


def iso(fire_ms: int, zone: str = "UTC") -> str:
    tz = UTC if zone == "UTC" else ZoneInfo(zone)
    return datetime.fromtimestamp(fire_ms / 1000, tz).isoformat()


def fires(expression: str, start: int, count: int, zone: str = "") -> list[int]:
    spec = ScheduleSpec(workflow_id="tests.steps.1.0.0", cron=expression, time_zone=zone)
    return FireTimes(spec, anchor_ms=start).upcoming(start, count)


def test_first_of_the_month_as_in_the_seed() -> None:
    times = fires("0 0 1 * *", ms("2024-01-15T10:00:00"), 3)
    assert [iso(t) for t in times] == [
        "2024-02-01T00:00:00+00:00",
        "2024-03-01T00:00:00+00:00",
        "2024-04-01T00:00:00+00:00",
    ]


def test_six_fields_put_seconds_first() -> None:
    times = fires("*/20 * * * * *", ms("2024-01-01T00:00:00"), 3)
    assert [iso(t) for t in times] == [
        "2024-01-01T00:00:20+00:00",
        "2024-01-01T00:00:40+00:00",
        "2024-01-01T00:01:00+00:00",
    ]


def test_a_fire_time_equal_to_the_start_is_not_repeated() -> None:
    cron = CronExpression.parse("0 * * * *")
    hour = ms("2024-01-01T01:00:00")
    assert cron.next_after(hour) == hour + 3_600_000
    assert cron.next_after(hour - 1) == hour
    assert cron.latest_at_or_before(hour) == hour
    assert cron.latest_at_or_before(hour - 1) == hour - 3_600_000


def test_the_time_zone_sets_the_wall_clock() -> None:
    times = fires("0 9 * * *", ms("2024-07-01T00:00:00"), 1, "Europe/Berlin")
    assert iso(times[0]) == "2024-07-01T07:00:00+00:00"
    assert iso(times[0], "Europe/Berlin") == "2024-07-01T09:00:00+02:00"


def test_daily_time_in_the_spring_gap_fires_right_after_it() -> None:
    # 2024-03-31 02:30 does not exist in Berlin: the clocks jump from 02:00 to 03:00.
    times = fires("30 2 * * *", ms("2024-03-30T12:00:00", "Europe/Berlin"), 3, "Europe/Berlin")
    assert [iso(t, "Europe/Berlin") for t in times] == [
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:30:00+02:00",
        "2024-04-02T02:30:00+02:00",
    ]


def test_daily_time_in_the_repeated_autumn_hour_fires_once() -> None:
    zone = "America/New_York"
    times = fires("30 1 * * *", ms("2024-11-02T12:00:00", zone), 3, zone)
    assert [iso(t, zone) for t in times] == [
        "2024-11-03T01:30:00-04:00",
        "2024-11-04T01:30:00-05:00",
        "2024-11-05T01:30:00-05:00",
    ]


def test_interval_expressions_keep_real_time_through_the_repeated_hour() -> None:
    zone = "America/New_York"
    times = fires("*/30 * * * *", ms("2024-11-03T00:50:00", zone), 5, zone)
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [1_800_000] * 4


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("", "a cron expression is required"),
        ("* * * *", "has 4 fields"),
        ("* * * * * * *", "has 7 fields"),
        ("61 * * * *", "not a valid cron expression"),
        ("0 0 * * 8", "not a valid cron expression"),
        ("L * * * *", "not a valid cron expression"),
        ("H * * * *", "not a valid cron expression"),
        ("@reboot", "not a cron macro"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_bad_expressions_say_why(expression: str, problem: str) -> None:
    with pytest.raises(TimingError, match=problem):
        CronExpression.parse(expression)


def test_macros_are_accepted() -> None:
    assert fires("@daily", ms("2024-01-01T10:00:00"), 1) == [ms("2024-01-02T00:00:00")]


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../etc/passwd", "Europe/", "utc+2"])
def test_unknown_time_zones_are_refused(zone: str) -> None:
    with pytest.raises(TimingError, match="is not an IANA time zone"):
        parse_time_zone(zone)


def test_start_and_end_bound_the_fire_times() -> None:
    spec = ScheduleSpec(
        workflow_id="tests.steps.1.0.0",
        cron="0 0 * * *",
        start_ms=ms("2024-01-03T12:00:00"),
        end_ms=ms("2024-01-06T00:00:00"),
    )
    times = FireTimes(spec, anchor_ms=ms("2024-01-01T00:00:00"))
    assert times.upcoming(ms("2024-01-01T00:00:00"), 10) == [
        ms("2024-01-04T00:00:00"),
        ms("2024-01-05T00:00:00"),
        ms("2024-01-06T00:00:00"),
    ]
    assert times.latest_at_or_before(ms("2024-01-09T00:00:00")) == ms("2024-01-06T00:00:00")
    assert times.latest_at_or_before(ms("2024-01-03T00:00:00")) is None


def test_every_counts_from_the_anchor() -> None:
    spec = ScheduleSpec(workflow_id="tests.steps.1.0.0", every_ms=1500)
    times = FireTimes(spec, anchor_ms=10_000)
    assert times.upcoming(10_000, 3) == [11_500, 13_000, 14_500]
    assert times.next_after(13_000) == 14_500
    assert times.latest_at_or_before(14_000) == 13_000
    assert times.latest_at_or_before(11_000) is None
    assert times.count_between(11_500, 14_500) == 3
    assert times.count_between(0, 20_000) == 6


def test_count_between_cron_times() -> None:
    spec = ScheduleSpec(workflow_id="tests.steps.1.0.0", cron="0 * * * *")
    times = FireTimes(spec, anchor_ms=0)
    start = ms("2024-01-01T00:00:00")
    assert times.count_between(start, start + 10 * 3_600_000) == 11
