"""Error to gRPC status mapping, applied once by ErrorInterceptor."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from okra_sidecar.api.decoding import OversizedRequest, UndecodableRequest, limited, tolerant
from okra_sidecar.errors import (
    ERROR_DOMAIN,
    AlreadyExistsError,
    DefinitionError,
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    OkraError,
    PolicyDeniedError,
    Reason,
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
RETRY_AFTER_UNAVAILABLE_S = 1
INTERNAL_MESSAGE = "internal error; the sidecar log has the details"
UNIMPLEMENTED_MESSAGE = "this rpc is not implemented"


def status_code_for(exc: OkraError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _retry_info(delay_s: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(int(delay_s * 1e9), 1_000_000))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def _details(exc: OkraError) -> list[Message]:
    """ErrorInfo always, then BadRequest, PreconditionFailure or RetryInfo as the error has them."""
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN, metadata=exc.metadata)
    ]
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
    if isinstance(exc, FailedPreconditionError):
        violation = exc.violation
        details.append(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=violation.type,
                        subject=violation.subject,
                        description=violation.description,
                    )
                ]
            )
        )
    if isinstance(exc, ResourceExhaustedError) and exc.retry_after_s is not None:
        details.append(_retry_info(exc.retry_after_s))
    if isinstance(exc, StoreUnavailableError):
        details.append(_retry_info(RETRY_AFTER_UNAVAILABLE_S))
    return details


def _trailer(code: grpc.StatusCode, message: str, details: list[Message]) -> tuple[Any, ...]:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    rich = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return (("grpc-status-details-bin", rich.SerializeToString()),)


def status_metadata(code: grpc.StatusCode, message: str, exc: OkraError) -> tuple[Any, ...]:
    """Trailing metadata carrying google.rpc.Status with its details, as grpcio-status reads it."""
    return _trailer(code, message, _details(exc))


def bare_status_metadata(code: grpc.StatusCode, message: str, reason: Reason) -> tuple[Any, ...]:
    """The trailer for a status no OkraError stands behind: just its ErrorInfo."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    return _trailer(code, message, [info])


Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]


async def _abort_for(exc: Exception, context: Context) -> NoReturn:
    """Abort the call with the status, message and details `exc` stands for."""
    if isinstance(exc, OkraError):
        code = status_code_for(exc)
        message = str(exc)
        tracing.record_error(exc, server_fault=code in SERVER_FAULT_CODES)
        if isinstance(exc, PolicyDeniedError):
            tracing.note_policy_denial(exc.policy)
        await context.abort(code, message, status_metadata(code, message, exc))
    if isinstance(exc, NotImplementedError):
        # e.g. grpcio's async health servicer has no List
        code = grpc.StatusCode.UNIMPLEMENTED
        trailer = bare_status_metadata(code, UNIMPLEMENTED_MESSAGE, Reason.UNIMPLEMENTED)
        await context.abort(code, UNIMPLEMENTED_MESSAGE, trailer)
    logger.error("unexpected error", exc_info=exc)
    tracing.record_error(exc, server_fault=True)
    code = grpc.StatusCode.INTERNAL
    await context.abort(
        code, INTERNAL_MESSAGE, bare_status_metadata(code, INTERNAL_MESSAGE, Reason.INTERNAL)
    )


async def refuse_undecodable(method: str, request: UndecodableRequest, context: Context) -> None:
    """INVALID_ARGUMENT with a BadRequest detail, and one log line rather than a traceback."""
    logger.warning("undecodable request to %s: %s", method, request.problem)
    exc = InvalidInputError.for_field(
        "request", f"is not a valid {method.rpartition('/')[2]} message: {request.problem}"
    )
    code = grpc.StatusCode.INVALID_ARGUMENT
    await context.abort(code, str(exc), status_metadata(code, str(exc), exc))


# What a request decodes to when it cannot be served (api/decoding.py).
UNUSABLE = (UndecodableRequest, OversizedRequest)


async def refuse_unusable(
    method: str, request: UndecodableRequest | OversizedRequest, context: Context
) -> None:
    """INVALID_ARGUMENT for a request that did not decode, RESOURCE_EXHAUSTED for one over the
    size limit."""
    if isinstance(request, UndecodableRequest):
        await refuse_undecodable(method, request, context)
    if isinstance(request, OversizedRequest):
        logger.warning("request to %s refused: %d bytes", method, request.size)
        await _abort_for(request.error(), context)


def _guard(method: str, behavior: Behavior) -> Behavior:
    async def guarded(request: Any, context: Context) -> Any:
        if isinstance(request, UNUSABLE):
            await refuse_unusable(method, request, context)
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise  # an inner layer already chose the status
        except Exception as exc:
            await _abort_for(exc, context)

    return guarded


def _guard_stream(method: str, behavior: Callable[..., Any]) -> Behavior:
    """A server-streaming behavior that refuses an unusable request first and maps errors.

    grpc.aio accepts either an async generator or a coroutine that calls `context.write`;
    the wrapper is the latter and serves both, and a coroutine that returns the stream too
    (a layer that sets the call up and hands the stream back, keeping no frame of its own
    alive while the stream is held). Client-streaming requests (an iterator) pass as they are.
    """

    async def guarded(request: Any, context: Context) -> Any:
        if isinstance(request, UNUSABLE):
            await refuse_unusable(method, request, context)
        try:
            result = behavior(request, context)
            if not isinstance(result, AsyncIterator):
                result = await result
                if not isinstance(result, AsyncIterator):
                    return result
            async for response in result:
                await context.write(response)
                # A held stream keeps no reply while it waits: most of one is the protobuf
                # arena of the instance it carries.
                del response
            return None
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, context)

    return guarded


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns OkraError into the mapped status with google.rpc details, anything else INTERNAL.

    Every status it sends carries a google.rpc.ErrorInfo with a reason from `REASONS`.
    """

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
            return grpc.unary_stream_rpc_method_handler(
                _guard_stream(method, handler.unary_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        # Client streams (server reflection): each message is size-checked as it is read,
        # and the error that raises there is mapped like any other.
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _guard_stream(method, handler.stream_unary),
                request_deserializer=limited(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _guard_stream(method, handler.stream_stream),
                request_deserializer=limited(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler
