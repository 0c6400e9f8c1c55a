"""EngineRunner's work loop on Redis: a short batch makes it linger before the next read.

Through a real sidecar: Run puts work on the streams, the runner reads it, GetStatus shows
whether a turn has run.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from tests.helpers import FAST_ENGINE, Stub, make_settings, running_sidecar, value, wait_for_status

LONG_LINGER_MS = 60_000  # far longer than the test: a lingering runner reads nothing more
DONE = {pb.WORKFLOW_STATUS_COMPLETED}


async def run_steps(stub: Stub) -> str:
    reply = await stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1})))
    return reply.instance_id


@pytest.mark.parametrize(
    ("concurrency", "linger_ms", "lingers"),
    [(4, LONG_LINGER_MS, True), (1, LONG_LINGER_MS, False), (4, 0, False)],
    ids=["short batch", "full batch", "linger off"],
)
async def test_the_next_read_waits_only_after_a_short_batch(
    redis: Redis, redis_url: str, concurrency: int, linger_ms: int, lingers: bool
) -> None:
    engine = replace(FAST_ENGINE, concurrency=concurrency, read_linger_ms=linger_ms)
    async with running_sidecar(make_settings(redis_url, engine=engine)) as (_, stub):
        # Reads that found nothing (the runner has been idle a few read_block_ms) never
        # linger: the first Run is served.
        await asyncio.sleep(3 * FAST_ENGINE.read_block_ms / 1000)
        first = await run_steps(stub)
        await wait_for_status(stub, first, DONE)
        # That read found one item: a short batch when four fit, a full one when one does.
        second = await run_steps(stub)
        if not lingers:
            await wait_for_status(stub, second, DONE)
            return
        # A runner that did not linger would serve it within a few milliseconds; this one
        # must leave it alone for the whole minute, so a second's look cannot race it.
        await asyncio.sleep(1.0)
        status = await stub.GetStatus(pb.GetStatusRequest(instance_id=second))
        assert status.status == pb.WORKFLOW_STATUS_PENDING
