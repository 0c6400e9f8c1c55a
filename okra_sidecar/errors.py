"""The sidecar's error tree; it imports neither grpc nor redis.

    OkraError
    ├── NotFoundError
    ├── AlreadyExistsError
    ├── InvalidInputError          (field violations for google.rpc.BadRequest)
    │   └── PolicyLoadError        (a policy set refused whole, a violation per key)
    ├── DefinitionError            (a workflow file that cannot be loaded)
    ├── PolicyDeniedError
    ├── UnauthenticatedError
    ├── FailedPreconditionError
    │   ├── InstanceChangedError   (the status a policy checked moved; re-check)
    │   └── DurabilityError        (Redis' persistence cannot give `durability`; no start)
    ├── ResourceExhaustedError     (the limit's policy key; when to retry)
    ├── StoreUnavailableError
    └── StartupError               (serve cannot start here: names the setting to change)

api/status.py maps each class to a gRPC status code; a StartupError never reaches a call.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path and what rule it breaks."""

    field: str
    description: str


class OkraError(Exception):
    """Base of every error the sidecar raises on purpose."""


class NotFoundError(OkraError):
    """A workflow or instance that does not exist."""


class AlreadyExistsError(OkraError):
    """Something that may be created only once already is."""


class InvalidInputError(OkraError):
    """A request that breaks a rule; `violations` names each bad field."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidInputError:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class PolicyLoadError(InvalidInputError):
    """A policy set that cannot be used; each violation names a key and its problem."""


class DefinitionError(OkraError):
    """A workflow definition that cannot be loaded, with where and why."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        location = f"{source} at {path}" if path else source
        super().__init__(f"{location}: {problem}")
        self.source = source
        self.path = path
        self.problem = problem


class PolicyDeniedError(OkraError):
    """A policy refused the call; `policy` names the rule that did."""

    def __init__(self, message: str, *, policy: str) -> None:
        super().__init__(message)
        self.policy = policy


class UnauthenticatedError(OkraError):
    """A bearer token is required, or the one given cannot be verified."""


class FailedPreconditionError(OkraError):
    """The target is in a state where the call makes no sense (e.g. already finished)."""


class InstanceChangedError(FailedPreconditionError):
    """The instance's status changed after a policy checked it; nothing was written."""

    def __init__(self, instance_id: str, status: str) -> None:
        super().__init__(
            f"instance {instance_id} changed to {status} while the call was being checked; "
            "retry the call"
        )
        self.instance_id = instance_id
        self.status = status


class DurabilityError(FailedPreconditionError):
    """The Redis server's persistence settings cannot give the configured durability."""


class ResourceExhaustedError(OkraError):
    """A rate or instance limit is reached; `policy` names it, `retry_after_s` says when."""

    def __init__(
        self, message: str, *, policy: str = "", retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.policy = policy
        self.retry_after_s = retry_after_s


class StoreUnavailableError(OkraError):
    """Redis cannot be reached; the call may be retried."""


class StartupError(OkraError):
    """`serve` cannot start in this environment (a port taken, Redis unreachable, ...).

    The settings are well-formed but the world refuses them; the one-line message names the
    flag to change. `okra-sidecar serve` prints it and exits with 1.
    """
