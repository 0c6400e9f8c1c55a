"""Smoke test for bench.propagation: tiny counts, two real sidecar processes, no speed asserted."""

from __future__ import annotations

import pytest

from bench.propagation import measure, report

pytestmark = pytest.mark.slow


async def test_the_propagation_bench_times_each_change() -> None:
    result = await measure(admin_changes=2, file_changes=1)
    assert len(result.admin_s) == 2 and len(result.file_s) == 1
    assert all(seconds > 0 for seconds in [*result.admin_s, *result.file_s])
    assert "slowest change reached every sidecar in" in report(result)
