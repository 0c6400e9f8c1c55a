"""Smoke test for bench.awaiting: tiny counts against a real sidecar process, no speed asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.awaiting import Observed, floor_line, measure, report

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
async def test_the_awaiting_bench_observes_completions_and_holds_streams(tmp_path: Path) -> None:
    observed, held = await measure(count=5, rounds=1, streams=20, w1=10, work_dir=tmp_path)
    assert {style: len(v) for style, v in observed.latencies_s.items()} == {
        "AwaitInstance": 5,
        "GetStatus every 100 ms": 5,
        "AwaitInstance, then Signal": 5,
    }
    assert all(seconds > 0 for values in observed.latencies_s.values() for seconds in values)
    # Each AwaitInstance caller made its Signal and (at least) one AwaitInstance.
    assert observed.calls["AwaitInstance"] >= 10
    # Every caller's parts were timed, and each round's completion rate.
    for callers in observed.callers.values():
        assert all(c.signal_s > 0 and c.completed_at >= c.sent_at - 1 for c in callers)
    assert len(observed.rates) == 2 and min(observed.rates) > 0
    # 20 streams on fresh connections and 20 more on used ones, held at once.
    assert held is not None and held.count == 40
    assert {kind: h.count for kind, h in held.held.items()} == {"fresh": 20, "used": 20}
    assert all(h.before > 0 and h.after > 0 for h in held.held.values())
    # The same streams were held on the bare grpc.aio server, to show the transport's part.
    assert {kind: h.count for kind, h in held.bare.items()} == {"fresh": 20, "used": 20}
    # The same burst on the bare echo server, once per round: the transport's own floor.
    assert len(observed.floor_s) == 5 and all(seconds > 0 for seconds in observed.floor_s)
    assert observed.signal_bytes  # the floor's payload is a Signal request as W3 sends it
    text = report(observed, held)
    assert "bare grpc.aio echo server, 5 callers at once, 2 calls each" in text
    assert "20 WatchInstance streams on fresh connections" in text
    assert "20 WatchInstance streams on used connections" in text
    assert "W1 Run beside streams" in text
    assert "completions/s" in text and "commit -> seen" in text
    assert "bare grpc.aio server" in text and "bytes per stream" in text


def test_the_floor_line_says_how_many_callers_were_in_flight() -> None:
    at_once = Observed(signals=4, in_flight=4, floor_s=[0.010, 0.020, 0.030, 0.040])
    assert "4 callers at once" in floor_line(at_once)
    steady = Observed(signals=4, in_flight=2, floor_s=[0.010, 0.020, 0.030, 0.040])
    line = floor_line(steady)
    assert "4 callers, 2 at a time" in line and "p99 40.0 ms" in line
