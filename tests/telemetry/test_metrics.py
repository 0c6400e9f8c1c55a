"""Metric values after a known workload, read with an InMemoryMetricReader."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.asyncio import Redis

from okra_sidecar.telemetry import note_policy_denial
from tests.helpers import (
    eventually,
    expect_rpc_error,
    make_settings,
    running_sidecar,
    value,
    wait_for_status,
)
from tests.telemetry.support import RPC, memory_telemetry, metric_points, with_telemetry

DOCS = Path(__file__).parents[2] / "docs" / "observability.md"
STEPS = "tests.steps.1.0.0"
APPROVAL = "tests.approval.1.0.0"


def _by_workflow(points: list[object]) -> dict[str, int]:
    return {p.attributes["okra.workflow.id"]: p.value for p in points}  # type: ignore[attr-defined]


async def test_counters_histograms_and_gauges_after_a_known_workload(
    redis: Redis, redis_url: str
) -> None:
    reader = InMemoryMetricReader()
    settings = with_telemetry(make_settings(redis_url), gauge_interval_s=0.05)
    telemetry = memory_telemetry(None, instance_id="m", reader=reader, settings=settings.telemetry)
    async with running_sidecar(settings, telemetry=telemetry) as (_, stub):
        done = [
            (await stub.Run(pb.RunRequest(workflow_id=STEPS, input=value({"n": i})))).instance_id
            for i in range(3)
        ]
        waiting = [
            (
                await stub.Run(pb.RunRequest(workflow_id=APPROVAL, input=value({"amount": 1})))
            ).instance_id
            for _ in range(3)
        ]
        failed = await stub.Run(
            pb.RunRequest(workflow_id="tests.order.1.0.0", input=value({"kind": "box"}))
        )
        for instance_id in done:
            await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        for instance_id in waiting:
            await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        await wait_for_status(stub, failed.instance_id, {pb.WORKFLOW_STATUS_FAILED})
        await stub.Signal(pb.SignalRequest(instance_id=waiting[0], signal="approve"))
        nudge = pb.SignalRequest(instance_id=waiting[2], signal="nudge", signal_id="n-1")
        await stub.Signal(nudge)
        assert (await stub.Signal(nudge)).duplicate
        await stub.Cancel(pb.CancelRequest(instance_id=waiting[1], reason="test"))
        await expect_rpc_error(
            stub.GetStatus(pb.GetStatusRequest(instance_id="nope")),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        await wait_for_status(stub, waiting[0], {pb.WORKFLOW_STATUS_COMPLETED})

        async def sampled_after_the_last_change() -> bool:
            data = reader.get_metrics_data()
            return [p.value for p in metric_points(data, "okra.instances.waiting")] == [1] and [
                p.value for p in metric_points(data, "okra.instances.running")
            ] == [0]

        await eventually(sampled_after_the_last_change, what="a gauge sample of the end state")
        data = reader.get_metrics_data()

    assert _by_workflow(metric_points(data, "okra.instances.started")) == {
        STEPS: 3,
        APPROVAL: 3,
        "tests.order.1.0.0": 1,
    }
    assert _by_workflow(metric_points(data, "okra.instances.completed")) == {STEPS: 3, APPROVAL: 1}
    assert _by_workflow(metric_points(data, "okra.instances.failed")) == {"tests.order.1.0.0": 1}
    assert _by_workflow(metric_points(data, "okra.instances.cancelled")) == {APPROVAL: 1}
    assert [p.value for p in metric_points(data, "okra.signals.delivered")] == [2]
    (still_waiting,) = metric_points(data, "okra.instances.waiting")
    assert still_waiting.value == 1
    (running,) = metric_points(data, "okra.instances.running")
    assert running.value == 0
    assert {p.value for p in metric_points(data, "okra.work.backlog")} == {0}
    assert metric_points(data, "okra.work.oldest_pending_age") == []

    durations = {
        (p.attributes["rpc.method"], p.attributes["rpc.grpc.status_code"]): p
        for p in metric_points(data, "rpc.server.duration")
    }
    assert durations["Run", 0].count == 7
    assert durations["Signal", 0].count == 3
    assert durations["Cancel", 0].count == 1
    assert durations["GetStatus", grpc.StatusCode.INVALID_ARGUMENT.value[0]].count == 1
    assert durations["Run", 0].attributes["rpc.service"] == RPC
    assert durations["Run", 0].sum > 0
    turns = metric_points(data, "okra.turn.duration")
    assert sum(p.count for p in turns) >= 8  # 7 first turns and the resumed one


async def test_backlog_and_oldest_pending_age_while_no_engine_reads(
    redis: Redis, redis_url: str
) -> None:
    reader = InMemoryMetricReader()
    settings = with_telemetry(make_settings(redis_url), gauge_interval_s=0.05)
    telemetry = memory_telemetry(None, instance_id="m", reader=reader, settings=settings.telemetry)
    async with running_sidecar(settings, telemetry=telemetry) as (sidecar, stub):
        await sidecar.runner.stop()
        before_first = time.time()
        for _ in range(4):
            await stub.Run(pb.RunRequest(workflow_id=STEPS, input=value({"n": 1})))

        async def sampled() -> bool:
            data = reader.get_metrics_data()
            backlog = sum(p.value for p in metric_points(data, "okra.work.backlog"))
            return backlog == 4 and bool(metric_points(data, "okra.work.oldest_pending_age"))

        await eventually(sampled, what="a gauge sample of the four pending Runs")
        data = reader.get_metrics_data()
        since_first = time.time() - before_first
    assert sum(p.value for p in metric_points(data, "okra.work.backlog")) == 4
    ages = [p.value for p in metric_points(data, "okra.work.oldest_pending_age")]
    # In seconds, and no older than the first Run (the stream ids have millisecond steps).
    assert ages and all(0.0 < age <= since_first + 0.01 for age in ages), (ages, since_first)


async def test_timer_lag_is_recorded_for_a_due_wait(redis: Redis, redis_url: str) -> None:
    reader = InMemoryMetricReader()
    telemetry = memory_telemetry(None, instance_id="m", reader=reader)
    async with running_sidecar(make_settings(redis_url), telemetry=telemetry) as (_, stub):
        started = time.monotonic()
        reply = await stub.Run(pb.RunRequest(workflow_id="tests.timer.1.0.0"))
        await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        elapsed = time.monotonic() - started
        data = reader.get_metrics_data()
    (lag,) = metric_points(data, "okra.timer.lag")
    assert lag.count == 1
    # In seconds: a timer cannot be later than the whole run took.
    assert 0.0 <= lag.sum <= elapsed


def test_policy_denials_are_counted_by_policy_and_method() -> None:
    reader = InMemoryMetricReader()
    telemetry = memory_telemetry(None, instance_id="m", reader=reader)
    telemetry.metrics.policy_denied("policy.workflow.run.allowed", "Run")
    telemetry.metrics.policy_denied("policy.workflow.run.allowed", "Run")
    note_policy_denial("outside a call: only a span event, if any")
    (point,) = metric_points(reader.get_metrics_data(), "okra.policy.denials")
    assert point.value == 2
    assert dict(point.attributes) == {
        "okra.policy": "policy.workflow.run.allowed",
        "rpc.method": "Run",
    }


async def test_prometheus_scrape_endpoint_on_the_admin_port(redis: Redis, redis_url: str) -> None:
    settings = with_telemetry(
        make_settings(redis_url), admin_listen="127.0.0.1:0", gauge_interval_s=0.05
    )
    async with running_sidecar(settings) as (sidecar, stub):
        assert sidecar.admin is not None
        reply = await stub.Run(pb.RunRequest(workflow_id=STEPS, input=value({"n": 1})))
        await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        await sidecar.runner.stop()
        await stub.Run(pb.RunRequest(workflow_id=STEPS, input=value({"n": 1})))  # a backlog
        # Every metric the queries in docs/observability.md use is served under that name
        # (the gauges once their first sample is taken).
        queries = DOCS.read_text().split("```promql")[1].split("```")[0]
        names = set(re.findall(r"\b(okra_\w+|rpc_\w+)\b", queries))
        names -= {"okra_workflow_id", "okra_partition", "rpc_method"}  # labels
        assert names
        url = f"http://127.0.0.1:{sidecar.admin.port}"
        scraped: list[str] = [""]

        async def serves_every_name() -> bool:
            scraped[0] = await asyncio.to_thread(_fetch, f"{url}/metrics")
            return all(f"\n{name}" in scraped[0] for name in names)

        await eventually(serves_every_name, what=f"a scrape with {sorted(names)}")
        missing = await asyncio.to_thread(_fetch, f"{url}/other")
    body = scraped[0]
    assert 'okra_instances_started_total{okra_workflow_id="tests.steps.1.0.0"' in body
    assert 'service_name="okra-sidecar"' in body  # target_info carries the resource
    assert missing.startswith("404")


def _fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.reason}"


async def test_no_admin_port_and_no_interceptor_by_default(redis: Redis, redis_url: str) -> None:
    async with running_sidecar(make_settings(redis_url)) as (sidecar, _):
        assert sidecar.admin is None
        assert sidecar.gauge_task is None
        assert not sidecar.telemetry.active
