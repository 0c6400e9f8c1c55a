"""Runtime expression arguments ($context, $input, $task, $workflow...), built on demand."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from okra_sidecar import __version__
from okra_sidecar.engine.definitions.expressions import ARGUMENT_NAMES
from okra_sidecar.engine.definitions.tasks import TaskNode

__all__ = ["RUNTIME_NAME", "TaskArguments", "WorkflowScope", "datetime_descriptor"]

RUNTIME_NAME = "okra-sidecar"
_KEYS = (*ARGUMENT_NAMES, "now")


def datetime_descriptor(ms: int) -> dict[str, Any]:
    """The spec's dateTime descriptor of an epoch time in milliseconds."""
    iso = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return {
        "iso8601": iso.replace("+00:00", "Z"),
        "epoch": {"seconds": ms // 1000, "milliseconds": ms},
    }


class WorkflowScope(Protocol):
    """What the arguments need from the running turn."""

    now: int
    context: Any

    def workflow_descriptor(self) -> dict[str, Any]: ...

    def variable(self, name: str) -> Any:
        """A variable bound by an enclosing task (for.each, catch.as...), or None."""
        ...


class TaskArguments(Mapping[str, Any]):
    """The arguments of one task (or of the workflow when `node` is None).

    Expressions read only the arguments they name, so descriptors are built on first use.
    `now` (seconds) is the turn's clock, for jq's `now`. Any other name is a variable: from
    `variables` when given, else from the enclosing tasks of the running turn.
    """

    __slots__ = (
        "_descriptor",
        "_raw_output",
        "_scope",
        "authorization",
        "context",
        "input",
        "node",
        "output",
        "raw",
        "started",
        "variables",
    )

    def __init__(
        self,
        scope: WorkflowScope,
        node: TaskNode | None,
        raw: Any,
        started: int,
        *,
        variables: Mapping[str, Any] | None = None,
    ) -> None:
        self._scope = scope
        self._descriptor: dict[str, Any] | None = None
        self._raw_output: Any = None
        self.node = node
        self.raw = raw
        self.started = started
        self.context: Any = scope.context
        self.input: Any = None
        self.output: Any = None
        # The resolved authorization of a call ({scheme, parameter}), for `$authorization`.
        self.authorization: dict[str, Any] | None = None
        self.variables = variables

    def get(self, key: str, default: Any = None) -> Any:
        if key == "context":
            return self.context
        if key == "input":
            return self.input
        if key == "output":
            return self.output
        if key == "workflow":
            return self._scope.workflow_descriptor()
        if key == "task":
            return self._task_descriptor()
        if key == "runtime":
            return {"name": RUNTIME_NAME, "version": __version__, "metadata": {}}
        if key == "secrets":
            return {}  # no secret store yet
        if key == "now":
            return self._scope.now / 1000
        if key == "authorization":
            return self.authorization
        variables = self.variables
        if variables is not None and key in variables:
            return variables[key]
        return self._scope.variable(key)

    def __getitem__(self, key: str) -> Any:
        if key not in _KEYS:
            raise KeyError(key)
        return self.get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def __len__(self) -> int:
        return len(_KEYS)

    def set_raw_output(self, value: Any) -> None:
        """The task's raw output, for `$task.output` in output.as and export.as."""
        self._descriptor = None
        self._raw_output = value

    def _task_descriptor(self) -> dict[str, Any] | None:
        node = self.node
        if node is None:
            return None
        if self._descriptor is None:
            self._descriptor = {
                "name": node.name,
                "reference": node.reference,
                "definition": node.definition,
                "input": self.raw,
                "output": self._raw_output,
                "startedAt": datetime_descriptor(self.started),
            }
        return self._descriptor
