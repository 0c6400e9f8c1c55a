"""Glob lists (blocked wins, empty allowed restricts nothing) and rate texts."""

from __future__ import annotations

import pytest

from okra_sidecar.policy.globs import GlobList, check_pattern
from okra_sidecar.policy.model import WorkflowRef
from okra_sidecar.policy.rates import parse_rate


@pytest.mark.parametrize(
    ("pattern", "workflow_id", "matches"),
    [
        ("report.*", "report.generation.1.0.0", True),
        ("user.onboarding", "user.onboarding.2.0.0", True),
        ("user.onboarding", "user.onboardings.1.0.0", False),
        ("user.onboarding.1.0.0", "user.onboarding.1.0.0", True),
        ("user.onboarding.1.0.0", "user.onboarding.1.0.1", False),
        ("*.process", "payment.process.1.0.0", True),
        ("legacy.*", "legacyx.thing.1.0.0", False),
        ("Report.*", "report.generation.1.0.0", False),
    ],
)
def test_workflow_globs_match_key_or_full_id(pattern: str, workflow_id: str, matches: bool) -> None:
    names = WorkflowRef.parse(workflow_id).names()
    assert (GlobList.of([pattern]).match(names) == pattern) is matches


def test_empty_list_is_falsy_and_matches_nothing() -> None:
    assert not GlobList()
    assert GlobList().match(["anything"]) is None


@pytest.mark.parametrize("pattern", ["", "a b", "a?", 5, "x/y"])
def test_bad_patterns_are_named(pattern: object) -> None:
    assert check_pattern(pattern) is not None


@pytest.mark.parametrize(
    ("text", "limit", "period_ms"),
    [
        ("100/minute", 100, 60_000),
        ("1000/minute", 1000, 60_000),
        ("5/second", 5, 1000),
        ("2/hour", 2, 3_600_000),
        (" 7 / s ", 7, 1000),
    ],
)
def test_rates(text: str, limit: int, period_ms: int) -> None:
    rate = parse_rate(text)
    assert (rate.limit, rate.period_ms) == (limit, period_ms)


@pytest.mark.parametrize("text", ["100", "0/minute", "-1/minute", "5/fortnight", 100, None])
def test_bad_rates(text: object) -> None:
    with pytest.raises(ValueError, match="is not a rate"):
        parse_rate(text)
