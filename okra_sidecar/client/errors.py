"""Client-side errors: one class per gRPC status code, carrying the google.rpc details.

    OkraRpcError                  (code, message, field_violations, error_info, retry_delay_s)
    ├── InvalidArgumentError      bad ids, schema violations (field_violations), oversize input
    ├── NotFoundError             no such workflow or instance
    ├── AlreadyExistsError
    ├── FailedPreconditionError   signalling or cancelling a finished instance
    ├── PermissionDeniedError     a policy denied the call (error_info names it)
    ├── UnauthenticatedError
    ├── ResourceExhaustedError    rate or instance limits
    ├── UnavailableError          the sidecar or its Redis cannot be reached (retry_delay_s)
    ├── DeadlineExceededError     the call's deadline passed
    └── InternalError

Any other code raises OkraRpcError itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

from okra_sidecar.errors import FieldViolation

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "ErrorInfo",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OkraRpcError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "error_from_rpc",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class ErrorInfo:
    """google.rpc.ErrorInfo: why the call failed, e.g. reason POLICY_DENIED and the policy."""

    reason: str
    domain: str
    metadata: dict[str, str] = field(default_factory=dict)


class OkraRpcError(Exception):
    """A call the sidecar refused or could not serve.

    Attributes:
        code: The gRPC status code.
        message: The status message, written for a person.
        field_violations: The google.rpc.BadRequest details: which request fields are wrong.
        error_info: The google.rpc.ErrorInfo detail, if any.
        retry_delay_s: The google.rpc.RetryInfo delay in seconds, if the server sent one.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: tuple[FieldViolation, ...] = (),
        error_info: ErrorInfo | None = None,
        retry_delay_s: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = field_violations
        self.error_info = error_info
        self.retry_delay_s = retry_delay_s


class InvalidArgumentError(OkraRpcError):
    """INVALID_ARGUMENT: the request breaks a rule; `field_violations` says which fields."""


class NotFoundError(OkraRpcError):
    """NOT_FOUND: the workflow or instance does not exist."""


class AlreadyExistsError(OkraRpcError):
    """ALREADY_EXISTS."""


class FailedPreconditionError(OkraRpcError):
    """FAILED_PRECONDITION: e.g. signalling or cancelling an instance that has finished."""


class PermissionDeniedError(OkraRpcError):
    """PERMISSION_DENIED: a policy refused the call; `error_info.metadata["policy"]` names it."""


class UnauthenticatedError(OkraRpcError):
    """UNAUTHENTICATED: no or an invalid bearer token."""


class ResourceExhaustedError(OkraRpcError):
    """RESOURCE_EXHAUSTED: a rate or instance limit is reached."""


class UnavailableError(OkraRpcError):
    """UNAVAILABLE: the sidecar or its Redis cannot be reached; the call may be retried."""


class DeadlineExceededError(OkraRpcError):
    """DEADLINE_EXCEEDED: the call's deadline passed before it finished."""


class InternalError(OkraRpcError):
    """INTERNAL: a sidecar bug; its log has the details."""


ERROR_BY_CODE: dict[grpc.StatusCode, type[OkraRpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def _rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, raw in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(raw, bytes):
            return status_pb2.Status.FromString(raw)
    return None


def error_from_rpc(error: grpc.aio.AioRpcError) -> OkraRpcError:
    """The typed error for a failed call, with its BadRequest, ErrorInfo and RetryInfo details."""
    violations: list[FieldViolation] = []
    info: ErrorInfo | None = None
    delay: float | None = None
    rich = _rich_status(error)
    for detail in rich.details if rich is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            unpacked = error_details_pb2.ErrorInfo()
            detail.Unpack(unpacked)
            info = ErrorInfo(unpacked.reason, unpacked.domain, dict(unpacked.metadata))
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    code = error.code()
    cls = ERROR_BY_CODE.get(code, OkraRpcError)
    return cls(
        code,
        error.details() or "",
        field_violations=tuple(violations),
        error_info=info,
        retry_delay_s=delay,
    )
