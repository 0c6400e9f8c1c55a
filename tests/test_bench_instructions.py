"""bench.instructions: callgrind counts per call (smoke test; no assertion on the figures)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.instructions import Count, Window, format_counts, last_dump, measure


def test_last_dump_reads_the_newest_part(tmp_path: Path) -> None:
    for part, total in ((1, 500), (2, 700), (10, 300)):
        (tmp_path / f"callgrind.42.{part}").write_text(f"part: {part}\nsummary: {total}\n")
    assert last_dump(tmp_path, 42) == 300


def test_format_counts_gives_the_echo_ratios() -> None:
    text = format_counts(
        [
            Count("echo server, per call", 400_000),
            Count("sidecar serving process, per Run", 1_000_000),
            Count("sidecar engine child, per Run (its first turn)", 1_000_000),
            Count("sidecar serving process, per GetStatus", 800_000),
        ]
    )
    assert "echo / serving process: Run 40%, GetStatus 50%" in text


def test_a_window_takes_off_the_at_rest_loops_share() -> None:
    # 3 M instructions over 2 s for 10 calls, with loops taking 500 k a second at rest:
    # 300 k per call, of which 100 k the loops'.
    count = Window(3_000_000, 2.0).per_call("per Signal", 10, at_rest_per_s=500_000)
    assert count.instructions_per_call == 300_000
    assert count.net_per_call == 200_000
    assert Window(3_000_000, 2.0).per_call("per Signal", 10).net_per_call is None


def test_format_counts_gives_the_count_without_the_loops_beside_it() -> None:
    text = format_counts(
        [
            Count("echo server, per call", 400_000),
            Count("sidecar serving process, per Run", 1_000_000, at_rest_per_call=150_000),
            Count("sidecar serving process, per GetStatus", 800_000, at_rest_per_call=50_000),
        ]
    )
    [run] = [line for line in text.splitlines() if "per Run" in line]
    assert run.split()[-2:] == ["1.000", "0.850"]


@pytest.mark.slow
# Two servers under valgrind, each about fifty times slower: well past the default 60 s on a
# busy machine.
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
async def test_counts_every_process_under_callgrind() -> None:
    counts = await measure(calls=10, concurrency=2)
    assert [c.name for c in counts] == [
        "echo server, per call",
        "sidecar serving process, per Run",
        "sidecar engine child, per Run (its first turn)",
        "sidecar serving process, per GetStatus",
        "sidecar serving process, per Signal",
        "sidecar serving process at rest, per second",
    ]
    assert all(c.instructions_per_call > 10_000 for c in counts)
