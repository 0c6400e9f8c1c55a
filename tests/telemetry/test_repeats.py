"""RepeatedWarnings: a line per kind of trouble every few seconds, with what it held back."""

from __future__ import annotations

import logging

import pytest

from okra_sidecar.telemetry.repeats import RepeatedWarnings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_kind_then_the_count_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    warnings = RepeatedWarnings(logging.getLogger("okra.test"), every_s=5.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="okra.test"):
        for attempt in range(10):  # ten failed attempts of one loop within a second
            warnings.warning(("relay", "REDIS_UNAVAILABLE"), "relay: %s", f"down {attempt}")
            clock.now += 0.1
        warnings.warning(("relay", "REPLICAS_NOT_ACKNOWLEDGED"), "relay: %s", "no replica")
        warnings.warning("heartbeat", "heartbeat: %s", "down")
        clock.now += 5.0
        warnings.warning(("relay", "REDIS_UNAVAILABLE"), "relay: %s", "down again")
        clock.now += 6.0
        warnings.warning(("relay", "REDIS_UNAVAILABLE"), "relay: %s", "down once more")
    assert [r.getMessage() for r in caplog.records] == [
        "relay: down 0",
        "relay: no replica",
        "heartbeat: down",
        "relay: down again (9 more like it in the last 6 s)",
        "relay: down once more",
    ]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}
