"""`python -m fuzz [--count N] [--seed S] [--redis-url URL]` (what `make fuzz` runs)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from fuzz.run import run_fuzz

# The long profile; CI's short one (2,000) runs in the test suite (tests/test_fuzz.py).
LONG_COUNT = 10_000


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("--count", type=int, default=LONG_COUNT, help="requests to send")
    parser.add_argument("--seed", type=int, default=1, help="the same seed sends the same ones")
    parser.add_argument("--redis-url", help="a Redis for the sidecar (default: embedded)")
    args = parser.parse_args()
    report = asyncio.run(run_fuzz(args.count, seed=args.seed, redis_url=args.redis_url))
    print(report.table())
    return 1 if report.failures else 0


sys.exit(main())
