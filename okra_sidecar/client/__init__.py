"""The async Python client of the sidecar's WorkflowHostAPI (`OkraClient`) and its types."""

from okra_sidecar.client.client import DEFAULT_TARGET, OkraClient, RetryPolicy
from okra_sidecar.client.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    ErrorInfo,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OkraRpcError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from okra_sidecar.client.models import (
    HistoryEvent,
    HistoryPage,
    Json,
    QueryPage,
    SignalResult,
    WorkflowError,
    WorkflowInfo,
    WorkflowInstance,
    WorkflowStatus,
)
from okra_sidecar.client.tls import ClientTls

__all__ = [
    "DEFAULT_TARGET",
    "AlreadyExistsError",
    "ClientTls",
    "DeadlineExceededError",
    "ErrorInfo",
    "FailedPreconditionError",
    "FieldViolation",
    "HistoryEvent",
    "HistoryPage",
    "InternalError",
    "InvalidArgumentError",
    "Json",
    "NotFoundError",
    "OkraClient",
    "OkraRpcError",
    "PermissionDeniedError",
    "QueryPage",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SignalResult",
    "UnauthenticatedError",
    "UnavailableError",
    "WorkflowError",
    "WorkflowInfo",
    "WorkflowInstance",
    "WorkflowStatus",
]
