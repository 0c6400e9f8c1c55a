"""AuthInterceptor and PolicyInterceptor: what happens before a handler runs.

AuthInterceptor turns the `authorization` metadata into the caller's Identity (or
UNAUTHENTICATED) for everything below it, streaming rpcs included; it wraps the returned
handler. PolicyInterceptor refuses an rpc of a guarded service that no policy decides. The
decisions themselves are taken by the servicers, each calling its gate (api/gate.py,
api/resource_gates.py) with the request it parsed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.api.call_metadata import authorization_of, metadata_of
from okra_sidecar.api.status import status_code_for, status_metadata
from okra_sidecar.api.tls import peer_identity
from okra_sidecar.errors import OkraError
from okra_sidecar.policy.auth import TokenVerifier
from okra_sidecar.policy.model import Identity, current_identity, reset_identity, set_identity
from okra_sidecar.telemetry import tracing

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]
if TYPE_CHECKING:
    Continuation = Callable[
        [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
    ]
WORKFLOW_SERVICE = pb.DESCRIPTOR.services_by_name["WorkflowHostAPI"].full_name
OPERATOR_SERVICE = opb.DESCRIPTOR.services_by_name["WorkflowOperatorAPI"].full_name
# Every rpc of these services is decided by a policy (tests/policy/test_open_doors.py calls
# each one); PolicyInterceptor refuses one that the evaluator has no case for.
GUARDED_SERVICES = frozenset(
    {
        WORKFLOW_SERVICE,
        OPERATOR_SERVICE,
        spb.DESCRIPTOR.services_by_name["ScheduleHostAPI"].full_name,
        wpb.DESCRIPTOR.services_by_name["TaskWorker"].full_name,
    }
)


def _split_method(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


def _rewrap(
    handler: grpc.RpcMethodHandler[Any, Any], behavior: Behavior
) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _rewrap_stream(
    handler: grpc.RpcMethodHandler[Any, Any],
    behavior: Callable[[Any, Context], Awaitable[AsyncIterator[Any]]],
) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_stream_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def abort_with(context: Context, exc: OkraError) -> NoReturn:
    """End a streaming call with the error's status, as ErrorInterceptor would."""
    code = status_code_for(exc)
    await context.abort(code, str(exc), status_metadata(code, str(exc), exc))
    raise AssertionError("unreachable")  # pragma: no cover - abort raises


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the bearer token of every rpc, streaming ones too, except health and reflection.

    With `peers` (mutual TLS), the client certificate's identity joins the token's claims.
    """

    def __init__(
        self, *, verifier: TokenVerifier, exempt_services: frozenset[str], peers: bool = False
    ) -> None:
        self._verifier = verifier
        self._exempt = exempt_services
        self._peers = peers

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        service, _ = _split_method(handler_call_details.method)
        if handler is None or service in self._exempt:
            return handler
        verifier = self._verifier
        peers = self._peers

        def identify_now(context: Context) -> Identity:
            """The caller, when no key needs fetching (keys from files and secrets)."""
            peer = peer_identity(context) if peers else ""
            identity = verifier.identify(authorization_of(context), peer)
            if identity.authenticated:
                tracing.set_caller(identity.describe(), issuer=identity.issuer)
            return identity

        async def identify(context: Context) -> Identity:
            # Keys from a URL may need fetching first; keys from files and secrets never do.
            if verifier.source is None:
                return identify_now(context)
            peer = peer_identity(context) if peers else ""
            identity = await verifier.identify_async(authorization_of(context), peer)
            if identity.authenticated:
                tracing.set_caller(identity.describe(), issuer=identity.issuer)
            return identity

        if handler.unary_unary is not None:
            behavior: Behavior = handler.unary_unary  # type: ignore[assignment]

            async def authenticated(request: Any, context: Context) -> Any:
                if verifier.source is None:
                    identity = identify_now(context)  # no coroutine for the usual case
                else:
                    identity = await identify(context)
                if identity is current_identity():
                    # The anonymous default: each call runs in a task of its own, whose
                    # context already holds it; nothing to set or reset.
                    return await behavior(request, context)
                token = set_identity(identity)
                try:
                    return await behavior(request, context)
                finally:
                    reset_identity(token)

            return _rewrap(handler, authenticated)
        if handler.unary_stream is not None:
            stream: StreamBehavior = handler.unary_stream  # type: ignore[assignment]

            async def authenticated_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                # Hands the stream back (ErrorInterceptor's guard iterates it) rather than
                # iterating it here, so no frame of this layer stays alive for a held
                # stream's life. The identity stays set until the call ends: the call runs
                # in a task of its own, whose context ends with it.
                try:
                    identity = await identify(context)
                except OkraError as exc:
                    await abort_with(context, exc)
                if identity is not current_identity():
                    # Only when it differs: an entry in the call's context is kept as long
                    # as the stream (an anonymous caller has the default).
                    set_identity(identity)
                return stream(request, context)

            return _rewrap_stream(handler, authenticated_stream)
        # A client- or bidirectional-streaming rpc outside the exempt services: refuse it
        # (UNIMPLEMENTED) rather than let it pass unauthenticated.
        return None


class PolicyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses an rpc of the guarded services that no policy decides (fail closed).

    The decisions themselves are the servicers' (api/gate.py, api/resource_gates.py): each
    method calls its gate with what it parsed. This layer only checks, once per method (see
    InterceptorChain), that the evaluator has a case for the rpc, and otherwise passes the
    handler through unwrapped, so it costs a call nothing.
    """

    def __init__(self, *, decides: Callable[[str], bool]) -> None:
        self._decides = decides

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        service, method = _split_method(handler_call_details.method)
        if handler is None or service not in GUARDED_SERVICES or self._decides(method):
            return handler
        logger.error("no policy decides %s; refusing it", handler_call_details.method)
        return None


__all__ = ["GUARDED_SERVICES", "AuthInterceptor", "PolicyInterceptor", "abort_with", "metadata_of"]
