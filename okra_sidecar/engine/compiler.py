"""Validate task lists as a definition loads and compile them into TaskNodes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from okra_sidecar.engine.durations import DurationSpec, parse_duration
from okra_sidecar.engine.expressions import (
    CompiledValue,
    ExpressionError,
    compile_field,
    compile_value,
    is_expression,
)
from okra_sidecar.engine.tasks import (
    CONTINUE,
    END,
    EXIT,
    Consumption,
    EventFilter,
    FlowDirective,
    ListenSpec,
    SchemaCheck,
    SwitchCase,
    TaskList,
    TaskNode,
    compile_schema,
)
from okra_sidecar.errors import DefinitionError

__all__ = ["SUPPORTED_TASKS", "TASK_TYPES", "TaskCompiler", "pointer"]

TASK_TYPES: tuple[str, ...] = (
    "call",
    "do",
    "emit",
    "for",
    "fork",
    "listen",
    "raise",
    "run",
    "set",
    "switch",
    "try",
    "wait",
)
SUPPORTED_TASKS = frozenset({"do", "set", "switch", "raise", "listen", "wait"})
_BASE_KEYS = frozenset({"if", "input", "output", "export", "timeout", "then", "metadata"})
_TYPE_KEYS: Mapping[str, frozenset[str]] = {
    "do": frozenset({"do"}),
    "set": frozenset({"set"}),
    "switch": frozenset({"switch"}),
    "raise": frozenset({"raise"}),
    "listen": frozenset({"listen", "foreach"}),
    "wait": frozenset({"wait"}),
}
_DIRECTIVES = {"continue": CONTINUE, "exit": EXIT, "end": END}
_ERROR_KEYS = ("type", "status", "instance", "title", "detail")
_STRING_ATTRIBUTES = frozenset(
    {"id", "source", "type", "time", "subject", "datacontenttype", "dataschema", "specversion"}
)
_READ_MODES = ("data", "envelope", "raw")


def pointer(*parts: str | int) -> str:
    """A JSON pointer from raw parts (RFC 6901 escaping of `~` and `/`)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class TaskCompiler:
    """Walks task lists, raising DefinitionError(source, path, problem) at the first problem."""

    def __init__(
        self,
        source: str,
        *,
        errors: Mapping[str, Any],
        timeouts: Mapping[str, DurationSpec],
    ) -> None:
        self.source = source
        self.errors = errors
        self.timeouts = timeouts
        self.lists: dict[str, TaskList] = {}
        self.nodes: dict[str, TaskNode] = {}

    def fail(self, path: str, problem: str) -> NoReturn:
        raise DefinitionError(self.source, path, problem)

    # -- task lists and tasks ----------------------------------------------------------------

    def task_list(self, value: Any, path: str, *, key: str = "do") -> TaskList:
        if not isinstance(value, list):
            self.fail(path, f"'{key}' must be a list of tasks, not {_kind(value)}")
        if not value:
            self.fail(path, f"'{key}' must list at least one task")
        names: dict[str, int] = {}
        for index, item in enumerate(value):
            if not isinstance(item, dict) or len(item) != 1:
                self.fail(
                    pointer_join(path, index),
                    "each item of a task list must map one task name to its definition",
                )
            name = next(iter(item))
            if not isinstance(name, str) or not name:
                self.fail(pointer_join(path, index), "a task name must be a non-empty string")
            if name in names:
                self.fail(
                    pointer_join(path, index, name),
                    f"task name '{name}' is used twice in this list "
                    f"(also at {pointer_join(path, names[name], name)})",
                )
            names[name] = index
        tasks = tuple(
            self.task(name, body, pointer_join(path, index, name), names)
            for index, item in enumerate(value)
            for name, body in item.items()
        )
        task_list = TaskList(path, tasks)
        self.lists[path] = task_list
        return task_list

    def task(self, name: str, body: Any, path: str, names: Mapping[str, int]) -> TaskNode:
        if not isinstance(body, dict):
            self.fail(path, f"task '{name}' must be an object, not {_kind(body)}")
        kinds = [k for k in TASK_TYPES if k in body]
        if "for" in kinds and "do" in kinds:
            kinds.remove("do")  # a `for` task carries its body under `do`
        if not kinds:
            self.fail(
                path, f"task '{name}' has no task type; expected one of {', '.join(TASK_TYPES)}"
            )
        if len(kinds) > 1:
            listed = " and ".join(f"'{k}'" for k in kinds)
            self.fail(path, f"task '{name}' has more than one task type: {listed}")
        kind = kinds[0]
        if kind == "run":
            run = body.get("run")
            for process in ("container", "script", "shell"):
                if isinstance(run, dict) and process in run:
                    self.fail(
                        pointer_join(path, "run", process),
                        f"task '{name}' uses 'run.{process}', which is not supported by this "
                        "runtime",
                    )
        if kind not in SUPPORTED_TASKS:
            self.fail(path, f"task '{name}' uses '{kind}', which this runtime does not support yet")
        allowed = _BASE_KEYS | _TYPE_KEYS[kind]
        for key in body:
            if key not in allowed:
                self.fail(pointer_join(path, key), f"unknown property '{key}' in a '{kind}' task")
        if "foreach" in body:
            self.fail(
                pointer_join(path, "foreach"),
                f"task '{name}' uses 'listen.foreach', which this runtime does not support yet",
            )
        node_body = self._body(kind, name, body, path, names)
        input_from, input_schema = self.io(body.get("input"), pointer_join(path, "input"), "from")
        output_as, output_schema = self.io(body.get("output"), pointer_join(path, "output"), "as")
        export_as, export_schema = self.io(body.get("export"), pointer_join(path, "export"), "as")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            self.fail(pointer_join(path, "metadata"), "'metadata' must be an object")
        node = TaskNode(
            name=name,
            reference=path,
            kind=kind,
            definition=body,
            body=node_body,
            then=self.directive(body.get("then"), pointer_join(path, "then"), names),
            if_=self.condition(body["if"], pointer_join(path, "if")) if "if" in body else None,
            input_from=input_from,
            input_schema=input_schema,
            output_as=output_as,
            output_schema=output_schema,
            export_as=export_as,
            export_schema=export_schema,
            timeout=self.timeout(body["timeout"], pointer_join(path, "timeout"))
            if "timeout" in body
            else None,
        )
        self.nodes[path] = node
        return node

    def _body(self, kind: str, name: str, body: dict[str, Any], path: str, names: Any) -> Any:
        builders: dict[str, Callable[[Any, str], Any]] = {
            "do": lambda v, p: self.task_list(v, p).reference,
            "set": self.set_body,
            "switch": lambda v, p: self.switch_body(v, p, names),
            "raise": self.raise_body,
            "listen": self.listen_body,
            "wait": self.duration,
        }
        return builders[kind](body[kind], pointer_join(path, kind))

    def directive(self, value: Any, path: str, names: Mapping[str, int]) -> FlowDirective:
        if value is None:
            return CONTINUE
        if not isinstance(value, str):
            self.fail(path, "'then' must be continue, exit, end or the name of a task")
        directive = _DIRECTIVES.get(value)
        if directive is not None:
            return directive
        if value not in names:
            self.fail(path, f"'{value}' is not a task in this list")
        return FlowDirective("goto", names[value], value)

    # -- expressions, data flow, schemas, durations --------------------------------------------

    def condition(self, value: Any, path: str) -> CompiledValue:
        if not isinstance(value, str):
            self.fail(path, f"a condition must be a runtime expression string, not {_kind(value)}")
        return self.field(value, path)

    def field(self, value: Any, path: str) -> CompiledValue:
        """A field that is an expression even without `${ }` when it is a string."""
        try:
            return compile_field(value)
        except ExpressionError as exc:
            self.fail(path, f"invalid expression '{exc.expression}': {exc.message}")

    def value(self, value: Any, path: str) -> CompiledValue:
        """A value whose `${ }` strings are expressions."""
        try:
            return compile_value(value)
        except ExpressionError as exc:
            self.fail(path, f"invalid expression '{exc.expression}': {exc.message}")

    def io(
        self, value: Any, path: str, key: str
    ) -> tuple[CompiledValue | None, SchemaCheck | None]:
        """`input` ({schema, from}), `output` or `export` ({schema, as})."""
        if value is None:
            return None, None
        label = path.rsplit("/", 1)[-1]
        if not isinstance(value, dict):
            self.fail(path, f"'{label}' must be an object with '{key}' and/or 'schema'")
        for k in value:
            if k not in (key, "schema"):
                self.fail(pointer_join(path, k), f"unknown property '{k}' in '{label}'")
        transform = None
        if key in value:
            raw = value[key]
            if not isinstance(raw, str | dict):
                self.fail(
                    pointer_join(path, key),
                    f"'{label}.{key}' must be a runtime expression or an object",
                )
            transform = self.field(raw, pointer_join(path, key))
        schema = (
            self.schema(value["schema"], pointer_join(path, "schema"))
            if ("schema" in value)
            else None
        )
        return transform, schema

    def schema(self, value: Any, path: str) -> SchemaCheck:
        document = schema_document(value, path, self.fail)
        try:
            return compile_schema(document)
        except ValueError as exc:
            inner = pointer_join(path, "document") if "document" in value else path
            self.fail(inner, str(exc))

    def duration(self, value: Any, path: str) -> DurationSpec:
        try:
            return parse_duration(value)
        except ExpressionError as exc:
            self.fail(path, f"invalid expression '{exc.expression}': {exc.message}")
        except ValueError as exc:
            self.fail(path, str(exc))

    def timeout(self, value: Any, path: str) -> DurationSpec:
        if isinstance(value, str):
            found = self.timeouts.get(value)
            if found is None:
                self.fail(path, f"'{value}' is not a timeout defined in use.timeouts")
            return found
        if not isinstance(value, dict) or set(value) != {"after"}:
            self.fail(
                path, "'timeout' must be {after: <duration>} or the name of a use.timeouts entry"
            )
        return self.duration(value["after"], pointer_join(path, "after"))

    # -- task bodies -----------------------------------------------------------------------------

    def set_body(self, value: Any, path: str) -> CompiledValue:
        if isinstance(value, dict):
            if not value:
                self.fail(path, "'set' needs at least one property")
            return self.value(value, path)
        if isinstance(value, str):
            return self.value(value, path)
        self.fail(path, f"'set' must be an object or a runtime expression, not {_kind(value)}")

    def switch_body(
        self, value: Any, path: str, names: Mapping[str, int]
    ) -> tuple[SwitchCase, ...]:
        if not isinstance(value, list) or not value:
            self.fail(path, "'switch' must be a non-empty list of cases")
        cases: list[SwitchCase] = []
        default: str | None = None
        for index, item in enumerate(value):
            item_path = pointer_join(path, index)
            if not isinstance(item, dict) or len(item) != 1:
                self.fail(item_path, "each switch case must map one case name to its definition")
            case_name, case = next(iter(item.items()))
            case_path = pointer_join(item_path, case_name)
            if not isinstance(case, dict):
                self.fail(case_path, f"switch case '{case_name}' must be an object")
            for key in case:
                if key not in ("when", "then"):
                    self.fail(pointer_join(case_path, key), f"unknown property '{key}' in a case")
            if "then" not in case:
                self.fail(case_path, f"switch case '{case_name}' needs 'then'")
            when = None
            if "when" in case:
                when = self.condition(case["when"], pointer_join(case_path, "when"))
            elif default is not None:
                self.fail(
                    case_path,
                    f"switch has more than one default case (a case without 'when'): "
                    f"'{default}' and '{case_name}'",
                )
            else:
                default = case_name
            then = self.directive(case["then"], pointer_join(case_path, "then"), names)
            cases.append(SwitchCase(case_name, when, then))
        return tuple(cases)

    def raise_body(self, value: Any, path: str) -> CompiledValue:
        if not isinstance(value, dict):
            self.fail(path, "'raise' must be an object with 'error'")
        for key in value:
            if key != "error":
                self.fail(pointer_join(path, key), f"unknown property '{key}' in 'raise'")
        if "error" not in value:
            self.fail(path, "'raise' needs 'error'")
        error = value["error"]
        error_path = pointer_join(path, "error")
        if isinstance(error, str):
            if error not in self.errors:
                self.fail(error_path, f"'{error}' is not an error defined in use.errors")
            error = self.errors[error]
        else:
            self.check_error(error, error_path)
        return self.value(error, error_path)

    def check_error(self, value: Any, path: str) -> None:
        """An inline error: `type` and `status` required, RFC 7807 fields only."""
        if not isinstance(value, dict):
            self.fail(path, "an error must be an object with 'type' and 'status', or a name")
        for key in value:
            if key not in _ERROR_KEYS:
                self.fail(pointer_join(path, key), f"unknown property '{key}' in an error")
        if not isinstance(value.get("type"), str) or not value["type"]:
            self.fail(pointer_join(path, "type"), "an error needs 'type', a URI string")
        status = value.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            self.fail(pointer_join(path, "status"), "an error needs 'status', an integer")
        for key in ("instance", "title", "detail"):
            if key in value and not isinstance(value[key], str):
                self.fail(pointer_join(path, key), f"error '{key}' must be a string")
        self.value(value, path)

    def listen_body(self, value: Any, path: str) -> ListenSpec:
        if not isinstance(value, dict):
            self.fail(path, "'listen' must be an object with 'to'")
        for key in value:
            if key not in ("to", "read"):
                self.fail(pointer_join(path, key), f"unknown property '{key}' in 'listen'")
        if "to" not in value:
            self.fail(path, "'listen' needs 'to'")
        read = value.get("read", "data")
        if read not in _READ_MODES:
            self.fail(pointer_join(path, "read"), "'read' must be one of data, envelope, raw")
        return ListenSpec(self.consumption(value["to"], pointer_join(path, "to")), read)

    def consumption(self, value: Any, path: str, *, nested: bool = False) -> Consumption:
        label = path.rsplit("/", 1)[-1]
        if not isinstance(value, dict):
            self.fail(path, f"'{label}' must be an object with one of 'one', 'any', 'all'")
        for key in value:
            if key not in ("one", "any", "all", "until"):
                self.fail(pointer_join(path, key), f"unknown property '{key}' in '{label}'")
        modes = [m for m in ("one", "any", "all") if m in value]
        if len(modes) != 1:
            self.fail(path, f"'{label}' needs exactly one of 'one', 'any', 'all'")
        mode = modes[0]
        mode_path = pointer_join(path, mode)
        if mode == "one":
            filters: tuple[EventFilter, ...] = (self.event_filter(value["one"], mode_path),)
        else:
            items = value[mode]
            if not isinstance(items, list):
                self.fail(mode_path, f"'{mode}' must be a list of event filters")
            filters = tuple(
                self.event_filter(item, pointer_join(mode_path, i)) for i, item in enumerate(items)
            )
        until_expression = until = None
        if "until" in value:
            until_path = pointer_join(path, "until")
            if nested:
                self.fail(until_path, "'until' cannot be nested inside 'until'")
            if mode != "any":
                self.fail(until_path, "'until' applies only to 'any'")
            raw = value["until"]
            if isinstance(raw, str):
                until_expression = self.field(raw, until_path)
            else:
                until = self.consumption(raw, until_path, nested=True)
        return Consumption(mode, filters, until_expression, until)

    def event_filter(self, value: Any, path: str) -> EventFilter:
        if not isinstance(value, dict):
            self.fail(path, "an event filter must be an object with 'with'")
        for key in value:
            if key == "correlate":
                self.fail(
                    pointer_join(path, key),
                    "event correlation ('correlate') is something this runtime does not "
                    "support yet",
                )
            if key != "with":
                self.fail(pointer_join(path, key), f"unknown property '{key}' in an event filter")
        if "with" not in value:
            self.fail(path, "an event filter needs 'with'")
        attributes = value.get("with")
        with_path = pointer_join(path, "with")
        if not isinstance(attributes, dict) or not attributes:
            self.fail(with_path, "'with' must be an object naming at least one event attribute")
        constants: list[tuple[str, CompiledValue]] = []
        dynamic: list[tuple[str, CompiledValue]] = []
        for name, expected in attributes.items():
            attr_path = pointer_join(with_path, name)
            if name in _STRING_ATTRIBUTES and not isinstance(expected, str):
                self.fail(attr_path, f"event attribute '{name}' must be a string")
            compiled = self.value(expected, attr_path)
            target = dynamic if _has_expression(expected) else constants
            target.append((name, compiled))
        return EventFilter(tuple(constants + dynamic))


def _has_expression(value: Any) -> bool:
    if is_expression(value):
        return True
    if isinstance(value, dict):
        return any(_has_expression(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_expression(v) for v in value)
    return False


def pointer_join(base: str, *parts: str | int) -> str:
    """`base` (already a pointer) extended by raw parts."""
    return base + pointer(*parts)


def schema_document(value: Any, path: str, fail: Callable[[str, str], NoReturn]) -> Any:
    """The JSON schema inside a DSL `schema` ({format, document}), or a plain inline schema."""
    if not isinstance(value, dict):
        fail(path, "'schema' must be an object")
    if "resource" in value:
        fail(
            pointer_join(path, "resource"),
            "external schema resources are not supported by this runtime; give the schema "
            "inline under 'document'",
        )
    if "document" not in value and set(value) <= {"format"}:
        fail(path, "'schema' needs 'document'")
    fmt = value.get("format", "json") if "document" in value else "json"
    if not isinstance(fmt, str) or fmt.split(":", 1)[0] != "json":
        fail(
            pointer_join(path, "format"),
            f"schema format '{fmt}' is not supported by this runtime (only json)",
        )
    if "document" in value:
        for key in value:
            if key not in ("format", "document"):
                fail(pointer_join(path, key), f"unknown property '{key}' in 'schema'")
        return value["document"]
    return value  # a plain JSON schema written inline
