"""Effects in the instance's trace: the executor's span is a child of the turn that asked for
the work, the called service and the worker get its traceparent, and the result links back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from types import SimpleNamespace
from typing import Any

import grpc
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis.asyncio import Redis

from okra_sidecar.engine.interpreter.effects import RESULT_EVENT_TYPE, Effect, EffectKind
from okra_sidecar.engine.interpreter.interpreter import TurnOutcome
from okra_sidecar.engine.runtime.outbox import turn_extras
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.base import TurnExtras, TurnSnapshot
from okra_sidecar.telemetry import turns
from tests.executors.test_runtime import commit_extras, inbox_events, start_waiting
from tests.helpers import make_settings, running_sidecar
from tests.telemetry.support import memory_telemetry, new_trace, traceparent, wait_for_spans


@contextmanager
def header_recorder() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A local HTTP server that answers 200 {} and keeps each request's headers."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            status = 500 if self.path.startswith("/fail") else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _effect(effect_id: str, kind: EffectKind, request: dict[str, Any], parent: str) -> Any:
    task = effect_id.split("#")[0]
    return {**Effect(effect_id, kind, task, request).to_json(), "traceparent": parent}


async def _result(redis: Redis, instance_id: str, effect_id: str) -> dict[str, Any]:
    for _ in range(300):
        for event in await inbox_events(redis, instance_id):
            if event["type"] == RESULT_EVENT_TYPE and event["data"]["effectId"] == effect_id:
                return event
        await asyncio.sleep(0.02)
    raise AssertionError(f"no result for {effect_id}")


async def test_http_calls_are_client_spans_under_the_turn_and_carry_traceparent(
    redis: Redis, redis_url: str
) -> None:
    exporter = InMemorySpanExporter()
    trace_id, turn_span = new_trace()
    parent = traceparent(trace_id, turn_span)
    with header_recorder() as (base, seen):
        async with running_sidecar(
            make_settings(redis_url), telemetry=memory_telemetry(exporter, instance_id="a")
        ) as (sidecar, stub):
            instance_id = await start_waiting(stub)
            ok = _effect("/do/0/fetch#1", EffectKind.HTTP, {"uri": f"{base}/ok"}, parent)
            bad = _effect("/do/1/break#1", EffectKind.HTTP, {"uri": f"{base}/fail"}, parent)
            await commit_extras(sidecar, instance_id, TurnExtras(effects=[ok, bad]))
            result = await _result(redis, instance_id, "/do/0/fetch#1")
            failed = await _result(redis, instance_id, "/do/1/break#1")
        spans = await wait_for_spans(exporter, lambda s: any(x.name == "CallHttp:break" for x in s))
    by_name = {s.name: s for s in spans}
    call = by_name["CallHttp:fetch"]
    assert call.kind is SpanKind.CLIENT
    assert call.context.trace_id == trace_id
    assert call.parent is not None and call.parent.span_id == turn_span
    assert call.attributes is not None
    assert call.attributes["okra.effect.id"] == "/do/0/fetch#1"
    assert call.attributes["okra.instance.id"] == instance_id
    # The called service got the call span as its parent...
    headers = {h["traceparent"].split("-")[2]: h for h in seen}
    assert f"{call.context.span_id:016x}" in headers
    assert all(h["traceparent"].split("-")[1] == f"{trace_id:032x}" for h in seen)
    # ...and the result carries it back for the turn that consumes it to link to.
    assert result["traceparent"].split("-")[2] == f"{call.context.span_id:016x}"
    broken = by_name["CallHttp:break"]
    assert broken.status.status_code is StatusCode.ERROR
    assert failed["data"]["ok"] is False


async def test_worker_tasks_carry_the_enqueue_span_and_poll_streams_work_traced(
    redis: Redis, redis_url: str
) -> None:
    exporter = InMemorySpanExporter()
    trace_id, turn_span = new_trace()
    parent = traceparent(trace_id, turn_span)
    async with running_sidecar(
        make_settings(redis_url), telemetry=memory_telemetry(exporter, instance_id="a")
    ) as (sidecar, stub):
        instance_id = await start_waiting(stub)
        work = {"function": "charge", "arguments": {"amount": 3}, "service": "payments"}
        task = _effect("/do/0/charge#1", EffectKind.WORKER, work, parent)
        await commit_extras(sidecar, instance_id, TurnExtras(effects=[task]))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            # PollTasks is a server stream: it must work behind the telemetry interceptor.
            poll = wpb_grpc.TaskWorkerStub(channel).PollTasks(
                wpb.PollTasksRequest(service="payments", worker_id="w", max_in_flight=1)
            )
            reply = await asyncio.wait_for(poll.read(), 10)
            assert isinstance(reply, wpb.PollTasksResponse)
            poll.cancel()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    enqueue = spans["EnqueueTask:charge"]
    assert enqueue.kind is SpanKind.PRODUCER
    assert enqueue.parent is not None and enqueue.parent.span_id == turn_span
    assert reply.task.traceparent == (
        f"00-{trace_id:032x}-{enqueue.context.span_id:016x}-{int(enqueue.context.trace_flags):02x}"
    )
    assert "okra.worker.v1.TaskWorker/PollTasks" in spans


def test_a_turn_commits_its_effects_and_events_with_its_span_context() -> None:
    tracer = TracerProvider().get_tracer("t")
    call = Effect("/do/1/get#1", EffectKind.HTTP, "/do/1/get", {"method": "GET", "uri": "x"})
    emit = Effect("/do/0/tell#1", EffectKind.EMIT, "/do/0/tell", {"event": {"type": "a.b"}})
    snapshot = TurnSnapshot("i-1", "a.b.1.0.0", InstanceStatus.RUNNING, "1", {}, "m", [])
    result = SimpleNamespace(
        outcome=TurnOutcome.WAITING, output=None, error=None, effects=[call, emit], subscriptions=[]
    )
    with tracer.start_as_current_span("turn") as span:
        extras = turn_extras(snapshot, result, 0)  # type: ignore[arg-type]
    assert extras is not None
    expected = f"{span.get_span_context().span_id:016x}"
    assert extras.effects[0]["traceparent"].split("-")[2] == expected
    assert extras.events[0]["traceparent"].split("-")[2] == expected


def test_the_result_event_type_matches_the_engines() -> None:
    assert turns.EFFECT_RESULT_TYPE == RESULT_EVENT_TYPE
