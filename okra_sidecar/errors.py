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

api/status.py maps each class to a gRPC status code. `REASONS` (reasons.py, re-exported here)
is the one list of the reasons a client can see, with their status code, whether a retry can
succeed, and what a client should do; docs/errors.md is generated from it. A StartupError
never reaches a call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

# Re-exported: the reasons belong with the errors that carry them.
from okra_sidecar.reasons import REASONS as REASONS
from okra_sidecar.reasons import Reason as Reason
from okra_sidecar.reasons import ReasonSpec as ReasonSpec

# google.rpc.ErrorInfo.domain of every error the sidecar sends.
ERROR_DOMAIN = "okra.dev"
# What workflow faults and failed effects carry as their RFC 7807 `type`, before the kind.
ERROR_TYPE_PREFIX = "https://serverlessworkflow.io/spec/1.0.0/errors/"


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
