"""Client-side errors: a class per gRPC status code and per reason, carrying the google.rpc details.

    OkraRpcError        (code, message, reason, metadata, field_violations, precondition_violations,
    │                    error_info, retry_delay_s, retryable)
    ├── InvalidArgumentError      bad ids, oversize input, ...
    │   ├── InputSchemaMismatchError      the input breaks the workflow's input schema
    │   └── InvalidPolicySetError         SetPolicies refused the set
    ├── NotFoundError
    │   ├── WorkflowNotFoundError / InstanceNotFoundError / ScheduleNotFoundError
    ├── AlreadyExistsError
    ├── FailedPreconditionError   (precondition_violations says what must hold)
    │   ├── InstanceAlreadyFinishedError  signalling or cancelling a finished instance
    │   ├── ChangedConcurrentlyError      the target moved while the call was checked; retryable
    │   ├── ManualRunsDisabledError       the workflow runs only from its schedule here
    │   └── ScheduleDeclaredByWorkflowError
    ├── PermissionDeniedError
    │   └── PolicyDeniedError             a policy denied the call (metadata["policy"])
    ├── UnauthenticatedError
    │   ├── TokenMissingError / TokenInvalidError
    ├── ResourceExhaustedError
    │   ├── RateLimitedError              retryable after retry_delay_s
    │   ├── InstanceLimitReachedError     too many unfinished instances
    │   └── MessageTooLargeError          a request over the sidecar's 8 MiB limit
    ├── UnavailableError          the sidecar or its Redis cannot be reached; retryable
    │   ├── RedisUnavailableError / ReplicasNotAcknowledgedError
    ├── DeadlineExceededError
    ├── UnimplementedError
    └── InternalError

The class comes from the ErrorInfo reason (docs/errors.md lists them all), else from the
status code; any other code raises OkraRpcError itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "ERROR_BY_REASON",
    "ERROR_DOMAIN",
    "REASONS",
    "RETRYABLE_REASONS",
    "AlreadyExistsError",
    "BulkOperationFinishedError",
    "BulkOperationNotFoundError",
    "BulkTooManyInstancesError",
    "ChangedConcurrentlyError",
    "DeadlineExceededError",
    "ErrorInfo",
    "FailedPreconditionError",
    "FieldViolation",
    "InputSchemaMismatchError",
    "InstanceAlreadyFinishedError",
    "InstanceAlreadySuspendedError",
    "InstanceLimitReachedError",
    "MessageTooLargeError",
    "InstanceNotFailedError",
    "InstanceNotFinishedError",
    "InstanceNotFoundError",
    "InstanceNotResettableError",
    "InstanceNotSuspendedError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidPolicySetError",
    "ManualRunsDisabledError",
    "NotFoundError",
    "NothingToRetryError",
    "OkraRpcError",
    "PermissionDeniedError",
    "PolicyDeniedError",
    "PreconditionViolation",
    "RateLimitedError",
    "RedisUnavailableError",
    "ReplicasNotAcknowledgedError",
    "ResetPointNotKeptError",
    "ResourceExhaustedError",
    "ScheduleDeclaredByWorkflowError",
    "ScheduleNotFoundError",
    "TaskMovedError",
    "TaskNotReachedError",
    "TokenInvalidError",
    "TokenMissingError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownTaskError",
    "WorkflowNotFoundError",
    "error_from_rpc",
]

# The sidecar's ErrorInfo domain and the reasons it sends (docs/errors.md); a reason not listed
# comes from a newer sidecar and is handled by its status code. tests/client/test_reasons.py
# holds both lists to the sidecar's own.
ERROR_DOMAIN = "okra.dev"
REASONS = frozenset(
    {
        "WORKFLOW_NOT_FOUND",
        "INSTANCE_NOT_FOUND",
        "SCHEDULE_NOT_FOUND",
        "INVALID_FIELD",
        "INPUT_SCHEMA_MISMATCH",
        "INVALID_POLICY_SET",
        "TOKEN_MISSING",
        "TOKEN_INVALID",
        "POLICY_DENIED",
        "INSTANCE_ALREADY_FINISHED",
        "CHANGED_CONCURRENTLY",
        "INSTANCE_ALREADY_SUSPENDED",
        "INSTANCE_NOT_SUSPENDED",
        "INSTANCE_NOT_FINISHED",
        "INSTANCE_NOT_FAILED",
        "NOTHING_TO_RETRY",
        "UNKNOWN_TASK",
        "INSTANCE_NOT_RESETTABLE",
        "TASK_NOT_REACHED",
        "RESET_POINT_NOT_KEPT",
        "TASK_MOVED",
        "BULK_OPERATION_NOT_FOUND",
        "BULK_OPERATION_FINISHED",
        "BULK_TOO_MANY_INSTANCES",
        "MANUAL_RUNS_DISABLED",
        "SCHEDULE_DECLARED_BY_WORKFLOW",
        "SCHEDULE_UNREADABLE",
        "RATE_LIMITED",
        "INSTANCE_LIMIT_REACHED",
        "MESSAGE_TOO_LARGE",
        "REDIS_UNAVAILABLE",
        "REPLICAS_NOT_ACKNOWLEDGED",
        "UNIMPLEMENTED",
        "INTERNAL",
    }
)
# Those whose call, repeated unchanged, can succeed (the Retry column of docs/errors.md).
RETRYABLE_REASONS = frozenset(
    {"CHANGED_CONCURRENTLY", "RATE_LIMITED", "REDIS_UNAVAILABLE", "REPLICAS_NOT_ACKNOWLEDGED"}
)


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """What must hold for a call to make sense (google.rpc.PreconditionFailure.Violation).

    Attributes:
        type: The kind of precondition, e.g. INSTANCE_STATUS.
        subject: What it is about, e.g. instance/<id>.
        description: What must hold, for a person.
    """

    type: str
    subject: str
    description: str


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
        precondition_violations: The google.rpc.PreconditionFailure details: what must hold.
        error_info: The google.rpc.ErrorInfo detail, if any.
        retry_delay_s: The google.rpc.RetryInfo delay in seconds, if the server sent one.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: tuple[FieldViolation, ...] = (),
        precondition_violations: tuple[PreconditionViolation, ...] = (),
        error_info: ErrorInfo | None = None,
        retry_delay_s: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = field_violations
        self.precondition_violations = precondition_violations
        self.error_info = error_info
        self.retry_delay_s = retry_delay_s

    @property
    def reason(self) -> str:
        """The sidecar's reason (docs/errors.md), "" when the error did not come with one."""
        info = self.error_info
        return info.reason if info is not None and info.domain == ERROR_DOMAIN else ""

    @property
    def metadata(self) -> dict[str, str]:
        """What the error is about: instance, workflow, schedule, policy, status or field."""
        return dict(self.error_info.metadata) if self.error_info is not None else {}

    @property
    def retryable(self) -> bool:
        """Whether repeating the call unchanged can succeed, as its reason says.

        Without a reason the sidecar knows (it is down, or newer than this client), only
        UNAVAILABLE is.
        """
        if self.reason in REASONS:
            return self.reason in RETRYABLE_REASONS
        return self.code == grpc.StatusCode.UNAVAILABLE


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


class UnimplementedError(OkraRpcError):
    """UNIMPLEMENTED: this sidecar does not serve the rpc."""


class WorkflowNotFoundError(NotFoundError):
    """WORKFLOW_NOT_FOUND: no such workflow is registered (metadata["workflow"])."""


class InstanceNotFoundError(NotFoundError):
    """INSTANCE_NOT_FOUND: no such instance, or retention purged it (metadata["instance"])."""


class ScheduleNotFoundError(NotFoundError):
    """SCHEDULE_NOT_FOUND: no such schedule (metadata["schedule"])."""


class InputSchemaMismatchError(InvalidArgumentError):
    """INPUT_SCHEMA_MISMATCH: the input breaks the workflow's input schema."""


class InvalidPolicySetError(InvalidArgumentError):
    """INVALID_POLICY_SET: the policy set was refused whole; nothing changed."""


class TokenMissingError(UnauthenticatedError):
    """TOKEN_MISSING: the call needs `authorization: Bearer <JWT>`."""


class TokenInvalidError(UnauthenticatedError):
    """TOKEN_INVALID: the token is malformed, expired, or does not verify."""


class PolicyDeniedError(PermissionDeniedError):
    """POLICY_DENIED: the policy in metadata["policy"] refused the call."""


class InstanceAlreadyFinishedError(FailedPreconditionError):
    """INSTANCE_ALREADY_FINISHED: the instance has ended (metadata["status"] says how)."""


class ChangedConcurrentlyError(FailedPreconditionError):
    """CHANGED_CONCURRENTLY: the target changed while the call was checked; retry it."""


class ManualRunsDisabledError(FailedPreconditionError):
    """MANUAL_RUNS_DISABLED: this sidecar starts the workflow only from its schedule."""


class ScheduleDeclaredByWorkflowError(FailedPreconditionError):
    """SCHEDULE_DECLARED_BY_WORKFLOW: the definition's own schedule cannot be deleted."""


class ScheduleUnreadableError(FailedPreconditionError):
    """SCHEDULE_UNREADABLE: the stored schedule cannot be read; DeleteSchedule removes it."""


class RateLimitedError(ResourceExhaustedError):
    """RATE_LIMITED: retry after `retry_delay_s`; metadata["policy"] names the limit."""


class InstanceLimitReachedError(ResourceExhaustedError):
    """INSTANCE_LIMIT_REACHED: too many unfinished instances; start again later."""


class MessageTooLargeError(ResourceExhaustedError):
    """MESSAGE_TOO_LARGE: the request is over the sidecar's limit (metadata "size", "limit")."""


class RedisUnavailableError(UnavailableError):
    """REDIS_UNAVAILABLE: the sidecar cannot reach Redis; retry after `retry_delay_s`."""


class ReplicasNotAcknowledgedError(UnavailableError):
    """REPLICAS_NOT_ACKNOWLEDGED: the write was made but too few replicas confirmed it."""


class BulkOperationNotFoundError(NotFoundError):
    """BULK_OPERATION_NOT_FOUND: no such bulk operation (metadata["operation"])."""


class BulkOperationFinishedError(FailedPreconditionError):
    """BULK_OPERATION_FINISHED: the bulk operation has ended (metadata["state"])."""


class BulkTooManyInstancesError(ResourceExhaustedError):
    """BULK_TOO_MANY_INSTANCES: the filter matches more instances than one operation may take."""


class InstanceNotFailedError(FailedPreconditionError):
    """INSTANCE_NOT_FAILED: only a failed instance can be retried (metadata["status"])."""


class NothingToRetryError(FailedPreconditionError):
    """NOTHING_TO_RETRY: the instance failed outside any task; start a new one."""


class UnknownTaskError(InvalidArgumentError):
    """UNKNOWN_TASK: Reset's task is not a top-level task of the workflow (metadata["tasks"])."""


class InstanceNotResettableError(FailedPreconditionError):
    """INSTANCE_NOT_RESETTABLE: only an ended or waiting instance can be reset
    (metadata["status"])."""


class TaskNotReachedError(FailedPreconditionError):
    """TASK_NOT_REACHED: the instance never reached the task it was to be reset to."""


class ResetPointNotKeptError(FailedPreconditionError):
    """RESET_POINT_NOT_KEPT: the instance's state at that task outgrew the reset budget."""


class TaskMovedError(FailedPreconditionError):
    """TASK_MOVED: a worker task handed out before the store was migrated to a new layout; it
    is handed out again (metadata["task"])."""


class InstanceAlreadySuspendedError(FailedPreconditionError):
    """INSTANCE_ALREADY_SUSPENDED: the instance is suspended already; Resume it."""


class InstanceNotSuspendedError(FailedPreconditionError):
    """INSTANCE_NOT_SUSPENDED: only a suspended instance can be resumed (metadata["status"])."""


class InstanceNotFinishedError(FailedPreconditionError):
    """INSTANCE_NOT_FINISHED: only a finished instance can be deleted (metadata["status"])."""


ERROR_BY_REASON: dict[str, type[OkraRpcError]] = {
    "WORKFLOW_NOT_FOUND": WorkflowNotFoundError,
    "INSTANCE_NOT_FOUND": InstanceNotFoundError,
    "SCHEDULE_NOT_FOUND": ScheduleNotFoundError,
    "INPUT_SCHEMA_MISMATCH": InputSchemaMismatchError,
    "INVALID_POLICY_SET": InvalidPolicySetError,
    "TOKEN_MISSING": TokenMissingError,
    "TOKEN_INVALID": TokenInvalidError,
    "POLICY_DENIED": PolicyDeniedError,
    "INSTANCE_ALREADY_FINISHED": InstanceAlreadyFinishedError,
    "CHANGED_CONCURRENTLY": ChangedConcurrentlyError,
    "MANUAL_RUNS_DISABLED": ManualRunsDisabledError,
    "SCHEDULE_DECLARED_BY_WORKFLOW": ScheduleDeclaredByWorkflowError,
    "SCHEDULE_UNREADABLE": ScheduleUnreadableError,
    "RATE_LIMITED": RateLimitedError,
    "INSTANCE_LIMIT_REACHED": InstanceLimitReachedError,
    "MESSAGE_TOO_LARGE": MessageTooLargeError,
    "REDIS_UNAVAILABLE": RedisUnavailableError,
    "REPLICAS_NOT_ACKNOWLEDGED": ReplicasNotAcknowledgedError,
    "BULK_OPERATION_NOT_FOUND": BulkOperationNotFoundError,
    "BULK_OPERATION_FINISHED": BulkOperationFinishedError,
    "BULK_TOO_MANY_INSTANCES": BulkTooManyInstancesError,
    "INSTANCE_NOT_FAILED": InstanceNotFailedError,
    "NOTHING_TO_RETRY": NothingToRetryError,
    "UNKNOWN_TASK": UnknownTaskError,
    "INSTANCE_NOT_RESETTABLE": InstanceNotResettableError,
    "TASK_NOT_REACHED": TaskNotReachedError,
    "RESET_POINT_NOT_KEPT": ResetPointNotKeptError,
    "TASK_MOVED": TaskMovedError,
    "INSTANCE_ALREADY_SUSPENDED": InstanceAlreadySuspendedError,
    "INSTANCE_NOT_SUSPENDED": InstanceNotSuspendedError,
    "INSTANCE_NOT_FINISHED": InstanceNotFinishedError,
}

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
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def _rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, raw in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(raw, bytes):
            return status_pb2.Status.FromString(raw)
    return None


def error_from_rpc(error: grpc.aio.AioRpcError) -> OkraRpcError:
    """The typed error for a failed call, by reason, else by code, with its details."""
    violations: list[FieldViolation] = []
    preconditions: list[PreconditionViolation] = []
    info: ErrorInfo | None = None
    delay: float | None = None
    rich = _rich_status(error)
    for detail in rich.details if rich is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            preconditions.extend(
                PreconditionViolation(v.type, v.subject, v.description) for v in failure.violations
            )
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
    reason = info.reason if info is not None and info.domain == ERROR_DOMAIN else ""
    # A reason's class only if it agrees with the code, so `except NotFoundError` stays true.
    if issubclass(ERROR_BY_REASON.get(reason, cls), cls):
        cls = ERROR_BY_REASON.get(reason, cls)
    return cls(
        code,
        error.details() or "",
        field_violations=tuple(violations),
        precondition_violations=tuple(preconditions),
        error_info=info,
        retry_delay_s=delay,
    )
