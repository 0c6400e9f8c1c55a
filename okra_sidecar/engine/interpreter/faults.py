"""Workflow faults: the spec's standard error types as RFC 7807 problem details.

Two spellings of the standard error types are in use: dsl.md says runtimes raise
`https://serverlessworkflow.io/spec/1.0.0/errors/<kind>` while the CTK's try.feature filters on
`https://serverlessworkflow.io/dsl/errors/types/<kind>`. The rule of this runtime:

- it always raises the dsl.md spelling (ERROR_TYPE_PREFIX), whatever raised the error;
- an error filter (`catch.errors.with.type`) naming a standard type in either spelling matches
  both spellings (canonical_error_type() maps the CTK's onto dsl.md's);
- any other type, standard-looking or not, compares exactly as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from okra_sidecar.engine.definitions.expressions import ExpressionError
from okra_sidecar.errors import ERROR_TYPE_PREFIX

__all__ = [
    "ERROR_TYPE_ALIAS_PREFIX",
    "STANDARD_ERRORS",
    "WorkflowFaultError",
    "canonical_error_type",
    "error_matches",
    "expression_fault",
    "outside_error",
    "problem",
    "timeout_fault",
    "validation_fault",
]

ERROR_TYPE_ALIAS_PREFIX = "https://serverlessworkflow.io/dsl/errors/types/"
# Standard error types (dsl-reference.md "Standard Error Types"): default status and title.
STANDARD_ERRORS: Mapping[str, tuple[int, str]] = {
    "configuration": (400, "Configuration Error"),
    "validation": (400, "Validation Error"),
    "expression": (400, "Expression Error"),
    "authentication": (401, "Authentication Error"),
    "authorization": (403, "Authorization Error"),
    "timeout": (408, "Timeout"),
    "communication": (500, "Communication Error"),
    "runtime": (500, "Runtime Error"),
}
_FILTER_KEYS = {"detail": "detail", "details": "detail"}


class WorkflowFaultError(Exception):
    """An error raised while running a task; uncaught, it faults the workflow.

    `error` is the RFC 7807 problem. `depth` tells the interpreter how much of the running
    stack the error leaves: only `try` tasks below that depth may catch it (None: all of it).
    """

    def __init__(
        self, error: dict[str, Any], *, task: str | None = None, depth: int | None = None
    ) -> None:
        super().__init__(error.get("detail") or error.get("title") or error["type"])
        self.error = error
        # The reference of the faulted task, if a task faulted: `instance` may say otherwise.
        self.task = task if task is not None else _task_of(error["instance"])
        self.depth = depth
        self.reported = False  # whether `task.faulted` is in the history already


def _task_of(instance: str) -> str | None:
    return instance if instance.startswith(("/do/", "/use/")) else None


def problem(kind: str, *, detail: str, instance: str) -> dict[str, Any]:
    """A standard error (`kind` is e.g. 'expression') with its default status and title."""
    status, title = STANDARD_ERRORS[kind]
    return {
        "type": ERROR_TYPE_PREFIX + kind,
        "status": status,
        "title": title,
        "detail": detail,
        "instance": instance,
    }


def canonical_error_type(value: str) -> str:
    """The dsl.md spelling of a standard error type; any other type unchanged."""
    if value.startswith(ERROR_TYPE_ALIAS_PREFIX):
        kind = value[len(ERROR_TYPE_ALIAS_PREFIX) :]
        if kind in STANDARD_ERRORS:
            return ERROR_TYPE_PREFIX + kind
    return value


def error_matches(error_filter: Mapping[str, Any], error: Mapping[str, Any]) -> bool:
    """Whether `error` has every property of a `catch.errors.with` filter.

    `type` follows the spelling rule of the module docstring; `details` (the schema's name)
    and `detail` (RFC 7807's) both filter on the error's `detail`.
    """
    for key, expected in error_filter.items():
        if key == "type":
            actual = error.get("type")
            if not isinstance(actual, str) or not isinstance(expected, str):
                return False
            if canonical_error_type(expected) != canonical_error_type(actual):
                return False
        elif key == "status":
            actual = error.get("status")
            if isinstance(actual, bool) or isinstance(expected, bool) or actual != expected:
                return False
        elif error.get(_FILTER_KEYS.get(key, key)) != expected:
            return False
    return True


def outside_error(raw: Any, instance: str) -> dict[str, Any]:
    """The error an effect reported (an RFC 7807 problem), raised by the task at `instance`.

    Whatever the executor sent, the result has a string `type` (standard types in the dsl.md
    spelling), an integer `status`, `title` and `detail` strings or None, and `instance`, the
    task that raised it.
    """
    error = raw if isinstance(raw, dict) else {}
    kind = error.get("type")
    if not isinstance(kind, str) or not kind:
        kind = ERROR_TYPE_PREFIX + "runtime"
    kind = canonical_error_type(kind)
    status = error.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        default = STANDARD_ERRORS.get(kind.removeprefix(ERROR_TYPE_PREFIX))
        status = default[0] if default else 500
    title = error.get("title")
    detail = error.get("detail")
    if not isinstance(raw, dict):
        detail = f"the effect failed without a problem description: {raw!r}"
    return {
        "type": kind,
        "status": status,
        "title": title if isinstance(title, str) else None,
        "detail": detail if isinstance(detail, str) else None,
        "instance": instance,
    }


def expression_fault(exc: ExpressionError, instance: str) -> WorkflowFaultError:
    detail = f"expression '{exc.expression.strip()}' failed: {exc.message}"
    return WorkflowFaultError(problem("expression", detail=detail, instance=instance))


def validation_fault(what: str, violation: str, instance: str) -> WorkflowFaultError:
    return WorkflowFaultError(
        problem("validation", detail=f"{what}: {violation}", instance=instance)
    )


def timeout_fault(
    duration_ms: int, instance: str, *, depth: int | None = None
) -> WorkflowFaultError:
    detail = f"timed out after {duration_ms} ms"
    return WorkflowFaultError(problem("timeout", detail=detail, instance=instance), depth=depth)
