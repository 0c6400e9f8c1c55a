"""bench.engine_turns: the engine child's instructions per instance (smoke test; no assertion
on the figures)."""

from __future__ import annotations

import shutil

import pytest

from bench.engine_turns import main, measure


def test_without_valgrind_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    assert main(["--count", "1"]) == 2


@pytest.mark.slow
# The sidecar under valgrind is about fifty times slower: well past the default 60 s.
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
async def test_counts_the_engine_child_through_w3s_two_turns() -> None:
    # W3's: had the Signals not been sent, the wait for every instance to end would not end.
    assert await measure("approve", 3, warm_up=2) > 0
