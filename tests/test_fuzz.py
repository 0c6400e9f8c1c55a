"""The fuzzer's short profile (CI): 2,000 hostile requests across every rpc, none mishandled."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from redis.asyncio import Redis

from fuzz import METHODS, RequestGenerator, run_fuzz
from fuzz.run import admin_token

PROTOS = Path(__file__).parent.parent / "protos" / "okra"
SHORT_COUNT = 2000
SEED = 1  # fixed, so CI sends the same requests every time


def test_every_rpc_gets_cases_and_the_seed_fixes_them() -> None:
    # Every rpc the protos declare, the operator API's and the newest ones included.
    declared = {
        match[1]
        for proto in PROTOS.rglob("*.proto")
        for match in re.finditer(r"^\s*rpc\s+(\w+)\s*\(", proto.read_text(), re.MULTILINE)
    }
    assert {"AwaitInstance", "WatchInstance", "SignalWithStart", "Count", "Suspend"} <= declared
    assert sorted(method.name for method in METHODS) == sorted(declared)

    def cases(seed: int) -> list[tuple[str, bytes]]:
        generator = RequestGenerator(seed, instance_ids=["x"], admin_token=admin_token())
        return [(c.method.path, c.payload) for c in generator.cases(200)]

    assert cases(SEED) == cases(SEED) != cases(SEED + 1)
    assert {path for path, _ in cases(SEED)} == {m.path for m in METHODS}


@pytest.mark.timeout(600)
async def test_short_profile_finds_no_internal_unknown_crash_or_slow_call(
    redis: Redis, redis_url: str
) -> None:
    report = await run_fuzz(SHORT_COUNT, seed=SEED, redis_url=redis_url)
    print(report.table())
    assert report.count == SHORT_COUNT
    assert report.failures == []
    # The cases reach past decoding: every kind of answer a caller can get shows up.
    assert {"OK", "INVALID_ARGUMENT", "NOT_FOUND"} <= set(report.by_code)
