"""Smoke tests for the benchmark code: tiny counts, no assertion on speed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc
from redis.asyncio import Redis

from bench.cli import Plan, format_round, parse_only, run_bench
from bench.cpu import CpuMeter, CpuShare
from bench.echo import build_echo_server
from bench.load import Result, combine, drive, percentile
from bench.processes import WORKFLOWS_DIR
from bench.report import format_medians, format_ratios, format_table, rounds_json, to_json
from bench.workloads import (
    Client,
    measure_completion,
    measure_echo,
    measure_get_status,
    measure_run,
    measure_signal,
)
from tests.helpers import make_settings, running_sidecar


@pytest_asyncio.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    """The `sidecar` fixture's setup, with the bench workflows instead of the test ones."""
    async with running_sidecar(make_settings(redis_url, workflows=WORKFLOWS_DIR)) as (sidecar, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            yield Client(stub=pb_grpc.WorkflowHostAPIStub(channel), concurrency=3)


def check_row(row: Result, name: str, count: int) -> None:
    assert (row.name, row.count, len(row.latencies_ms)) == (name, count, count)
    assert row.elapsed_s > 0 and row.rate > 0
    assert 0 <= row.p50_ms <= row.p99_ms


async def test_sidecar_workloads_measure(client: Client) -> None:
    check_row(await measure_run(client, 4), "W1 Run", 4)
    row, ids = await measure_completion(client, 5)
    check_row(row, "W2 Run->completed", 5)
    assert len(set(ids)) == 5
    rpc, completion = await measure_signal(client, 3)
    check_row(rpc, "W3 Signal rpc", 3)
    check_row(completion, "W3 Signal->completed", 3)
    check_row(await measure_get_status(client, 7, ids), "W4 GetStatus", 7)


async def test_get_status_makes_its_own_instances(client: Client) -> None:
    check_row(await measure_get_status(client, 3), "W4 GetStatus", 3)


async def test_echo_baseline_measures() -> None:

    server, port = build_echo_server("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            row = await measure_echo(
                channel,
                count=6,
                concurrency=2,
                meter=CpuMeter(),
                payload=b"x",
            )
    finally:
        await server.stop(None)
    check_row(row, "echo (grpc.aio)", 6)
    assert row.cpu is not None and row.cpu.server is None


def test_report_shows_ratios_to_echo() -> None:
    results = [
        Result("echo (grpc.aio)", 100, 1.0, [1.0] * 100),
        Result("W1 Run", 50, 1.0, [2.0] * 50),
        Result("W4 GetStatus", 80, 1.0, [1.5] * 80),
    ]
    table = format_table(results)
    assert "W1 Run" in table and "50.0%" in table and "80.0%" in table
    assert format_ratios(results).splitlines() == [
        "W1 Run / echo = 50.0% (target 40%)",
        "W4 GetStatus / echo = 80.0% (target 60%)",
    ]
    document = json.loads(to_json(results, {"concurrency": 64}))
    assert [r["to_echo"] for r in document["ratios"]] == [0.5, 0.8]


def test_a_row_measured_between_two_echo_runs_divides_by_their_mean() -> None:
    results = [
        Result("echo (grpc.aio)", 100, 1.0, [1.0] * 100),
        Result("W1 Run", 50, 1.0, [2.0] * 50, baseline_rate=125.0),
        Result("W4 GetStatus", 80, 1.0, [1.5] * 80),
    ]
    assert format_ratios(results).splitlines() == [
        "W1 Run / echo = 40.0% (target 40%)",
        "W4 GetStatus / echo = 80.0% (target 60%)",
    ]
    document = json.loads(to_json(results, {}))
    assert [r["echo_around_per_s"] for r in document["results"]] == [None, 125.0, None]


def test_combine_adds_calls_and_time_and_weights_cpu_by_time() -> None:
    first = Result("echo (grpc.aio)", 100, 1.0, [1.0] * 100, CpuShare(50.0, 100.0, None), 1)
    second = Result("echo (grpc.aio)", 300, 3.0, [2.0] * 300, CpuShare(90.0, 60.0, None), 2)
    row = combine([first, second])
    assert (row.count, row.elapsed_s, row.rate, row.errors) == (400, 4.0, 100.0, 3)
    assert row.p50_ms == 2.0
    assert row.cpu == CpuShare(client=80.0, server=70.0, redis=None, engine=None)


def test_rounds_report_the_median_ratio_judged_against_the_target() -> None:
    def round_of(run_rate: int) -> list[Result]:
        return [
            Result("echo (grpc.aio)", 100, 1.0, [1.0] * 100),
            Result("W1 Run", run_rate, 1.0, [2.0] * run_rate),
        ]

    rounds = [round_of(30), round_of(45), round_of(41)]
    assert format_medians(rounds).splitlines() == [
        "Medians over 3 rounds:",
        "W1 Run / echo = 41.0% (target 40%); rounds: 30.0%, 45.0%, 41.0%",
    ]
    document = json.loads(rounds_json(rounds, {"concurrency": 64}))
    assert len(document["rounds"]) == 3 and document["median_ratios"] == {"W1 Run": 0.41}


def test_the_cluster_round_is_compared_with_the_single_primary_one_by_w2() -> None:
    def round_of(w2_rate: int) -> list[Result]:
        return [
            Result("echo (grpc.aio)", 100, 1.0, [1.0] * 100),
            Result("W1 Run", 50, 1.0, [2.0] * 50),
            Result("W2 Run->completed", w2_rate, 1.0, [3.0] * w2_rate),
        ]

    single, cluster = [round_of(100), round_of(100)], [round_of(80), round_of(60)]
    lines = format_medians(single, cluster).splitlines()
    assert lines[-2:] == [
        "W1 Run / echo on the Cluster = 50.0%; rounds: 50.0%, 50.0%",
        "W2 Run->completed on the Cluster / single primary = 70.0% (target 70%); "
        "rounds: 80.0%, 60.0%",
    ]
    document = json.loads(rounds_json(single, {}, cluster))
    assert document["median_ratios"]["cluster_w2_to_single"] == 0.7
    assert [r["cluster"]["w2_to_single"] for r in document["rounds"]] == [0.8, 0.6]
    one = format_round(single[0], cluster[1], Plan(counts={}, cluster_masters=3))
    assert "Redis Cluster (3 masters):" in one
    assert one.rstrip().endswith("single primary = 60.0% (target 70%, 10.0 points under)")


def test_a_target_not_reached_is_a_figure_beside_its_target() -> None:
    rounds = [
        [Result("echo (grpc.aio)", 100, 1.0, [1.0] * 100), Result("W1 Run", 35, 1.0, [2.0] * 35)]
    ]
    assert format_medians(rounds).splitlines()[1] == (
        "W1 Run / echo = 35.0% (target 40%, 5.0 points under); rounds: 35.0%"
    )
    assert format_ratios(rounds[0]) == "W1 Run / echo = 35.0% (target 40%, 5.0 points under)"


async def test_drive_retries_unavailable_and_counts_it() -> None:
    failures = {2: 2}

    async def call(index: int) -> int:
        if failures.get(index, 0):
            failures[index] -= 1
            empty = grpc.aio.Metadata()
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, empty, empty, "busy")
        return index * 10

    timing = await drive(call, count=4, concurrency=2)
    assert timing.replies == [0, 10, 20, 30]
    assert timing.errors == {"UNAVAILABLE": 2}


def test_percentile_and_selection() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([float(v) for v in range(1, 101)], 99) == 99.0
    assert parse_only("w4") == ["echo", "W4"]
    assert parse_only("W2,W3") == ["W2", "W3"]


@pytest.mark.slow
async def test_bench_runs_its_own_processes() -> None:
    plan = Plan(counts={"echo": 3, "W1": 3, "W4": 3}, concurrency=2)
    results = await run_bench(plan)
    assert [r.name for r in results] == ["echo (grpc.aio)", "W1 Run", "W4 GetStatus"]
    # The echo server ran beside the sidecar: measured before and after W1 and W4 (half the
    # count each time), and each ratio row carries the mean of its two.
    echo, run, status = results
    assert echo.count == 4  # 3 // 2 calls, four times
    assert run.baseline_rate is not None and status.baseline_rate is not None


@pytest.mark.slow
async def test_bench_echo_alone() -> None:
    results = await run_bench(Plan(counts={"echo": 3}, concurrency=2))
    assert [(r.name, r.count) for r in results] == [("echo (grpc.aio)", 3)]
