"""One trace from the caller through two sidecars: Run, engine turns, tasks and the Signal."""

from __future__ import annotations

from collections.abc import Sequence

from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis.asyncio import Redis

from tests.helpers import KEYS, make_settings, running_sidecar, value, wait_for_status
from tests.telemetry.support import (
    RPC,
    memory_telemetry,
    new_trace,
    spans_named,
    traceparent,
    wait_for_spans,
)

APPROVAL = "tests.approval.1.0.0"
TURN = f"AdvanceWorkflow:{APPROVAL}"


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _instance_of(span: ReadableSpan) -> object:
    return span.resource.attributes["service.instance.id"]


def _assert_turns_and_tasks(
    spans: Sequence[ReadableSpan], run: ReadableSpan, signal: ReadableSpan, instance_id: str
) -> None:
    """Two committed turns under the Run, the second linked to the Signal; tasks under them."""
    turns = [
        t
        for t in spans_named(spans, TURN)
        if t.attributes and t.attributes.get("okra.turn.committed")
    ]
    assert len(turns) == 2
    first, second = sorted(turns, key=lambda t: t.start_time or 0)
    for turn in (first, second):
        assert turn.kind is SpanKind.CONSUMER
        assert _parent_id(turn) == run.context.span_id
        assert turn.attributes is not None
        assert turn.attributes["okra.instance.id"] == instance_id
        assert turn.attributes["okra.workflow.id"] == APPROVAL
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["okra.turn.outcome"] == "waiting"
    assert first.attributes["okra.turn.current_step"] == "/do/0/askForApproval"
    assert second.attributes["okra.turn.outcome"] == "completed"
    assert _instance_of(second) == "sidecar-b"
    # The resumed turn links to the Signal call that sent what it consumed.
    (link,) = second.links
    assert link.context.span_id == signal.context.span_id
    assert link.attributes is not None
    assert link.attributes["okra.signal.name"] == "approve"
    assert not first.links

    tasks = {
        (t.attributes["okra.task.name"], t.attributes["okra.task.status"]): t
        for t in spans
        if t.attributes and "okra.task.name" in t.attributes
    }
    assert set(tasks) == {
        ("askForApproval", "waiting"),
        ("askForApproval", "completed"),
        ("decide", "completed"),
    }
    assert _parent_id(tasks["askForApproval", "waiting"]) == first.context.span_id
    assert _parent_id(tasks["askForApproval", "completed"]) == second.context.span_id
    assert _parent_id(tasks["decide", "completed"]) == second.context.span_id
    assert tasks["decide", "completed"].name == "RunTask:decide"
    assert tasks["decide", "completed"].status.status_code is StatusCode.UNSET


async def test_spans_of_run_turns_tasks_and_signal_form_one_tree(
    redis: Redis, redis_url: str
) -> None:
    exporter = InMemorySpanExporter()
    trace_id, caller_run_span = new_trace()
    _, caller_signal_span = new_trace()
    settings = make_settings(redis_url)
    async with running_sidecar(
        settings, telemetry=memory_telemetry(exporter, instance_id="sidecar-b")
    ) as (_, stub_b):
        async with running_sidecar(
            settings, telemetry=memory_telemetry(exporter, instance_id="sidecar-a")
        ) as (_, stub_a):
            reply = await stub_a.Run(
                pb.RunRequest(
                    workflow_id=APPROVAL, input=value({"amount": 5}), correlation_id="order-7"
                ),
                metadata=(
                    ("traceparent", traceparent(trace_id, caller_run_span)),
                    ("tracestate", "vendor=abc"),
                    ("baggage", "tenant=acme"),
                    ("okra-caller-workflow", "shop.checkout.1.0.0"),
                ),
            )
            instance_id = reply.instance_id
            await wait_for_status(stub_a, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        # Sidecar A is gone: the signal and the turn it causes are B's.
        await stub_b.Signal(
            pb.SignalRequest(
                instance_id=instance_id, signal="approve", payload=value({"by": "ada"})
            ),
            metadata=(("traceparent", traceparent(trace_id, caller_signal_span)),),
        )
        await wait_for_status(stub_b, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        spans = await wait_for_spans(exporter, lambda s: any(x.name == "RunTask:decide" for x in s))

    assert {s.context.trace_id for s in spans if s.name != f"{RPC}/GetStatus"} == {trace_id}

    (run,) = spans_named(spans, f"{RPC}/Run")
    assert run.kind is SpanKind.SERVER
    assert _parent_id(run) == caller_run_span and run.parent is not None and run.parent.is_remote
    assert _instance_of(run) == "sidecar-a"
    assert run.context.trace_state.get("vendor") == "abc"
    assert (
        dict(run.attributes or {}).items()
        >= {
            "rpc.system": "grpc",
            "rpc.service": RPC,
            "rpc.method": "Run",
            "rpc.grpc.status_code": 0,
            "okra.workflow.id": APPROVAL,
            "okra.instance.id": instance_id,
            "okra.correlation_id": "order-7",
            "okra.caller.workflow": "shop.checkout.1.0.0",
            "network.peer.address": "127.0.0.1",
        }.items()
    )

    (signal,) = spans_named(spans, f"{RPC}/Signal")
    assert _parent_id(signal) == caller_signal_span
    assert _instance_of(signal) == "sidecar-b"
    assert signal.attributes is not None
    assert signal.attributes["okra.instance.id"] == instance_id

    _assert_turns_and_tasks(spans, run, signal, instance_id)


async def test_a_run_without_traceparent_starts_a_trace_and_faults_show(
    redis: Redis, redis_url: str
) -> None:
    exporter = InMemorySpanExporter()
    async with running_sidecar(
        make_settings(redis_url), telemetry=memory_telemetry(exporter, instance_id="a")
    ) as (_, stub):
        reply = await stub.Run(
            pb.RunRequest(workflow_id="tests.order.1.0.0", input=value({"kind": "box"}))
        )
        await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_FAILED})
        spans = await wait_for_spans(exporter, lambda s: any(x.name == "RunTask:reject" for x in s))
    (run,) = spans_named(spans, f"{RPC}/Run")
    assert run.parent is None
    (turn,) = spans_named(spans, "AdvanceWorkflow:tests.order.1.0.0")
    assert turn.context.trace_id == run.context.trace_id
    assert turn.status.status_code is StatusCode.ERROR
    assert turn.attributes is not None and turn.attributes["okra.turn.outcome"] == "failed"
    (reject,) = spans_named(spans, "RunTask:reject")
    assert reject.status.status_code is StatusCode.ERROR
    assert reject.attributes is not None
    assert reject.attributes["okra.task.status"] == "faulted"
    assert reject.attributes["okra.task.reference"] == "/do/2/reject"
    (route,) = spans_named(spans, "RunTask:route")
    assert _parent_id(route) == _parent_id(reject) == turn.context.span_id


async def test_an_unsampled_caller_makes_no_spans(redis: Redis, redis_url: str) -> None:
    exporter = InMemorySpanExporter()
    trace_id, span_id = new_trace()
    async with running_sidecar(
        make_settings(redis_url), telemetry=memory_telemetry(exporter, instance_id="a")
    ) as (_, stub):
        reply = await stub.Run(
            pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1})),
            metadata=(("traceparent", traceparent(trace_id, span_id, sampled=False)),),
        )
        await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        stored = await redis.hget(KEYS.instance(reply.instance_id), "otel")
    # The decision travels with the instance: its turns are not sampled either.
    assert stored is not None and b"-00" in stored
    assert [s.name for s in exporter.get_finished_spans()] == [f"{RPC}/GetStatus"] * len(
        exporter.get_finished_spans()
    )
