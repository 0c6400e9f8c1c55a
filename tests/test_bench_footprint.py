"""Smoke test for bench.footprint: tiny counts against a real sidecar process, no speed asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.footprint import measure, report

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
async def test_the_footprint_bench_counts_commands_and_cpu(tmp_path: Path) -> None:
    result = await measure(idle_s=1, count=20, settle_s=0, work_dir=tmp_path)
    # Every instance was created and committed by a script, and finished.
    assert result.commands_per_instance["evalsha"] >= 2
    assert result.cpu_us_per_instance["server"] > 0 and result.cpu_us_per_instance["engine"] > 0
    # The background loops ran at rest (heartbeats at least).
    assert result.idle_commands_per_s
    text = report(result)
    assert "20 bench.steps instances" in text and "Redis commands per instance" in text


@pytest.mark.timeout(180)
async def test_the_footprint_bench_measures_w3s_workflow_signals_included(tmp_path: Path) -> None:
    result = await measure(idle_s=1, count=20, settle_s=0, work_dir=tmp_path, workflow="approve")
    # Each instance was created, signalled and committed twice (parked, then completed) by
    # scripts, each after a work item was read: had the Signals not been sent, the wait for
    # every instance to finish would not have returned.
    assert result.commands_per_instance["evalsha"] >= 4
    assert result.cpu_us_per_instance["engine"] > 0
    assert "20 bench.approve instances" in report(result)


@pytest.mark.timeout(240)
async def test_the_footprint_bench_runs_against_a_local_cluster(tmp_path: Path) -> None:
    result = await measure(idle_s=1, count=20, settle_s=0, work_dir=tmp_path, cluster_masters=3)
    # The commands are counted on the masters, and the masters' CPU is measured.
    assert result.commands_per_instance["evalsha"] >= 2
    assert result.cpu_us_per_instance["redis"] > 0 and result.cpu_us_per_instance["server"] > 0
