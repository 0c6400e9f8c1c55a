"""A tiny OTLP receiver for tests: the TraceService and MetricsService over gRPC, and
`POST /v1/traces` over HTTP, keeping what they receive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass
class Received:
    """Everything the receiver was sent, in arrival order."""

    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    # The seconds each trace export had left before its deadline, as it arrived.
    deadlines: list[float | None] = field(default_factory=list)
    # While set and not yet open, trace exports wait for it: an export that does not end.
    gate: asyncio.Event | None = None

    def spans(self) -> list[tuple[dict[str, Any], trace_pb2.Span]]:
        """(resource attributes, span) for every span received."""
        found: list[tuple[dict[str, Any], trace_pb2.Span]] = []
        for request in self.traces:
            for resource_spans in request.resource_spans:
                resource = {a.key: _any_value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope_spans.spans)
        return found

    def metric_names(self) -> set[str]:
        return {
            metric.name
            for request in self.metrics
            for resource_metrics in request.resource_metrics
            for scope in resource_metrics.scope_metrics
            for metric in scope.metrics
        }


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def span_attributes(span: trace_pb2.Span) -> dict[str, Any]:
    return {a.key: _any_value(a.value) for a in span.attributes}


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    async def Export(  # noqa: N802 - the proto's rpc name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._received.deadlines.append(context.time_remaining())
        if self._received.gate is not None:
            await self._received.gate.wait()
        self._received.traces.append(request)
        self._received.headers.append({k: str(v) for k, v in context.invocation_metadata()})
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    async def Export(  # noqa: N802 - the proto's rpc name
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._received.metrics.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@asynccontextmanager
async def grpc_receiver() -> AsyncIterator[tuple[str, Received]]:
    """An OTLP/gRPC receiver on a free loopback port: (endpoint URL, what it received)."""
    received = Received()
    server = grpc.aio.server()
    # The generated registration functions carry no annotations.
    add_traces: Any = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
    add_metrics: Any = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
    add_traces(_TraceService(received), server)
    add_metrics(_MetricsService(received), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await server.stop(None)


@asynccontextmanager
async def http_receiver() -> AsyncIterator[tuple[str, Received]]:
    """An OTLP/HTTP (protobuf) receiver for traces: (base URL, what it received)."""
    received = Received()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in head[1:])
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if head[0].split(" ")[1] == "/v1/traces":
                received.traces.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                received.headers.append(headers)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                + f"Content-Length: {len(reply)}\r\n\r\n".encode()
                + reply
            )
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.close()
