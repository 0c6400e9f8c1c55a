"""End to end: a sidecar configured by settings alone sends its spans over OTLP to a
receiver the test runs, over gRPC and over HTTP."""

from __future__ import annotations

from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from tests.helpers import make_settings, running_sidecar, value, wait_for_status
from tests.telemetry.receiver import grpc_receiver, http_receiver, span_attributes
from tests.telemetry.support import RPC, new_trace, traceparent, with_telemetry


async def test_spans_and_metrics_reach_an_otlp_grpc_receiver(redis: Redis, redis_url: str) -> None:
    trace_id, span_id = new_trace()
    async with grpc_receiver() as (endpoint, received):
        settings = with_telemetry(
            make_settings(redis_url),
            traces_exporter="otlp",
            metrics_exporter="otlp",
            otlp_protocol="grpc",
            otlp_endpoint=endpoint,
            service_namespace="shop",
            resource_attributes=(("deployment.environment.name", "test"),),
        )
        async with running_sidecar(settings) as (_, stub):
            reply = await stub.Run(
                pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1})),
                metadata=(("traceparent", traceparent(trace_id, span_id)),),
            )
            await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        # Stopping the sidecar flushed its batch of spans and its metrics.
        spans = received.spans()

    by_name = {span.name: (resource, span) for resource, span in spans}
    resource, run = by_name[f"{RPC}/Run"]
    assert run.trace_id == trace_id.to_bytes(16, "big")
    assert run.parent_span_id == span_id.to_bytes(8, "big")
    assert span_attributes(run)["okra.instance.id"] == reply.instance_id
    assert resource["service.name"] == "okra-sidecar"
    assert resource["service.namespace"] == "shop"
    assert resource["service.version"]
    assert resource["service.instance.id"]
    assert resource["deployment.environment.name"] == "test"
    _, turn = by_name["AdvanceWorkflow:tests.steps.1.0.0"]
    assert turn.trace_id == run.trace_id and turn.parent_span_id == run.span_id
    assert {"RunTask:first", "RunTask:second", "RunTask:third"} <= set(by_name)
    assert {"okra.instances.started", "rpc.server.duration"} <= received.metric_names()


async def test_spans_reach_an_otlp_http_receiver(redis: Redis, redis_url: str) -> None:
    async with http_receiver() as (endpoint, received):
        settings = with_telemetry(
            make_settings(redis_url),
            traces_exporter="otlp",
            otlp_protocol="http/protobuf",
            otlp_endpoint=endpoint,
        )
        async with running_sidecar(settings) as (_, stub):
            reply = await stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0"))
            await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        names = {span.name for _, span in received.spans()}
    assert f"{RPC}/Run" in names
    assert "AdvanceWorkflow:tests.steps.1.0.0" in names
    assert received.headers[0]["content-type"] == "application/x-protobuf"
