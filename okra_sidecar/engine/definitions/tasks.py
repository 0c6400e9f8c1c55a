"""The compiled form of a definition: task lists and task nodes the interpreter walks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import exceptions as schema_exceptions
from jsonschema import validators
from jsonschema.protocols import Validator

from okra_sidecar.engine.definitions.durations import DurationSpec
from okra_sidecar.engine.definitions.expressions import CompiledValue
from okra_sidecar.engine.definitions.schema_refs import ref_problem

__all__ = [
    "CONTINUE",
    "END",
    "EXIT",
    "CatchSpec",
    "Consumption",
    "Correlation",
    "EventFilter",
    "FlowDirective",
    "ForSpec",
    "ForeachSpec",
    "ForkSpec",
    "ListenSpec",
    "RetryPolicy",
    "SchemaCheck",
    "SwitchCase",
    "TaskList",
    "TaskNode",
    "TrySpec",
    "WorkflowPlan",
    "compile_schema",
]


@dataclass(frozen=True, slots=True)
class FlowDirective:
    """What to do after a task: `continue`, `exit`, `end` or `goto` the task at `target`."""

    kind: str
    target: int = -1
    name: str = ""


CONTINUE = FlowDirective("continue")
EXIT = FlowDirective("exit")
END = FlowDirective("end")


# A value so deeply nested that checking it against a recursive schema exhausts the stack.
TOO_DEEP = "the value nests too deeply to check against its schema; send a flatter value"


class SchemaCheck:
    """A JSON schema compiled once; `problem` names the first violation, or None."""

    __slots__ = ("schema", "validator")

    def __init__(self, schema: dict[str, Any], validator: Validator) -> None:
        self.schema = schema
        self.validator = validator

    def problem(self, value: Any) -> str | None:
        try:
            if self.validator.is_valid(value):
                return None
            error = schema_exceptions.best_match(self.validator.iter_errors(value))
        except RecursionError:
            return TOO_DEEP
        if error is None:  # pragma: no cover - is_valid said there is one
            return "invalid"
        where = "".join(f"/{part}" for part in error.absolute_path)
        return f"{error.message} (at {where})" if where else error.message


def compile_schema(schema: Any) -> SchemaCheck:
    """Check a JSON schema (its `$schema` picks the draft, 2020-12 by default) and compile it.

    Raises:
        ValueError: the schema itself is invalid.
    """
    if not isinstance(schema, dict):
        raise ValueError("a JSON schema must be an object")
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except schema_exceptions.SchemaError as exc:
        where = "".join(f"/{part}" for part in exc.absolute_path)
        raise ValueError(
            f"invalid JSON schema: {exc.message}" + (f" (at {where})" if where else "")
        ) from None
    found = ref_problem(schema)
    if found is not None:
        raise ValueError(f"invalid JSON schema: {found[1]} (at {found[0] or 'the root'})")
    return SchemaCheck(schema, cls(schema))


@dataclass(frozen=True, slots=True, eq=False)
class SwitchCase:
    name: str
    when: CompiledValue | None
    then: FlowDirective


@dataclass(frozen=True, slots=True, eq=False)
class Correlation:
    """One correlation key of an event filter: `source` is the text of `from`, for routers."""

    key: str
    source: str
    extract: CompiledValue
    expect: CompiledValue | None = None


@dataclass(frozen=True, slots=True, eq=False)
class EventFilter:
    """Attribute name -> expected value; constants come first so that cheap checks run first."""

    attributes: tuple[tuple[str, CompiledValue], ...]
    correlate: tuple[Correlation, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class Consumption:
    """An event consumption strategy: `one`, `any` (optionally `until`) or `all`."""

    mode: str
    filters: tuple[EventFilter, ...]
    until_expression: CompiledValue | None = None
    until: Consumption | None = None


@dataclass(frozen=True, slots=True, eq=False)
class ForeachSpec:
    """`listen.foreach`: the tasks run for each consumed event, one event at a time."""

    item: str
    at: str
    do: str | None
    output_as: CompiledValue | None = None
    output_schema: SchemaCheck | None = None
    export_as: CompiledValue | None = None
    export_schema: SchemaCheck | None = None


@dataclass(frozen=True, slots=True, eq=False)
class ListenSpec:
    to: Consumption
    read: str
    foreach: ForeachSpec | None = None
    # Signal name -> the schema its payload must match (the task's `metadata.signals`).
    payloads: Mapping[str, SchemaCheck] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class ForSpec:
    """`for`: `do` (a TaskList reference) for each item of `collection`, while `condition`."""

    each: str
    at: str
    collection: CompiledValue
    condition: CompiledValue | None
    do: str


@dataclass(frozen=True, slots=True, eq=False)
class ForkSpec:
    """`fork`: one single-task TaskList reference per branch."""

    branches: tuple[str, ...]
    compete: bool


@dataclass(frozen=True, slots=True, eq=False)
class RetryPolicy:
    """A retry policy; durations are resolved when an error is caught."""

    when: CompiledValue | None = None
    except_when: CompiledValue | None = None
    delay: DurationSpec | None = None
    backoff: str = "constant"
    count: int | None = None
    attempt_duration: DurationSpec | None = None
    duration: DurationSpec | None = None
    jitter: tuple[DurationSpec, DurationSpec] | None = None


@dataclass(frozen=True, slots=True, eq=False)
class CatchSpec:
    errors: dict[str, Any] | None
    as_: str
    when: CompiledValue | None = None
    except_when: CompiledValue | None = None
    retry: RetryPolicy | None = None
    do: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class TrySpec:
    do: str
    catch: CatchSpec


@dataclass(frozen=True, slots=True, eq=False)
class TaskNode:
    """One task with everything its run needs compiled; `body` depends on `kind`.

    `body` is: do -> the reference of its TaskList; set -> CompiledValue; switch ->
    tuple[SwitchCase, ...]; raise -> CompiledValue of the error; listen -> ListenSpec;
    wait -> DurationSpec; for -> ForSpec; fork -> ForkSpec; try -> TrySpec; call, emit and
    run -> a body of calls.py.
    """

    name: str
    reference: str
    kind: str
    definition: dict[str, Any]
    body: Any
    then: FlowDirective = CONTINUE
    if_: CompiledValue | None = None
    input_from: CompiledValue | None = None
    input_schema: SchemaCheck | None = None
    output_as: CompiledValue | None = None
    output_schema: SchemaCheck | None = None
    export_as: CompiledValue | None = None
    export_schema: SchemaCheck | None = None
    timeout: DurationSpec | None = None


@dataclass(frozen=True, slots=True, eq=False)
class TaskList:
    reference: str
    tasks: tuple[TaskNode, ...]


@dataclass(frozen=True, slots=True, eq=False)
class WorkflowPlan:
    """Every task list and task of a workflow by JSON pointer reference, plus workflow I/O."""

    lists: dict[str, TaskList]
    nodes: dict[str, TaskNode]
    input_from: CompiledValue | None = None
    input_schema: SchemaCheck | None = None
    output_as: CompiledValue | None = None
    output_schema: SchemaCheck | None = None
    timeout: DurationSpec | None = None

    ROOT = "/do"
