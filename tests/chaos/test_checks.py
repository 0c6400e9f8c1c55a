"""The fault suite's checkers catch what they name: a lost, a stuck and a wrong instance."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest_asyncio
from okra_client import OkraClient
from redis.asyncio import Redis

from chaos.checks import check
from chaos.processes import WORKFLOWS_DIR
from chaos.workload import Started
from tests.helpers import make_settings, running_sidecar


@pytest_asyncio.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[OkraClient]:
    async with running_sidecar(make_settings(redis_url, workflows=WORKFLOWS_DIR)) as (sidecar, _):
        async with OkraClient(f"127.0.0.1:{sidecar.port}") as connected:
            yield connected


async def started(client: OkraClient, kind: str, n: int, key: str) -> Started:
    record = Started(kind=kind, n=n, key=key)
    record.instance_id = await client.run(f"chaos.{kind}.1.0.0", {"n": n, "key": key})
    record.acked_at = time.time()
    return record


async def test_a_clean_run_finds_nothing(client: OkraClient) -> None:
    steps = await started(client, "steps", 3, "a")
    timer = await started(client, "timer", 4, "b")
    findings = await check(
        client, [steps, timer], http_calls=Counter(), worker_runs=Counter(), faults=[], drain_s=20
    )
    assert findings.failures() == {}
    assert findings.acknowledged == 2 and len(findings.completion_s) == 2


async def test_lost_stuck_and_wrong_instances_are_counted(client: OkraClient) -> None:
    lost = Started(
        kind="steps", n=1, key="lost", instance_id="00000000-0000-4000-8000-000000000000"
    )
    # Never signalled: it waits for ever.
    stuck = await started(client, "signal", 2, "stuck")
    wrong = await started(client, "steps", 5, "wrong")
    wrong.n = 6  # the checker now expects another output than the instance gives
    never_called = await started(client, "http", 7, "uncalled")
    refused = Started(kind="steps", n=8, key="refused", refused="UNAVAILABLE: down")
    findings = await check(
        client,
        [lost, stuck, wrong, never_called, refused],
        http_calls=Counter(),
        worker_runs=Counter(),
        faults=[],
        drain_s=3,
    )
    failures = findings.failures()
    assert failures["acknowledged Runs lost"] == 1
    assert failures["instances stuck"] == 1
    assert failures["wrong outputs"] == 1
    assert failures["outside calls never made"] == 1
    assert findings.refused == 1 and findings.acknowledged == 4
