"""Durations: ISO 8601 strings, inline objects and expressions."""

from __future__ import annotations

from typing import Any

import pytest

from okra_sidecar.engine.definitions.durations import iso_duration_ms, parse_duration


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("PT30S", 30_000),
        ("P1DT2H", 93_600_000),
        ("PT1M30.5S", 90_500),
        ("P2W", 1_209_600_000),
        ("PT0S", 0),
        ("PT0.001S", 1),
    ],
)
def test_iso_durations(text: str, ms: int) -> None:
    assert iso_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["P", "PT", "30S", "PT30", "P1H", "pt30s", "PT-1S"])
def test_not_iso_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not an ISO 8601 duration"):
        iso_duration_ms(text)


@pytest.mark.parametrize("text", ["P1Y", "P2M", "P1Y2M3D"])
def test_years_and_months_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="no fixed length"):
        iso_duration_ms(text)


def test_inline_duration() -> None:
    spec = parse_duration({"days": 1, "hours": 2, "minutes": 3, "seconds": 4, "milliseconds": 5})
    assert spec.ms == 93_784_005


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({}, "needs at least one of"),
        ({"weeks": 1}, "unknown duration unit 'weeks'"),
        ({"seconds": -1}, "must be a non-negative integer"),
        ({"seconds": 1.5}, "must be a non-negative integer"),
        ({"seconds": True}, "must be a non-negative integer"),
        (30, "a duration must be"),
    ],
)
def test_bad_inline_durations(value: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_duration(value)


def test_expression_duration_resolves_when_run() -> None:
    spec = parse_duration("${ .delay }")
    assert spec.ms is None
    assert spec.resolve({"delay": "PT2S"}, {}) == 2_000
    assert spec.resolve({"delay": {"seconds": 3}}, {}) == 3_000
    with pytest.raises(ValueError, match="not an ISO 8601 duration"):
        spec.resolve({"delay": 5}, {})
