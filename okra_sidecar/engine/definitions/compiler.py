"""Validate task lists as a definition loads and compile them into TaskNodes."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

from okra_sidecar.engine.definitions import calls
from okra_sidecar.engine.definitions.call_compiler import (
    compile_emit,
    compile_grpc,
    compile_http,
    compile_openapi,
    compile_run_workflow,
    compile_worker,
)
from okra_sidecar.engine.definitions.durations import DurationSpec, parse_duration
from okra_sidecar.engine.definitions.expressions import (
    ARGUMENT_NAMES,
    NO_VARIABLES,
    CompiledValue,
    ExpressionError,
    compile_field,
    compile_value,
)
from okra_sidecar.engine.definitions.listen_compiler import compile_listen
from okra_sidecar.engine.definitions.pointers import kind_of, pointer, pointer_join
from okra_sidecar.engine.definitions.tasks import (
    CONTINUE,
    END,
    EXIT,
    FlowDirective,
    ForkSpec,
    ForSpec,
    SchemaCheck,
    SwitchCase,
    TaskList,
    TaskNode,
    compile_schema,
)
from okra_sidecar.engine.definitions.try_compiler import compile_try
from okra_sidecar.errors import DefinitionError

__all__ = ["SUPPORTED_TASKS", "TASK_TYPES", "TaskCompiler", "pointer", "pointer_join"]

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
SUPPORTED_TASKS = frozenset(TASK_TYPES)
_BASE_KEYS = frozenset({"if", "input", "output", "export", "timeout", "then", "metadata"})
_TYPE_KEYS: Mapping[str, frozenset[str]] = {
    "call": frozenset({"call", "with"}),
    "do": frozenset({"do"}),
    "emit": frozenset({"emit"}),
    "for": frozenset({"for", "while", "do"}),
    "fork": frozenset({"fork"}),
    "listen": frozenset({"listen", "foreach"}),
    "raise": frozenset({"raise"}),
    "run": frozenset({"run"}),
    "set": frozenset({"set"}),
    "switch": frozenset({"switch"}),
    "try": frozenset({"try", "catch"}),
    "wait": frozenset({"wait"}),
}
_DIRECTIVES = {"continue": CONTINUE, "exit": EXIT, "end": END}
_ERROR_KEYS = ("type", "status", "instance", "title", "detail")
_VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_VARIABLES = frozenset({*ARGUMENT_NAMES, "ENV", "__loc__", "__prog_args"})
_PROCESSES = ("container", "script", "shell", "workflow")


class TaskCompiler:
    """Walks task lists, raising DefinitionError(source, path, problem) at the first problem.

    `variables` is the set of variable names in scope where the compiler is (for.each,
    catch.as...): expressions compiled there may read them.
    """

    def __init__(
        self,
        source: str,
        *,
        errors: Mapping[str, Any],
        timeouts: Mapping[str, DurationSpec],
        retries: Mapping[str, Any] | None = None,
        authentications: Mapping[str, Any] | None = None,
        functions: Mapping[str, Any] | None = None,
    ) -> None:
        self.source = source
        self.errors = errors
        self.timeouts = timeouts
        self.retries: Mapping[str, Any] = retries or {}
        self.authentications: Mapping[str, Any] = authentications or {}
        self.functions: Mapping[str, Any] = functions or {}
        self.lists: dict[str, TaskList] = {}
        self.nodes: dict[str, TaskNode] = {}
        self.variables: frozenset[str] = NO_VARIABLES
        self._compiled_functions: dict[str, str] = {}
        self._compiling: list[str] = []

    def fail(self, path: str, problem: str) -> NoReturn:
        raise DefinitionError(self.source, path, problem)

    @contextmanager
    def scope(self, *names: tuple[str, str]) -> Iterator[None]:
        """Compile with more variables in scope; each is (name, pointer of its declaration)."""
        for name, path in names:
            if not isinstance(name, str) or not _VARIABLE_RE.fullmatch(name):
                self.fail(path, f"'{name}' is not a valid variable name (letters, digits, _)")
            if name in _RESERVED_VARIABLES:
                self.fail(path, f"'{name}' is a reserved name; choose another variable name")
        outer = self.variables
        self.variables = outer | {name for name, _ in names}
        try:
            yield
        finally:
            self.variables = outer

    # -- task lists and tasks ----------------------------------------------------------------

    def task_list(self, value: Any, path: str, *, key: str = "do", jumps: bool = True) -> TaskList:
        """Compile a task list; with `jumps` False (fork branches) no task may `then` jump."""
        if not isinstance(value, list):
            self.fail(path, f"'{key}' must be a list of tasks, not {kind_of(value)}")
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
        targets: Mapping[str, int] = names if jumps else {}
        tasks = tuple(
            self.task(name, body, pointer_join(path, index, name), targets)
            for index, item in enumerate(value)
            for name, body in item.items()
        )
        task_list = TaskList(path, tasks)
        self.lists[path] = task_list
        return task_list

    def task(self, name: str, body: Any, path: str, names: Mapping[str, int]) -> TaskNode:
        if not isinstance(body, dict):
            self.fail(path, f"task '{name}' must be an object, not {kind_of(body)}")
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
        if kind == "call":
            target = body.get("call")
            if isinstance(target, str) and target in calls.UNSUPPORTED_CALLS:
                self.fail(
                    pointer_join(path, "call"),
                    f"task '{name}' uses 'call: {target}', which is not supported by this runtime",
                )
        allowed = _BASE_KEYS | _TYPE_KEYS[kind]
        for key in body:
            if key not in allowed:
                self.fail(pointer_join(path, key), f"unknown property '{key}' in a '{kind}' task")
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
        if kind == "call":
            return self.call_body(name, body, path)
        if kind == "for":
            return self.for_body(body, path)
        if kind == "try":
            return compile_try(self, body, path)
        if kind == "listen":
            return compile_listen(self, body, path)
        builders: dict[str, Callable[[Any, str], Any]] = {
            "do": lambda v, p: self.task_list(v, p).reference,
            "emit": lambda v, p: compile_emit(self, v, p),
            "fork": self.fork_body,
            "raise": self.raise_body,
            "run": self.run_body,
            "set": self.set_body,
            "switch": lambda v, p: self.switch_body(v, p, names),
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
        if not names:
            self.fail(path, f"a fork branch cannot jump to '{value}'; use continue, exit or end")
        if value not in names:
            self.fail(path, f"'{value}' is not a task in this list")
        return FlowDirective("goto", names[value], value)

    # -- expressions, data flow, schemas, durations --------------------------------------------

    def condition(self, value: Any, path: str) -> CompiledValue:
        if not isinstance(value, str):
            self.fail(
                path, f"a condition must be a runtime expression string, not {kind_of(value)}"
            )
        return self.field(value, path)

    def field(self, value: Any, path: str) -> CompiledValue:
        """A field that is an expression even without `${ }` when it is a string."""
        try:
            return compile_field(value, variables=self.variables)
        except ExpressionError as exc:
            self.fail(path, f"invalid expression '{exc.expression}': {exc.message}")

    def value(self, value: Any, path: str) -> CompiledValue:
        """A value whose `${ }` strings are expressions."""
        try:
            return compile_value(value, variables=self.variables)
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
            return parse_duration(value, variables=self.variables)
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
        self.fail(path, f"'set' must be an object or a runtime expression, not {kind_of(value)}")

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

    def for_body(self, body: dict[str, Any], path: str) -> ForSpec:
        loop = body["for"]
        loop_path = pointer_join(path, "for")
        if not isinstance(loop, dict):
            self.fail(loop_path, "'for' must be an object with 'in' (and 'each', 'at')")
        for key in loop:
            if key not in ("each", "in", "at"):
                self.fail(pointer_join(loop_path, key), f"unknown property '{key}' in 'for'")
        if "in" not in loop:
            self.fail(loop_path, "'for' needs 'in', the collection to enumerate")
        if not isinstance(loop["in"], str):
            self.fail(pointer_join(loop_path, "in"), "'in' must be a runtime expression")
        collection = self.field(loop["in"], pointer_join(loop_path, "in"))
        each = loop.get("each", "item")
        at = loop.get("at", "index")
        if each == at:
            self.fail(loop_path, f"'each' and 'at' must name different variables, not both '{at}'")
        if "do" not in body:
            self.fail(path, "a 'for' task needs 'do', the tasks to run for each item")
        with self.scope(
            (each, pointer_join(loop_path, "each")), (at, pointer_join(loop_path, "at"))
        ):
            condition = None
            if "while" in body:
                condition = self.condition(body["while"], pointer_join(path, "while"))
            do = self.task_list(body["do"], pointer_join(path, "do")).reference
        return ForSpec(each, at, collection, condition, do)

    def fork_body(self, value: Any, path: str) -> ForkSpec:
        if not isinstance(value, dict):
            self.fail(path, "'fork' must be an object with 'branches'")
        for key in value:
            if key not in ("branches", "compete"):
                self.fail(pointer_join(path, key), f"unknown property '{key}' in 'fork'")
        if "branches" not in value:
            self.fail(path, "'fork' needs 'branches', the tasks to run concurrently")
        compete = value.get("compete", False)
        if not isinstance(compete, bool):
            self.fail(pointer_join(path, "compete"), "'compete' must be true or false")
        branches = self.task_list(
            value["branches"], pointer_join(path, "branches"), key="branches", jumps=False
        )
        # Each branch runs as its own one-task list, so that it ends with its task.
        references: list[str] = []
        for index, node in enumerate(branches.tasks):
            reference = pointer_join(branches.reference, index)
            self.lists[reference] = TaskList(reference, (node,))
            references.append(reference)
        return ForkSpec(tuple(references), compete)

    def call_body(self, name: str, body: dict[str, Any], path: str) -> Any:
        target = body["call"]
        call_path = pointer_join(path, "call")
        arguments = body.get("with")
        with_path = pointer_join(path, "with")
        if not isinstance(target, str) or not target:
            self.fail(call_path, "'call' must name a function: http, grpc, openapi or a custom one")
        if target == "http":
            return compile_http(self, name, arguments, with_path)
        if target == "grpc":
            return compile_grpc(self, name, arguments, with_path)
        if target == "openapi":
            return compile_openapi(self, name, arguments, with_path)
        if target in self.functions:
            reference = self.function(target, call_path)
            if arguments is not None and not isinstance(arguments, dict):
                self.fail(with_path, "'with' must be an object of the function's arguments")
            compiled = None if arguments is None else self.value(arguments, with_path)
            return calls.FunctionCall(target, reference, compiled)
        if calls.is_catalog_reference(target):
            self.fail(
                call_path,
                f"task '{name}' calls '{target}', a cataloged or remote function, which is not "
                "supported by this runtime; define it in use.functions or name a worker function",
            )
        return compile_worker(self, target, arguments, with_path)

    def function(self, name: str, path: str) -> str:
        """The TaskList reference of a `use.functions` entry, compiled on first use."""
        found = self._compiled_functions.get(name)
        if found is not None:
            return found
        if name in self._compiling:
            chain = " -> ".join([*self._compiling[self._compiling.index(name) :], name])
            self.fail(path, f"function '{name}' calls itself ({chain})")
        self._compiling.append(name)
        outer = self.variables
        self.variables = NO_VARIABLES  # a function sees only its own input, not the caller's
        try:
            reference = pointer("use", "functions", name)
            node = self.task(name, self.functions[name], reference, {name: 0})
            self.lists[reference] = TaskList(reference, (node,))
        finally:
            self.variables = outer
            self._compiling.pop()
        self._compiled_functions[name] = reference
        return reference

    def run_body(self, value: Any, path: str) -> calls.RunWorkflow:
        if not isinstance(value, dict):
            self.fail(path, "'run' must be an object with 'workflow'")
        processes = [p for p in _PROCESSES if p in value]
        if processes != ["workflow"]:
            self.fail(path, "'run' needs exactly one process to run: here, 'workflow'")
        return compile_run_workflow(self, value, path)


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
