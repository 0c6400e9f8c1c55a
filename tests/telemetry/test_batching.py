"""The span batch processor honours OTEL_BSP_*, against a real sidecar and an OTLP receiver."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.config import Settings
from tests.helpers import Stub, make_settings, running_sidecar
from tests.telemetry.receiver import Received, grpc_receiver

# Longer than any test: spans leave only when a batch fills, a flush asks, or the sidecar stops.
NEVER_MS = "600000"


def traced_settings(redis_url: str, endpoint: str, **bsp: str) -> Settings:
    """The test sidecar, with telemetry as these OTEL_* variables configure it."""
    environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    environ.update({f"OTEL_BSP_{name.upper()}": text for name, text in bsp.items()})
    loaded = Settings.load(flags={}, environ=environ)
    return replace(make_settings(redis_url), telemetry=loaded.telemetry)


async def calls(stub: Stub, count: int) -> None:
    """`count` rpcs, each one server span."""
    for _ in range(count):
        await stub.ListWorkflows(pb.ListWorkflowsRequest())


def per_export(received: Received) -> list[int]:
    return [
        sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        for request in received.traces
    ]


async def until(check: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        assert loop.time() < deadline, "still false after the deadline"
        await asyncio.sleep(0.02)


async def test_schedule_delay(redis: Redis, redis_url: str) -> None:
    async with grpc_receiver() as (endpoint, received):
        settings = traced_settings(redis_url, endpoint, schedule_delay=NEVER_MS)
        async with running_sidecar(settings) as (_, stub):
            await calls(stub, 3)
            # Twice the sidecar's default delay: with it the spans would have gone by now.
            await asyncio.sleep(2.0)
            assert received.traces == []
        assert sum(per_export(received)) == 3, "stopping sent what the delay held back"


async def test_max_export_batch_size(redis: Redis, redis_url: str) -> None:
    async with grpc_receiver() as (endpoint, received):
        settings = traced_settings(
            redis_url, endpoint, schedule_delay=NEVER_MS, max_export_batch_size="2"
        )
        async with running_sidecar(settings) as (_, stub):
            await calls(stub, 5)
            # Full batches leave at once, whatever the delay.
            await until(lambda: sum(per_export(received)) >= 4)
        assert per_export(received) == [2, 2, 1]


async def test_max_queue_size(redis: Redis, redis_url: str) -> None:
    async with grpc_receiver() as (endpoint, received):
        received.gate = asyncio.Event()
        settings = traced_settings(
            redis_url,
            endpoint,
            schedule_delay=NEVER_MS,
            max_queue_size="3",
            max_export_batch_size="3",
        )
        async with running_sidecar(settings) as (_, stub):
            await calls(stub, 3)
            # The first batch is being exported and does not end: the next 3 fill the queue
            # and the 4 after them are dropped.
            await until(lambda: len(received.deadlines) == 1)
            await calls(stub, 7)
            received.gate.set()
        assert per_export(received) == [3, 3]


async def test_export_timeout(redis: Redis, redis_url: str) -> None:
    async with grpc_receiver() as (endpoint, received):
        settings = traced_settings(redis_url, endpoint, export_timeout="500")
        async with running_sidecar(settings) as (_, stub):
            await calls(stub, 1)
        assert received.deadlines, "the span was exported"
        # The exporter's own timeout is 10 s; the variable bounds each export's deadline. grpc
        # rounds the timeout it sends up (0.5006 s seen in CI), hence the 10 ms of slack.
        assert all(left is not None and left <= 0.51 for left in received.deadlines), (
            received.deadlines
        )
