"""RFC 7807 problems for effects that fail, with the spec's standard error types."""

from __future__ import annotations

from typing import Any

from okra_sidecar.errors import ERROR_TYPE_PREFIX

__all__ = ["EffectFailedError", "problem"]

TITLES = {
    "communication": "Communication error",
    "timeout": "Timeout",
    "runtime": "Runtime error",
    "validation": "Validation error",
    "configuration": "Configuration error",
}


def problem(kind: str, status: int, detail: str, *, title: str | None = None) -> dict[str, Any]:
    """A problem of the standard type `kind` (communication, timeout, runtime, ...)."""
    return {
        "type": ERROR_TYPE_PREFIX + kind,
        "status": status,
        "title": title or TITLES.get(kind, kind.title()),
        "detail": detail,
    }


class EffectFailedError(Exception):
    """An effect ended in an error the workflow sees (and may catch): `error` is the problem."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("detail") or error.get("title"))
        self.error = error
