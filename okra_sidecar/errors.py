"""The sidecar's error tree; it imports neither grpc nor redis.

    OkraError
    ├── NotFoundError
    ├── AlreadyExistsError
    ├── InvalidInputError          (field violations for google.rpc.BadRequest)
    ├── DefinitionError            (a workflow file that cannot be loaded)
    ├── PolicyDeniedError
    ├── FailedPreconditionError
    ├── ResourceExhaustedError
    └── StoreUnavailableError

api/status.py maps each class to a gRPC status code.
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


class FailedPreconditionError(OkraError):
    """The target is in a state where the call makes no sense (e.g. already finished)."""


class ResourceExhaustedError(OkraError):
    """A rate or instance limit is reached."""


class StoreUnavailableError(OkraError):
    """Redis cannot be reached; the call may be retried."""
