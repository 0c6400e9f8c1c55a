"""Error to gRPC status mapping, applied once by ErrorInterceptor."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from okra_sidecar.api.decoding import UndecodableRequest, tolerant
from okra_sidecar.errors import (
    AlreadyExistsError,
    DefinitionError,
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    OkraError,
    PolicyDeniedError,
    ResourceExhaustedError,
    StoreUnavailableError,
    UnauthenticatedError,
)
from okra_sidecar.telemetry import tracing

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[OkraError], grpc.StatusCode] = {
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    DefinitionError: grpc.StatusCode.INVALID_ARGUMENT,
    PolicyDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
}
# Codes that are the server's fault, not the caller's: they mark the rpc span as an error.
SERVER_FAULT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})
ERROR_DOMAIN = "okra.dev"
RETRY_AFTER_UNAVAILABLE_S = 1


def status_code_for(exc: OkraError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _details(exc: OkraError) -> list[any_pb2.Any]:
    details: list[Any] = []
    if isinstance(exc, InvalidInputError) and exc.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in exc.violations
                ]
            )
        )
    if isinstance(exc, PolicyDeniedError):
        details.append(
            error_details_pb2.ErrorInfo(
                reason="POLICY_DENIED", domain=ERROR_DOMAIN, metadata={"policy": exc.policy}
            )
        )
    if isinstance(exc, ResourceExhaustedError) and exc.policy:
        details.append(
            error_details_pb2.ErrorInfo(
                reason="RESOURCE_EXHAUSTED", domain=ERROR_DOMAIN, metadata={"policy": exc.policy}
            )
        )
    if isinstance(exc, ResourceExhaustedError) and exc.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(int(exc.retry_after_s * 1e9), 1_000_000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if isinstance(exc, StoreUnavailableError):
        details.append(
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=RETRY_AFTER_UNAVAILABLE_S)
            )
        )
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return packed


def status_metadata(code: grpc.StatusCode, message: str, exc: OkraError) -> tuple[Any, ...]:
    """Trailing metadata carrying google.rpc.Status with its details, as grpcio-status reads it."""
    details = _details(exc)
    if not details:
        return ()
    rich = status_pb2.Status(code=code.value[0], message=message, details=details)
    return (("grpc-status-details-bin", rich.SerializeToString()),)


Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


async def refuse_undecodable(
    method: str, request: UndecodableRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    """INVALID_ARGUMENT with a BadRequest detail, and one log line rather than a traceback."""
    logger.warning("undecodable request to %s: %s", method, request.problem)
    exc = InvalidInputError.for_field(
        "request", f"is not a valid {method.rpartition('/')[2]} message: {request.problem}"
    )
    code = grpc.StatusCode.INVALID_ARGUMENT
    await context.abort(code, str(exc), status_metadata(code, str(exc), exc))


def _guard(method: str, behavior: Behavior) -> Behavior:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, UndecodableRequest):
            await refuse_undecodable(method, request, context)
        try:
            return await behavior(request, context)
        except OkraError as exc:
            code = status_code_for(exc)
            message = str(exc)
            tracing.record_error(exc, server_fault=code in SERVER_FAULT_CODES)
            if isinstance(exc, PolicyDeniedError):
                tracing.note_policy_denial(exc.policy)
            await context.abort(code, message, status_metadata(code, message, exc))
        except grpc.aio.AbortError:
            raise  # an inner layer already chose the status
        except NotImplementedError:
            # e.g. grpcio's async health servicer has no List
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this rpc is not implemented")
        except Exception as exc:
            logger.exception("unexpected error")
            tracing.record_error(exc, server_fault=True)
            await context.abort(
                grpc.StatusCode.INTERNAL, "internal error; the sidecar log has the details"
            )

    return guarded


def _guard_stream(method: str, behavior: Callable[..., Any]) -> Behavior:
    """A server-streaming behavior that refuses an undecodable request first.

    grpc.aio accepts either an async generator or a coroutine that calls `context.write`;
    the wrapper is the latter and serves both.
    """

    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, UndecodableRequest):
            await refuse_undecodable(method, request, context)
        result = behavior(request, context)
        if isinstance(result, AsyncIterator):
            async for response in result:
                await context.write(response)
            return None
        return await result

    return guarded


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns OkraError into the mapped status with google.rpc details, anything else INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        deserializer = tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _guard(method, handler.unary_unary),  # type: ignore[arg-type]  # aio: async
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            # Streaming rpcs map their own errors; only an undecodable request is refused here.
            return grpc.unary_stream_rpc_method_handler(
                _guard_stream(method, handler.unary_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
