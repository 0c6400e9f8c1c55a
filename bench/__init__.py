"""Benchmarks for okra-sidecar: the real sidecar in its own process, against a grpc.aio echo."""

from bench.cli import Plan, main, run_bench
from bench.load import Result, drive
from bench.workloads import (
    Client,
    measure_completion,
    measure_echo,
    measure_get_status,
    measure_run,
    measure_signal,
)

__all__ = [
    "Client",
    "Plan",
    "Result",
    "drive",
    "main",
    "measure_completion",
    "measure_echo",
    "measure_get_status",
    "measure_run",
    "measure_signal",
    "run_bench",
]
