"""An engine process or sandbox worker that jq aborts dumps no core (engine/runtime/memory.py)."""

from __future__ import annotations

import subprocess
import sys

PROBE = (
    "import resource\n"
    "from okra_sidecar.engine.runtime.memory import refuse_core_dumps\n"
    "refuse_core_dumps()\n"
    "print(*resource.getrlimit(resource.RLIMIT_CORE))\n"
)


def test_refuse_core_dumps_sets_both_limits_to_zero() -> None:
    # Run with cores allowed up to the hard limit first, so that the call is what lowers them.
    allow = "import resource\nsoft, hard = resource.getrlimit(resource.RLIMIT_CORE)\n"
    allow += "resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))\n"
    done = subprocess.run(
        [sys.executable, "-c", allow + PROBE], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "0"]
