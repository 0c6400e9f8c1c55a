"""JSON log lines carry the trace, and streaming rpcs work behind the telemetry interceptor."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from redis.asyncio import Redis

from okra_sidecar.api.servicer import WorkflowHostServicer
from okra_sidecar.api.tracing import TelemetryInterceptor
from okra_sidecar.config import TelemetrySettings
from okra_sidecar.telemetry.logs import JsonFormatter, setup_logging
from okra_sidecar.telemetry.metrics import SidecarMetrics
from tests.helpers import expect_rpc_error, make_settings, running_sidecar
from tests.telemetry.support import RPC, memory_telemetry, new_trace, spans_named, traceparent


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("okra_sidecar")
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


async def test_a_log_line_inside_an_rpc_carries_its_trace(
    redis: Redis, redis_url: str, log_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: WorkflowHostServicer, request: object, context: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(WorkflowHostServicer, "GetStatus", broken)
    exporter = InMemorySpanExporter()
    trace_id, span_id = new_trace()
    async with running_sidecar(
        make_settings(redis_url), telemetry=memory_telemetry(exporter, instance_id="a")
    ) as (_, stub):
        await expect_rpc_error(
            stub.GetStatus(
                pb.GetStatusRequest(instance_id="0" * 8),
                metadata=(("traceparent", traceparent(trace_id, span_id)),),
            ),
            grpc.StatusCode.INTERNAL,
        )
    (span,) = spans_named(exporter.get_finished_spans(), f"{RPC}/GetStatus")
    entries = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    (entry,) = [e for e in entries if e["message"] == "unexpected error"]
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "okra_sidecar.api.status"
    assert entry["trace_id"] == f"{trace_id:032x}"
    assert entry["span_id"] == f"{span.context.span_id:016x}"
    assert "RuntimeError: disk on fire" in entry["exception"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 13
    assert [e.name for e in span.events] == ["exception"]


def test_json_lines_without_a_span_and_with_extra_fields() -> None:
    stream = io.StringIO()
    setup_logging(TelemetrySettings(log_level="DEBUG"), stream=stream)
    try:
        logging.getLogger("okra_sidecar.test").debug("hello %s", "you", extra={"instance": "x"})
        provider = TracerProvider()
        with provider.get_tracer("t").start_as_current_span("work") as span:
            logging.getLogger("okra_sidecar.test").info("inside")
        setup_logging(TelemetrySettings(log_format="text", log_level="WARNING"), stream=stream)
        logging.getLogger("okra_sidecar.test").info("dropped")
        logging.getLogger("okra_sidecar.test").warning("plain")
    finally:
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
    first, second, third = stream.getvalue().splitlines()
    outside = json.loads(first)
    assert outside["message"] == "hello you" and outside["instance"] == "x"
    assert "trace_id" not in outside and outside["level"] == "DEBUG"
    inside = json.loads(second)
    assert inside["span_id"] == f"{span.get_span_context().span_id:016x}"
    assert third.endswith("WARNING okra_sidecar.test: plain")


def test_auto_format_is_text_on_a_terminal_and_json_elsewhere() -> None:
    primary, secondary = os.openpty()
    terminal = open(secondary, "w", encoding="utf-8")
    pipe = io.StringIO()
    try:
        for stream in (terminal, pipe):
            setup_logging(TelemetrySettings(log_format="auto"), stream=stream)
            logging.getLogger("okra_sidecar.test").warning("listening")
        terminal.flush()
        shown = os.read(primary, 4096).decode()
    finally:
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
        terminal.close()
        os.close(primary)
    assert shown.rstrip().endswith("WARNING okra_sidecar.test: listening")
    assert not shown.startswith("{")
    assert json.loads(pipe.getvalue())["message"] == "listening"


async def _streaming_server(
    exporter: InMemorySpanExporter,
) -> tuple[grpc.aio.Server, int, health_aio.HealthServicer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    interceptor = TelemetryInterceptor(
        tracer=provider.get_tracer("t"), metrics=SidecarMetrics(), skip_services=()
    )
    server = grpc.aio.server(interceptors=[interceptor])
    servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection([health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, servicer


async def test_streaming_rpcs_of_both_styles_work_behind_the_interceptor() -> None:
    exporter = InMemorySpanExporter()
    server, port, servicer = await _streaming_server(exporter)
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            # Watch writes with context.write(): the style a generator wrapper breaks.
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            second = await watch.read()
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            # Reflection is a bidirectional stream served by an async generator.
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = [
                s.name async for reply in replies for s in reply.list_services_response.service
            ]
            assert health.SERVICE_NAME in names
            check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.stop(None)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["grpc.health.v1.Health/Watch"].attributes is not None
    assert spans["grpc.health.v1.Health/Watch"].attributes["rpc.grpc.status_code"] == 1
    reflection_span = spans["grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"]
    assert reflection_span.attributes is not None
    assert reflection_span.attributes["rpc.grpc.status_code"] == 0
    assert "grpc.health.v1.Health/Check" in spans


async def test_health_and_reflection_work_on_a_traced_sidecar(redis: Redis, redis_url: str) -> None:
    exporter = InMemorySpanExporter()
    async with running_sidecar(
        make_settings(redis_url), telemetry=memory_telemetry(exporter, instance_id="a")
    ) as (sidecar, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = [
                s.name async for reply in replies for s in reply.list_services_response.service
            ]
    assert RPC in names
    # Probes and reflection are not traced: they would drown the traces.
    assert exporter.get_finished_spans() == ()
