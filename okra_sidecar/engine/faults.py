"""Workflow faults: the spec's standard error types as RFC 7807 problem details."""

from __future__ import annotations

from typing import Any

from okra_sidecar.engine.expressions import ExpressionError

__all__ = [
    "ERROR_TYPE_PREFIX",
    "WorkflowFaultError",
    "expression_fault",
    "problem",
    "timeout_fault",
    "validation_fault",
]

ERROR_TYPE_PREFIX = "https://serverlessworkflow.io/spec/1.0.0/errors/"
# Standard error types (dsl-reference.md "Standard Error Types"): default status and title.
_STANDARD: dict[str, tuple[int, str]] = {
    "configuration": (400, "Configuration Error"),
    "validation": (400, "Validation Error"),
    "expression": (400, "Expression Error"),
    "authentication": (401, "Authentication Error"),
    "authorization": (403, "Authorization Error"),
    "timeout": (408, "Timeout"),
    "communication": (500, "Communication Error"),
    "runtime": (500, "Runtime Error"),
}


class WorkflowFaultError(Exception):
    """An uncaught error that faults the workflow; `error` is the RFC 7807 problem."""

    def __init__(self, error: dict[str, Any], *, task: str | None = None) -> None:
        super().__init__(error.get("detail") or error.get("title") or error["type"])
        self.error = error
        # The reference of the faulted task, if a task faulted: `instance` may say otherwise.
        self.task = task if task is not None else _task_of(error["instance"])


def _task_of(instance: str) -> str | None:
    return instance if instance.startswith("/do/") else None


def problem(kind: str, *, detail: str, instance: str) -> dict[str, Any]:
    """A standard error (`kind` is e.g. 'expression') with its default status and title."""
    status, title = _STANDARD[kind]
    return {
        "type": ERROR_TYPE_PREFIX + kind,
        "status": status,
        "title": title,
        "detail": detail,
        "instance": instance,
    }


def expression_fault(exc: ExpressionError, instance: str) -> WorkflowFaultError:
    detail = f"expression '{exc.expression.strip()}' failed: {exc.message}"
    return WorkflowFaultError(problem("expression", detail=detail, instance=instance))


def validation_fault(what: str, violation: str, instance: str) -> WorkflowFaultError:
    return WorkflowFaultError(
        problem("validation", detail=f"{what}: {violation}", instance=instance)
    )


def timeout_fault(duration_ms: int, instance: str) -> WorkflowFaultError:
    detail = f"timed out after {duration_ms} ms"
    return WorkflowFaultError(problem("timeout", detail=detail, instance=instance))
