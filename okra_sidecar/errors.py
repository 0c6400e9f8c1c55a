"""The sidecar's error tree and the reasons it reports; it imports neither grpc nor redis.

    OkraError                      (reason, metadata: what google.rpc.ErrorInfo carries)
    ├── NotFoundError
    ├── AlreadyExistsError
    ├── InvalidInputError          (field violations for google.rpc.BadRequest)
    │   └── PolicyLoadError        (a policy set refused whole, a violation per key)
    ├── DefinitionError            (a workflow file that cannot be loaded)
    ├── PolicyDeniedError
    ├── UnauthenticatedError
    ├── FailedPreconditionError    (the violation for google.rpc.PreconditionFailure)
    │   ├── InstanceChangedError   (the status a policy checked moved; re-check)
    │   └── DurabilityError        (Redis' persistence cannot give `durability`; no start)
    ├── ResourceExhaustedError     (the limit's policy key; when to retry)
    │   └── MessageTooLargeError   (a request over the size limit)
    ├── StoreUnavailableError
    └── StartupError               (serve cannot start here: names the setting to change)

api/status.py maps each class to a gRPC status code. `REASONS` below is the one list of the
reasons a client can see, with their status code, whether a retry can succeed, and what a
client should do; docs/errors.md is generated from it. A StartupError never reaches a call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

# google.rpc.ErrorInfo.domain of every error the sidecar sends.
ERROR_DOMAIN = "okra.dev"
# What workflow faults and failed effects carry as their RFC 7807 `type`, before the kind.
ERROR_TYPE_PREFIX = "https://serverlessworkflow.io/spec/1.0.0/errors/"


class Reason(StrEnum):
    """The stable cause of an error, sent as google.rpc.ErrorInfo.reason."""

    WORKFLOW_NOT_FOUND = "WORKFLOW_NOT_FOUND"
    INSTANCE_NOT_FOUND = "INSTANCE_NOT_FOUND"
    SCHEDULE_NOT_FOUND = "SCHEDULE_NOT_FOUND"
    WORKFLOW_VERSION_EXISTS = "WORKFLOW_VERSION_EXISTS"
    INVALID_FIELD = "INVALID_FIELD"
    INPUT_SCHEMA_MISMATCH = "INPUT_SCHEMA_MISMATCH"
    INVALID_POLICY_SET = "INVALID_POLICY_SET"
    INVALID_DEFINITION = "INVALID_DEFINITION"
    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_INVALID = "TOKEN_INVALID"
    POLICY_DENIED = "POLICY_DENIED"
    INSTANCE_ALREADY_FINISHED = "INSTANCE_ALREADY_FINISHED"
    CHANGED_CONCURRENTLY = "CHANGED_CONCURRENTLY"
    INSTANCE_ALREADY_SUSPENDED = "INSTANCE_ALREADY_SUSPENDED"
    INSTANCE_NOT_SUSPENDED = "INSTANCE_NOT_SUSPENDED"
    INSTANCE_NOT_FINISHED = "INSTANCE_NOT_FINISHED"
    INSTANCE_NOT_FAILED = "INSTANCE_NOT_FAILED"
    NOTHING_TO_RETRY = "NOTHING_TO_RETRY"
    UNKNOWN_TASK = "UNKNOWN_TASK"
    INSTANCE_NOT_RESETTABLE = "INSTANCE_NOT_RESETTABLE"
    TASK_NOT_REACHED = "TASK_NOT_REACHED"
    RESET_POINT_NOT_KEPT = "RESET_POINT_NOT_KEPT"
    TASK_MOVED = "TASK_MOVED"
    BULK_OPERATION_NOT_FOUND = "BULK_OPERATION_NOT_FOUND"
    BULK_OPERATION_FINISHED = "BULK_OPERATION_FINISHED"
    BULK_TOO_MANY_INSTANCES = "BULK_TOO_MANY_INSTANCES"
    MANUAL_RUNS_DISABLED = "MANUAL_RUNS_DISABLED"
    EVENTS_NOT_ROUTED = "EVENTS_NOT_ROUTED"
    SCHEDULE_DECLARED_BY_WORKFLOW = "SCHEDULE_DECLARED_BY_WORKFLOW"
    SCHEDULE_INPUT_MISMATCH = "SCHEDULE_INPUT_MISMATCH"
    SCHEDULE_UNREADABLE = "SCHEDULE_UNREADABLE"
    DURABILITY_NOT_POSSIBLE = "DURABILITY_NOT_POSSIBLE"
    RATE_LIMITED = "RATE_LIMITED"
    INSTANCE_LIMIT_REACHED = "INSTANCE_LIMIT_REACHED"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    REDIS_UNAVAILABLE = "REDIS_UNAVAILABLE"
    REPLICAS_NOT_ACKNOWLEDGED = "REPLICAS_NOT_ACKNOWLEDGED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class ReasonSpec:
    """What a reason means to a client.

    Attributes:
        code: The gRPC status code name the reason comes with.
        retryable: Whether the same call, repeated unchanged, can succeed (after the
            RetryInfo delay when one is sent); clients retry only these.
        action: What a client should do, for docs/errors.md.
        sent: False for reasons the sidecar logs or records but never returns to a caller.
    """

    code: str
    retryable: bool
    action: str
    sent: bool = True


REASONS: Mapping[Reason, ReasonSpec] = {
    Reason.WORKFLOW_NOT_FOUND: ReasonSpec(
        "NOT_FOUND",
        retryable=False,
        action="Check the workflow id (`workflow`); ListWorkflows shows the registered ones.",
    ),
    Reason.INSTANCE_NOT_FOUND: ReasonSpec(
        "NOT_FOUND",
        retryable=False,
        action=(
            "Check the instance id (`instance`); it may never have existed or was purged by "
            "retention."
        ),
    ),
    Reason.SCHEDULE_NOT_FOUND: ReasonSpec(
        "NOT_FOUND",
        retryable=False,
        action="Check the schedule id (`schedule`); ListSchedules shows the existing ones.",
    ),
    Reason.WORKFLOW_VERSION_EXISTS: ReasonSpec(
        "ALREADY_EXISTS",
        retryable=False,
        action=(
            "A registered version is immutable: bump `document.version` of the changed "
            "definition (refused when the sidecar starts)."
        ),
        sent=False,
    ),
    Reason.INVALID_FIELD: ReasonSpec(
        "INVALID_ARGUMENT",
        retryable=False,
        action=(
            "Fix the request fields named in the BadRequest field violations (`field` names "
            "the first)."
        ),
    ),
    Reason.INPUT_SCHEMA_MISMATCH: ReasonSpec(
        "INVALID_ARGUMENT",
        retryable=False,
        action=(
            "Make the input match the workflow's `input.schema` (a signal's payload: the "
            "schema its listen task declares in `metadata.signals`); the BadRequest lists "
            "each violation."
        ),
    ),
    Reason.INVALID_POLICY_SET: ReasonSpec(
        "INVALID_ARGUMENT",
        retryable=False,
        action="Fix the policy keys named in the BadRequest; nothing was changed.",
    ),
    Reason.INVALID_DEFINITION: ReasonSpec(
        "INVALID_ARGUMENT",
        retryable=False,
        action="Fix the workflow file at the JSON pointer in the message (start-up only).",
        sent=False,
    ),
    Reason.TOKEN_MISSING: ReasonSpec(
        "UNAUTHENTICATED",
        retryable=False,
        action="Send `authorization: Bearer <JWT>` metadata.",
    ),
    Reason.TOKEN_INVALID: ReasonSpec(
        "UNAUTHENTICATED",
        retryable=False,
        action=(
            "Get a new token: this one is malformed, expired, for another audience or signed "
            "with an unknown key."
        ),
    ),
    Reason.POLICY_DENIED: ReasonSpec(
        "PERMISSION_DENIED",
        retryable=False,
        action=(
            "The policy named in `policy` refuses this call for this caller; change the call "
            "or the policy."
        ),
    ),
    Reason.INSTANCE_ALREADY_FINISHED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "The instance (`instance`, now `status`) has ended; read its result with "
            "GetStatus instead."
        ),
    ),
    Reason.CHANGED_CONCURRENTLY: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=True,
        action=(
            "The instance or schedule changed while the call was checked; nothing was "
            "written, retry the call."
        ),
    ),
    Reason.INSTANCE_ALREADY_SUSPENDED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="The instance (`instance`) is suspended already; Resume it when it may go on.",
    ),
    Reason.INSTANCE_NOT_SUSPENDED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "Only a suspended instance can be resumed; `status` says what the instance "
            "(`instance`) is now."
        ),
    ),
    Reason.INSTANCE_NOT_FINISHED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "The instance (`instance`, now `status`) has not ended; Cancel it first, or wait "
            "for it to end."
        ),
    ),
    Reason.INSTANCE_NOT_FAILED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "Only a failed instance can be retried; `status` says what the instance "
            "(`instance`) is now."
        ),
    ),
    Reason.NOTHING_TO_RETRY: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "The instance (`instance`) failed outside any task (its workflow's timeout or "
            "input), so no task can run again; start a new instance."
        ),
    ),
    Reason.UNKNOWN_TASK: ReasonSpec(
        "INVALID_ARGUMENT",
        retryable=False,
        action="`task` must be a top-level task of the workflow; `tasks` lists them.",
    ),
    Reason.INSTANCE_NOT_RESETTABLE: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="Wait until the instance (`status`) ends or waits; Resume a suspended one.",
    ),
    Reason.TASK_NOT_REACHED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="The instance never reached `task`; pick a task its history shows started.",
    ),
    Reason.RESET_POINT_NOT_KEPT: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="The state at `task` outgrew the budget (`limit` bytes); reset to an earlier task.",
    ),
    Reason.TASK_MOVED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="`okra-sidecar migrate` requeued the task (`task`): drop it and keep polling.",
    ),
    Reason.BULK_OPERATION_NOT_FOUND: ReasonSpec(
        "NOT_FOUND",
        retryable=False,
        action="Check the bulk operation id (`operation`); ListBulkOperations shows them.",
    ),
    Reason.BULK_OPERATION_FINISHED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "The bulk operation (`operation`, now `state`) has ended; there is nothing left "
            "to cancel."
        ),
    ),
    Reason.BULK_TOO_MANY_INSTANCES: ReasonSpec(
        "RESOURCE_EXHAUSTED",
        retryable=False,
        action=(
            "The filter matches more instances than one bulk operation may act on (`limit`, "
            "`policy` when a policy set it); narrow the filter or split the work."
        ),
    ),
    Reason.MANUAL_RUNS_DISABLED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "This sidecar starts the workflow (`workflow`) only from its schedule; do not "
            "call Run for it."
        ),
    ),
    Reason.EVENTS_NOT_ROUTED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="Emit through a sidecar that routes events; every sidecar the CLI starts does.",
        sent=False,
    ),
    Reason.SCHEDULE_DECLARED_BY_WORKFLOW: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="Pause the schedule, or remove `schedule` from the definition and bump its version.",
    ),
    Reason.SCHEDULE_UNREADABLE: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "The stored schedule cannot be read (written outside the sidecar, or damaged): "
            "DeleteSchedule removes it; ListSchedules leaves it out."
        ),
    ),
    Reason.SCHEDULE_INPUT_MISMATCH: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "A schedule firing whose input no longer fits the schema is skipped (recorded on "
            "the schedule)."
        ),
        sent=False,
    ),
    Reason.DURABILITY_NOT_POSSIBLE: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "Configure Redis' persistence (or replicas) for the `durability` setting (refused "
            "when the sidecar starts)."
        ),
        sent=False,
    ),
    Reason.RATE_LIMITED: ReasonSpec(
        "RESOURCE_EXHAUSTED",
        retryable=True,
        action="Retry after the RetryInfo delay; `policy` names the rate limit.",
    ),
    Reason.INSTANCE_LIMIT_REACHED: ReasonSpec(
        "RESOURCE_EXHAUSTED",
        retryable=False,
        action=(
            "Too many unfinished instances (`policy` names the limit); start again once some "
            "have finished."
        ),
    ),
    Reason.MESSAGE_TOO_LARGE: ReasonSpec(
        "RESOURCE_EXHAUSTED",
        retryable=False,
        action=(
            "The request message is over the sidecar's 8 MiB limit (`size` and `limit` in "
            "bytes): send less in one call."
        ),
    ),
    Reason.REDIS_UNAVAILABLE: ReasonSpec(
        "UNAVAILABLE",
        retryable=True,
        action="Retry after the RetryInfo delay; a Run is safe to retry with a `request_id`.",
    ),
    Reason.REPLICAS_NOT_ACKNOWLEDGED: ReasonSpec(
        "UNAVAILABLE",
        retryable=True,
        action=(
            "The write was made but too few replicas confirmed it; retry (a Run with its "
            "`request_id`)."
        ),
    ),
    Reason.UNIMPLEMENTED: ReasonSpec(
        "UNIMPLEMENTED",
        retryable=False,
        action="This sidecar does not serve the rpc.",
    ),
    Reason.INTERNAL: ReasonSpec(
        "INTERNAL",
        retryable=False,
        action=(
            "A sidecar bug: report it with the time of the call; the sidecar log has the details."
        ),
    ),
}


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path and what rule it breaks."""

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


class OkraError(Exception):
    """Base of every error the sidecar raises on purpose.

    Attributes:
        reason: The stable cause, sent as ErrorInfo.reason; a subclass sets a default.
        metadata: ErrorInfo.metadata, naming the instance, workflow, schedule or policy.
    """

    default_reason: ClassVar[Reason] = Reason.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})


class NotFoundError(OkraError):
    """A workflow, instance or schedule that does not exist."""

    def __init__(self, message: str, *, reason: Reason, metadata: Mapping[str, str]) -> None:
        super().__init__(message, reason=reason, metadata=metadata)


class AlreadyExistsError(OkraError):
    """Something that may be created only once already is."""

    default_reason = Reason.WORKFLOW_VERSION_EXISTS


class InvalidInputError(OkraError):
    """A request that breaks a rule; `violations` names each bad field."""

    default_reason = Reason.INVALID_FIELD

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        *,
        reason: Reason | None = None,
    ) -> None:
        self.violations = violations or []
        first = {"field": self.violations[0].field} if self.violations else {}
        super().__init__(message, reason=reason, metadata=first)

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidInputError:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class PolicyLoadError(InvalidInputError):
    """A policy set that cannot be used; each violation names a key and its problem."""

    default_reason = Reason.INVALID_POLICY_SET


class DefinitionError(OkraError):
    """A workflow definition that cannot be loaded, with where and why."""

    default_reason = Reason.INVALID_DEFINITION

    def __init__(self, source: str, path: str, problem: str) -> None:
        location = f"{source} at {path}" if path else source
        super().__init__(f"{location}: {problem}")
        self.source = source
        self.path = path
        self.problem = problem


class PolicyDeniedError(OkraError):
    """A policy refused the call; `policy` names the rule that did."""

    default_reason = Reason.POLICY_DENIED

    def __init__(self, message: str, *, policy: str) -> None:
        super().__init__(message, metadata={"policy": policy})
        self.policy = policy


class UnauthenticatedError(OkraError):
    """A bearer token is required, or the one given cannot be verified."""

    default_reason = Reason.TOKEN_INVALID


class FailedPreconditionError(OkraError):
    """The target is in a state where the call makes no sense (e.g. already finished).

    `violation` says what must hold; it is sent as google.rpc.PreconditionFailure.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        violation: PreconditionViolation,
        metadata: Mapping[str, str],
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violation = violation


def instance_status_violation(instance_id: str, requirement: str) -> PreconditionViolation:
    """The precondition of an rpc on an instance: what its status must be."""
    return PreconditionViolation("INSTANCE_STATUS", f"instance/{instance_id}", requirement)


class InstanceChangedError(FailedPreconditionError):
    """The instance's status changed after a policy checked it; nothing was written."""

    def __init__(self, instance_id: str, status: str) -> None:
        super().__init__(
            f"instance {instance_id} changed to {status} while the call was being checked; "
            "retry the call",
            reason=Reason.CHANGED_CONCURRENTLY,
            violation=instance_status_violation(
                instance_id, "the status must not change while the call is checked"
            ),
            metadata={"instance": instance_id, "status": status},
        )
        self.instance_id = instance_id
        self.status = status


class DurabilityError(FailedPreconditionError):
    """The Redis server's persistence settings cannot give the configured durability."""

    def __init__(self, message: str) -> None:
        super().__init__(
            message,
            reason=Reason.DURABILITY_NOT_POSSIBLE,
            violation=PreconditionViolation(
                "REDIS_PERSISTENCE", "redis", "persistence must give the configured durability"
            ),
            metadata={},
        )


class ResourceExhaustedError(OkraError):
    """A rate or instance limit is reached; `policy` names it, `retry_after_s` says when."""

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        policy: str = "",
        retry_after_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        named = {**(metadata or {}), **({"policy": policy} if policy else {})}
        super().__init__(message, reason=reason, metadata=named)
        self.policy = policy
        self.retry_after_s = retry_after_s


class MessageTooLargeError(ResourceExhaustedError):
    """A request message over the sidecar's size limit; `size` and `limit` in bytes."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the request is {size} bytes, over the limit of {limit} bytes; send less in one call",
            reason=Reason.MESSAGE_TOO_LARGE,
            metadata={"size": str(size), "limit": str(limit)},
        )
        self.size = size
        self.limit = limit


class StoreUnavailableError(OkraError):
    """Redis cannot be reached; the call may be retried."""

    default_reason = Reason.REDIS_UNAVAILABLE


class StartupError(OkraError):
    """`serve` cannot start in this environment (a port taken, Redis unreachable, ...).

    The settings are well-formed but the world refuses them; the one-line message names the
    flag to change. `okra-sidecar serve` prints it and exits with 1.
    """


def instance_not_found(instance_id: str) -> NotFoundError:
    """The error for an instance id that names no instance."""
    return NotFoundError(
        f"instance {instance_id} does not exist",
        reason=Reason.INSTANCE_NOT_FOUND,
        metadata={"instance": instance_id},
    )


def instance_not_failed(instance_id: str, status: str) -> FailedPreconditionError:
    """The error for a Retry of an instance that has not failed."""
    return FailedPreconditionError(
        f"instance {instance_id} is {status}; only a failed instance can be retried",
        reason=Reason.INSTANCE_NOT_FAILED,
        violation=instance_status_violation(instance_id, "the instance must be failed"),
        metadata={"instance": instance_id, "status": status},
    )


def instance_kept_changing(instance_id: str, doing: str) -> FailedPreconditionError:
    """The error for an instance other writers kept changing while `doing` it."""
    return FailedPreconditionError(
        f"instance {instance_id} kept changing while it was {doing}; retry the call",
        reason=Reason.CHANGED_CONCURRENTLY,
        violation=instance_status_violation(
            instance_id, "the status must not change while the call applies"
        ),
        metadata={"instance": instance_id},
    )


def schedule_changed(schedule_id: str) -> FailedPreconditionError:
    """The error for a schedule that other writers kept changing under a call."""
    steady = "the schedule must not change while the call applies"
    return FailedPreconditionError(
        f"schedule {schedule_id} kept changing; retry the call",
        reason=Reason.CHANGED_CONCURRENTLY,
        violation=PreconditionViolation("SCHEDULE_REVISION", f"schedule/{schedule_id}", steady),
        metadata={"schedule": schedule_id},
    )
