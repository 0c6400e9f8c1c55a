"""settle_heap: start-up objects frozen out of the collector, gen0 collected less often."""

from __future__ import annotations

import subprocess
import sys

from okra_sidecar.heap import GEN0_THRESHOLD


def test_settle_heap_freezes_start_up_objects_and_raises_the_gen0_threshold() -> None:
    # In a child process: freezing this one would change the collector for the whole test run.
    script = (
        "import gc\n"
        "from okra_sidecar.heap import settle_heap\n"
        "before = gc.get_threshold()\n"
        "settle_heap()\n"
        "after = gc.get_threshold()\n"
        "print(gc.get_freeze_count() > 1000, after[0], after[1:] == before[1:])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["True", str(GEN0_THRESHOLD), "True"]
