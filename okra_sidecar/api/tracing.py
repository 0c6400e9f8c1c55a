"""TelemetryInterceptor: a server span and a duration sample for every rpc.

Spans follow the OpenTelemetry RPC conventions (`rpc.system`, `rpc.service`, `rpc.method`,
`rpc.grpc.status_code`, named `package.Service/Method`, kind SERVER) and carry the request's
`okra.workflow.id`, `okra.instance.id` and `okra.correlation_id` and the caller's identity.
The caller's W3C `traceparent`, `tracestate` and `baggage` (or whatever OTEL_PROPAGATORS
names) are taken from the call's metadata. Attribute work runs only for recorded spans.

The interceptor is our own rather than opentelemetry-instrumentation-grpc's: it costs a
fraction of that one per call, records the rpc duration metric in the same pass, and serves
streaming handlers of both styles (async generators and `context.write()`). The health and
reflection services are left alone by default: probes would drown the traces.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.propagate import get_global_textmap
from opentelemetry.trace import Span, SpanKind, Tracer

from okra_sidecar.telemetry import tracing
from okra_sidecar.telemetry.metrics import SidecarMetrics

SKIPPED_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME})
# Request fields that become okra.* attributes when a request type has them.
REQUEST_ATTRIBUTES = (
    ("workflow_id", tracing.WORKFLOW_ID),
    ("instance_id", tracing.INSTANCE_ID),
    ("correlation_id", tracing.CORRELATION_ID),
)
# Codes that mean the server failed: only these set a server span's status to ERROR (the
# RPC conventions); the others are the caller's problem and show in rpc.grpc.status_code.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Any]


@dataclass(frozen=True)
class _Method:
    """What is fixed for one rpc method: names and the attributes every call shares."""

    full_name: str  # /package.Service/Method
    service: str
    name: str
    span_name: str
    attributes: dict[str, str]
    skip: bool


def _peer_attributes(peer: str) -> dict[str, str | int]:
    """`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000` or `unix:/path` as network.* attributes."""
    kind, _, address = peer.partition(":")
    if kind == "unix":
        return {"network.transport": "unix"}
    host, _, port = address.rpartition(":")
    attributes: dict[str, str | int] = {"network.peer.address": unquote(host.strip("[]"))}
    if port.isdigit():
        attributes["network.peer.port"] = int(port)
    return attributes


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Outermost interceptor: everything inside (errors, auth, policy) runs in its span."""

    def __init__(
        self,
        *,
        tracer: Tracer | None,
        metrics: SidecarMetrics,
        skip_services: Iterable[str] = SKIPPED_SERVICES,
    ) -> None:
        self._tracer = tracer
        self._metrics = metrics
        self._skip = frozenset(skip_services)
        self._methods: dict[str, _Method] = {}
        self._metric_attributes: dict[tuple[str, int], dict[str, str | int]] = {}
        self._request_fields: dict[str, tuple[tuple[str, str], ...]] = {}
        # The metadata keys the configured propagators read (OTEL_PROPAGATORS).
        self._propagated = frozenset(get_global_textmap().fields)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = self._methods.get(handler_call_details.method)
        if method is None:
            method = self._describe_method(handler_call_details.method)
        if method.skip:
            return handler
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(
                    method,
                    handler.unary_unary,  # type: ignore[arg-type]  # aio handlers are async
                    False,
                ),
                **options,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(
                    method,
                    handler.stream_unary,  # type: ignore[arg-type]  # aio handlers are async
                    False,
                ),
                **options,
            )
        # Response streams are served through context.write() whichever style the handler
        # uses, so an async generator and a write()-based handler both work behind us.
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap(
                    method,
                    handler.unary_stream,  # type: ignore[arg-type]  # aio handlers are async
                    True,
                ),
                **options,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap(
                    method,
                    handler.stream_stream,  # type: ignore[arg-type]  # aio handlers are async
                    True,
                ),
                **options,
            )
        return handler

    def _describe_method(self, full_name: str) -> _Method:
        service, _, name = full_name.lstrip("/").rpartition("/")
        method = _Method(
            full_name=full_name,
            service=service,
            name=name,
            span_name=f"{service}/{name}",
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            skip=service in self._skip,
        )
        self._methods[full_name] = method
        return method

    def _wrap(self, method: _Method, behavior: Behavior, streams: bool) -> Behavior:
        async def traced(request: Any, context: Context) -> Any:
            call = tracing.RpcCall(method.name)
            call_token = tracing.CURRENT_CALL.set(call)
            span = None
            context_token = None
            if self._tracer is not None:
                parent = self._extract(context)
                span = self._tracer.start_span(
                    method.span_name,
                    context=parent,
                    kind=SpanKind.SERVER,
                    attributes=method.attributes,
                )
                context_token = context_api.attach(trace.set_span_in_context(span, parent))
                if span.is_recording():
                    self._describe_call(span, request, context)
            started = time.perf_counter()
            failure: BaseException | None = None
            try:
                result = behavior(request, context)
                if streams and isinstance(result, AsyncIterator):
                    async for response in result:
                        await context.write(response)
                    return None
                return await result
            except BaseException as exc:
                failure = exc
                raise
            finally:
                elapsed_ms = (time.perf_counter() - started) * 1000
                code = self._code(context, failure)
                if span is not None:
                    self._end_span(span, code, context, failure)
                if context_token is not None:
                    context_api.detach(context_token)
                tracing.CURRENT_CALL.reset(call_token)
                self._metrics.rpc_finished(elapsed_ms, self._attributes_for(method, code))
                if call.denied_by:
                    self._metrics.policy_denied(call.denied_by, method.name)

        return traced

    def _extract(self, context: Context) -> context_api.Context | None:
        """The caller's context, if its metadata has any of the propagators' fields."""
        fields = self._propagated
        carrier = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if key in fields and isinstance(value, str)
        }
        return get_global_textmap().extract(carrier) if carrier else None

    def _describe_call(self, span: Span, request: Any, context: Context) -> None:
        """Attributes that cost something to find: only for recorded spans."""
        peer = context.peer()
        attributes = _peer_attributes(peer) if peer else {}
        descriptor = getattr(request, "DESCRIPTOR", None)
        if descriptor is not None:
            fields = self._request_fields.get(descriptor.full_name)
            if fields is None:
                fields = tuple(f for f in REQUEST_ATTRIBUTES if f[0] in descriptor.fields_by_name)
                self._request_fields[descriptor.full_name] = fields
            for field_name, attribute in fields:
                value = getattr(request, field_name)
                if value:
                    attributes[attribute] = value
        for key, value in context.invocation_metadata() or ():
            if key == "okra-caller-workflow":
                attributes[tracing.CALLER_WORKFLOW] = str(value)
        identities = context.peer_identities()
        if identities:
            # A TLS client certificate names the caller until the auth layer says more.
            attributes[tracing.CALLER_ID] = next(iter(identities)).decode(errors="replace")
        span.set_attributes(attributes)

    @staticmethod
    def _code(context: Context, failure: BaseException | None) -> grpc.StatusCode:
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code
        if failure is None:
            return grpc.StatusCode.OK
        if isinstance(failure, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.UNKNOWN

    @staticmethod
    def _end_span(
        span: Span, code: grpc.StatusCode, context: Context, failure: BaseException | None
    ) -> None:
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in SERVER_FAULTS:
                details = context.details() or code.name
                span.set_status(trace.StatusCode.ERROR, f"{code.name}: {details}")
                if failure is not None and type(failure).__name__ != "AbortError":
                    span.record_exception(failure)
        span.end()

    def _attributes_for(self, method: _Method, code: grpc.StatusCode) -> dict[str, str | int]:
        key = (method.full_name, code.value[0])
        attributes = self._metric_attributes.get(key)
        if attributes is None:
            attributes = {**method.attributes, "rpc.grpc.status_code": code.value[0]}
            self._metric_attributes[key] = attributes
        return attributes


__all__ = ["SKIPPED_SERVICES", "TelemetryInterceptor"]
