"""`python -m okra_sidecar.ctk [SPEC_DIR]`: run the CTK through a real sidecar.

The spec folder is the argument, else OKRA_SPEC_DIR, else `../shared/serverless-workflow`
beside the working directory. Prints one line per scenario and `N passed, M failed`; exits 1
when any failed, 2 when the kit is not found. OKRA_REDIS_URL uses that Redis (each scenario
under a key prefix of its own, removed afterwards) instead of an embedded one.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from okra_sidecar.ctk.runner import run_features

SPEC_DIR_ENV = "OKRA_SPEC_DIR"


def spec_dir(argv: list[str]) -> Path:
    if argv:
        return Path(argv[0])
    configured = os.environ.get(SPEC_DIR_ENV)
    if configured:
        return Path(configured)
    return Path.cwd().parent / "shared" / "serverless-workflow"


def main(argv: list[str] | None = None) -> int:
    folder = spec_dir(sys.argv[1:] if argv is None else argv)
    if not (folder / "ctk" / "features").is_dir():
        print(f"CTK features not found in {folder}; pass the spec folder or set {SPEC_DIR_ENV}")
        return 2
    results = asyncio.run(run_features(folder, redis_url=os.environ.get("OKRA_REDIS_URL")))
    for result in results:
        mark = "PASS" if result.passed else "FAIL"
        print(f"{mark} {result.scenario_id}" + ("" if result.passed else f": {result.reason}"))
    passed = sum(r.passed for r in results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
