"""`python -m bench.otlp_sink --listen HOST:PORT`: a local OTLP/gRPC receiver that counts and
drops what it is sent, standing in for a collector when the bench measures tracing."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class SinkCounts:
    """Spans and export calls received so far."""

    def __init__(self) -> None:
        self.spans = 0
        self.exports = 0


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, counts: SinkCounts) -> None:
        self._counts = counts

    async def Export(  # noqa: N802 - the proto's rpc name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._counts.exports += 1
        self._counts.spans += sum(
            len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    async def Export(  # noqa: N802 - the proto's rpc name
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        return metrics_service_pb2.ExportMetricsServiceResponse()


async def serve(listen: str) -> None:
    counts = SinkCounts()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    # The generated registration functions carry no annotations.
    add_traces: Any = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
    add_metrics: Any = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
    add_traces(_Traces(counts), server)
    add_metrics(_Metrics(), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"otlp sink listening on {listen}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(None)
    print(f"otlp sink received {counts.spans} spans in {counts.exports} exports", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_sink")
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
