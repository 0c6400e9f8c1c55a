"""When schedules fire: cron expressions read in an IANA time zone, and fixed intervals.

Times are epoch milliseconds throughout. Cron expressions have five fields, six with seconds
first (as Quartz and Spring write them), or are a macro such as `@daily`. Across daylight
saving changes they behave as cron does: a time that falls in the hour skipped in spring fires
at the first moment after it, and an expression naming a fixed hour fires once, not twice, in
the hour repeated in autumn (one with `*` in its hour field fires in both, as real time passes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from okra_sidecar.schedules import ScheduleSpec

__all__ = ["CronExpression", "FireTimes", "TimingError", "parse_time_zone"]

MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# Counting missed fire times stops here: past it the count only says "many".
COUNT_LIMIT = 10_000


class TimingError(ValueError):
    """A cron expression or time zone that cannot be used; the message says why."""


def parse_time_zone(name: str) -> tzinfo:
    """The IANA zone `name` ('' is UTC).

    Raises:
        TimingError: no such zone.
    """
    if not name or name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimingError(
            f"'{name}' is not an IANA time zone (e.g. UTC, Europe/Berlin, America/New_York)"
        ) from None


@dataclass(frozen=True)
class CronExpression:
    """A checked cron expression in a time zone."""

    expression: str
    zone: tzinfo
    fixed_hour: bool  # the hour field names hours: fire once in a repeated autumn hour

    @classmethod
    def parse(cls, expression: str, time_zone: str = "") -> CronExpression:
        """Check the expression and zone.

        Raises:
            TimingError: with what is wrong.
        """
        zone = parse_time_zone(time_zone)
        text = " ".join(expression.split())
        fields = text.split(" ")
        if not text:
            raise TimingError("a cron expression is required, e.g. '0 0 * * *' (daily at 00:00)")
        if text.startswith("@"):
            if text.lower() not in MACROS:
                raise TimingError(f"'{text}' is not a cron macro (use one of {', '.join(MACROS)})")
            fixed_hour = text.lower() != "@hourly"
        elif len(fields) not in (5, 6):
            raise TimingError(
                f"'{text}' has {len(fields)} fields; a cron expression has 5 (minute hour "
                "day-of-month month day-of-week) or 6 (seconds first)"
            )
        else:
            fixed_hour = fields[len(fields) - 4] != "*"
        try:
            croniter(text, datetime(2000, 1, 1, tzinfo=UTC), second_at_beginning=True)
        except CroniterError as exc:
            raise TimingError(f"'{text}' is not a valid cron expression: {exc}") from None
        cron = cls(text, zone, fixed_hour)
        if cron.next_after(0) is None:
            raise TimingError(f"'{text}' never fires (no date matches it)")
        return cron

    def _iterator(self, ms: int) -> croniter:
        start = datetime.fromtimestamp(ms / 1000, self.zone)
        return croniter(self.expression, start, second_at_beginning=True)

    def next_after(self, ms: int) -> int | None:
        """The first fire time strictly after `ms`; None if there is none."""
        try:
            return self._next_after(ms)
        except (OverflowError, ValueError):
            return None  # past the year 9999 that datetime (and croniter) can represent

    def _next_after(self, ms: int) -> int | None:
        iterator = self._iterator(ms)
        while True:
            try:
                moment = iterator.get_next(datetime)
            except CroniterBadDateError:
                return None
            fire = round(moment.timestamp() * 1000)
            if fire <= ms:
                continue
            if self.fixed_hour and _repeated_wall_time(fire, self.zone):
                continue
            return fire

    def latest_at_or_before(self, ms: int) -> int | None:
        """The last fire time at or before `ms`; None if there is none."""
        try:
            return self._latest_at_or_before(ms)
        except (OverflowError, ValueError):
            return None  # before the year 1 that datetime (and croniter) can represent

    def _latest_at_or_before(self, ms: int) -> int | None:
        iterator = self._iterator(ms + 1)
        while True:
            try:
                moment = iterator.get_prev(datetime)
            except CroniterBadDateError:
                return None
            fire = round(moment.timestamp() * 1000)
            if fire > ms:
                continue
            if self.fixed_hour and _repeated_wall_time(fire, self.zone):
                continue
            return fire


def _repeated_wall_time(fire_ms: int, zone: tzinfo) -> bool:
    """Whether this moment is the second pass through a wall time repeated in autumn."""
    local = datetime.fromtimestamp(fire_ms / 1000, zone)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


class FireTimes:
    """The fire times of a cron or `every` spec, between its start and end.

    `every` fires at anchor + k * interval (k >= 1). `after` schedules have no fixed times
    (each follows the previous run's end), so they are not handled here.
    """

    def __init__(self, spec: ScheduleSpec, *, anchor_ms: int) -> None:
        self._spec = spec
        self._anchor = anchor_ms
        self._cron = CronExpression.parse(spec.cron, spec.time_zone) if spec.cron else None
        if self._cron is None and not spec.every_ms:
            raise TimingError("a schedule with fixed fire times needs a cron expression or every")

    def _raw_next(self, ms: int) -> int | None:
        if self._cron is not None:
            return self._cron.next_after(ms)
        every = self._spec.every_ms
        assert every
        if ms < self._anchor:
            return self._anchor + every
        return self._anchor + ((ms - self._anchor) // every + 1) * every

    def next_after(self, ms: int) -> int | None:
        """The first fire time strictly after `ms` within start and end; None once ended."""
        start, end = self._spec.start_ms, self._spec.end_ms
        if start is not None and ms < start:
            ms = start - 1
        fire = self._raw_next(ms)
        if fire is None or (end is not None and fire > end):
            return None
        return fire

    def latest_at_or_before(self, ms: int) -> int | None:
        """The last fire time at or before `ms` within start and end; None if there is none."""
        end = self._spec.end_ms
        if end is not None:
            ms = min(ms, end)
        if self._cron is not None:
            fire = self._cron.latest_at_or_before(ms)
        else:
            every = self._spec.every_ms
            assert every
            k = (ms - self._anchor) // every
            fire = self._anchor + k * every if k >= 1 else None
        start = self._spec.start_ms
        if fire is None or (start is not None and fire < start):
            return None
        return fire

    def upcoming(self, after_ms: int, count: int) -> list[int]:
        """Up to `count` fire times strictly after `after_ms`."""
        times: list[int] = []
        fire = after_ms
        while len(times) < count:
            found = self.next_after(fire)
            if found is None:
                break
            times.append(found)
            fire = found
        return times

    def count_between(self, first_ms: int, last_ms: int) -> int:
        """How many fire times lie in [first_ms, last_ms] (at most COUNT_LIMIT)."""
        if first_ms > last_ms:
            return 0
        if self._cron is None:
            every = self._spec.every_ms
            assert every
            low = max(first_ms, self._anchor + every)
            if low > last_ms:
                return 0
            k_low = -(-(low - self._anchor) // every)
            k_high = (last_ms - self._anchor) // every
            return min(max(k_high - k_low + 1, 0), COUNT_LIMIT)
        count = 0
        fire = self.next_after(first_ms - 1)
        while fire is not None and fire <= last_ms and count < COUNT_LIMIT:
            count += 1
            fire = self.next_after(fire)
        return count
