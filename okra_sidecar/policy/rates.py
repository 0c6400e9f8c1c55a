"""Rate limits as the Host API specification writes them: "100/minute", also per second, hour."""

from __future__ import annotations

import re
from dataclasses import dataclass

RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")
PERIOD_MS = {
    "second": 1000,
    "sec": 1000,
    "s": 1000,
    "minute": 60_000,
    "min": 60_000,
    "m": 60_000,
    "hour": 3_600_000,
    "h": 3_600_000,
}


@dataclass(frozen=True)
class Rate:
    """`limit` calls per `period_ms`, enforced as a GCRA allowing bursts of up to `limit`."""

    limit: int
    period_ms: int
    text: str

    @property
    def interval_ms(self) -> float:
        return self.period_ms / self.limit


def parse_rate(text: object) -> Rate:
    """Parse "100/minute".

    Raises:
        ValueError: with a message naming the accepted forms.
    """
    match = RATE_RE.match(text) if isinstance(text, str) else None
    if not match or match.group(2) not in PERIOD_MS or int(match.group(1)) < 1:
        raise ValueError(
            f"{text!r} is not a rate; write a positive whole number of calls per second, "
            'minute or hour, e.g. "100/minute"'
        )
    return Rate(int(match.group(1)), PERIOD_MS[match.group(2)], str(text).strip())


__all__ = ["Rate", "parse_rate"]
