"""Runtime expressions: jq programs compiled once, evaluated against data and runtime arguments."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

import jq
import orjson

from okra_sidecar.engine.runtime import board as turn_board
from okra_sidecar.errors import OkraError

__all__ = [
    "ALWAYS_EXPRESSION_FIELDS",
    "ARGUMENT_NAMES",
    "NO_VARIABLES",
    "CompiledExpression",
    "CompiledValue",
    "ConstantValue",
    "ExpressionError",
    "TemplateValue",
    "compile_expression",
    "compile_field",
    "compile_value",
    "evaluate",
    "evaluate_condition",
    "evaluate_value",
    "is_expression",
]

# The runtime expression arguments of dsl.md ("Runtime expression arguments").
ARGUMENT_NAMES = (
    "context",
    "input",
    "output",
    "workflow",
    "task",
    "runtime",
    "secrets",
    "authorization",
)
# Fields that hold an expression even when written without `${ }` (the CTK writes them bare).
ALWAYS_EXPRESSION_FIELDS = frozenset(
    {"when", "if", "for.in", "input.from", "output.as", "export.as"}
)

# Names a definition binds for the tasks inside it (for.each/at, catch.as, foreach.item/at).
NO_VARIABLES: frozenset[str] = frozenset()
_ARGUMENTS = frozenset(ARGUMENT_NAMES)
_VAR_RE = re.compile(r"\$([A-Za-z_]\w*)\b")
_NOW_RE = re.compile(r"\bnow\b")
_ENV_RE = re.compile(r"\benv\b|\$ENV\b")
# `.`, `.a.b`, `$input`, `$context.user.id`: evaluated in Python, without a jq round trip.
_PATH_RE = re.compile(
    r"^\s*(?:\$(?P<root>[A-Za-z_]\w*))?(?P<path>(?:\.[A-Za-z_]\w*)+|\.)?\s*$", re.ASCII
)
_JQ_TYPES: dict[type, str] = {
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


class ExpressionError(OkraError):
    """A runtime expression that does not compile or fails to evaluate."""

    def __init__(self, expression: str, message: str) -> None:
        super().__init__(f"{message} (expression: {expression})")
        self.expression = expression
        self.message = message


def is_expression(value: Any) -> bool:
    """Whether `value` is a `${ ... }` runtime expression string."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return text.startswith("${") and text.endswith("}")


def _inner(text: str) -> str:
    """The jq source of an expression: the text inside `${ }`, or the text itself."""
    stripped = text.strip()
    if stripped.startswith("${") and stripped.endswith("}"):
        return stripped[2:-1]
    return text


class CompiledValue(Protocol):
    """Anything the interpreter can evaluate: a constant, an expression or a template."""

    def evaluate(self, data: Any, args: Mapping[str, Any]) -> Any: ...


class ConstantValue:
    """A value with no expression inside: evaluates to itself, uncopied."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def evaluate(self, data: Any, args: Mapping[str, Any]) -> Any:
        return self.value


def _program_prefix(names: tuple[str, ...], uses_now: bool, uses_env: bool) -> str:
    parts = [f".{name} as ${name} | " for name in names]
    if uses_now:
        # `now` reads the turn's clock so that a re-run turn gives the same result.
        parts.append(".now as $__now | def now: $__now; ")
    if uses_env:
        # Expressions must not read the sidecar's environment (credentials live there).
        parts.append("def env: {}; {} as $ENV | ")
    if names or uses_now:
        parts.append(".data | ")
    return "".join(parts)


def _jq_message(exc: Exception) -> str:
    """jq's message without the wrapper's source echo and positions."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    first = first.removeprefix("jq: error: ").removeprefix("jq: error (at <unknown>): ")
    return re.sub(r" at <top-level>, line \d+(, column \d+)?:?$", "", first)


def _compile_message(source: str, exc: ValueError, names: tuple[str, ...]) -> str:
    """jq's message for `source` alone: the wrapper's closing parenthesis must not show."""
    bindings = "".join(f". as ${name} | " for name in sorted(_ARGUMENTS.union(names)))
    try:
        jq.compile(bindings + source)
    except ValueError as plain:
        return _jq_message(plain)
    return _jq_message(exc)


def _feed_text(value: Any) -> str:
    """An evaluation's input as JSON text, for jq's `input_text`.

    jq's `input_value` encodes with the stdlib's json.dumps, about as dear as the jq run of
    a small filter; orjson takes a tenth of that. NaN and infinities become null, as the
    store writes them (store/jsontext.py), so a value reads the same in every turn; the
    stdlib is the fallback for what orjson refuses (integers beyond 64 bits), and raises
    TypeError for what is not JSON at all, as input_value did.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)


def _feed(data: Any, args: Mapping[str, Any], names: tuple[str, ...], uses_now: bool) -> Any:
    if not names and not uses_now:
        return data
    feed = {name: args.get(name) for name in names}
    feed["data"] = data
    if uses_now:
        now = args.get("now")
        feed["now"] = time.time() if now is None else now
    return feed


class CompiledExpression:
    """One jq expression, compiled once; `evaluate` gives its first output (null when none)."""

    __slots__ = ("_path", "_program", "_root", "names", "source", "text", "uses_now")

    def __init__(
        self, text: str, *, bare: bool = False, variables: frozenset[str] = NO_VARIABLES
    ) -> None:
        self.text = text
        self.source = text if bare else _inner(text)
        if not self.source.strip():
            raise ExpressionError(text, "empty expression")
        # Runtime arguments and the variables in scope are bound only when the text names them.
        known = _ARGUMENTS | variables if variables else _ARGUMENTS
        self.names = tuple(sorted({n for n in _VAR_RE.findall(self.source) if n in known}))
        self.uses_now = bool(_NOW_RE.search(self.source))
        uses_env = bool(_ENV_RE.search(self.source))
        program = _program_prefix(self.names, self.uses_now, uses_env)
        # The parentheses keep `import`/`include` out (no module is read from disk) and the
        # newline ends any trailing `# comment` in the expression.
        program += f"(\n{self.source}\n)"
        try:
            self._program: Any = jq.compile(program)
        except ValueError as exc:
            raise ExpressionError(text, _compile_message(self.source, exc, self.names)) from None
        self._root: str | None = None
        self._path: tuple[str, ...] | None = None
        match = _PATH_RE.match(self.source)
        if match and (match["root"] or match["path"]) and not uses_env:
            root = match["root"]
            if root is None or root in known:
                self._root = root
                path = match["path"] or "."
                self._path = tuple(part for part in path.split(".") if part)

    def __repr__(self) -> str:
        return f"CompiledExpression({self.text!r})"

    @property
    def runs_in_python(self) -> bool:
        """A plain path (`.a.b`, `$input.x`): walked in Python, never handed to jq."""
        return self._path is not None

    def evaluate(self, data: Any, args: Mapping[str, Any]) -> Any:
        if self._path is not None:
            return self._walk(data if self._root is None else args.get(self._root))
        # Marked for the engine's watchdog, which stops an evaluation over its budget.
        marks = turn_board.current()
        marks.begin_evaluation()
        try:
            feed = _feed(data, args, self.names, self.uses_now)
            return self._program.input_text(_feed_text(feed)).first()
        except StopIteration:
            return None
        except ValueError as exc:
            raise ExpressionError(self.text, _jq_message(exc)) from None
        except TypeError as exc:
            raise ExpressionError(self.text, f"value is not JSON: {exc}") from None
        finally:
            marks.end_evaluation()

    def _walk(self, value: Any) -> Any:
        # Same results as jq's `.a.b`: null passes through, a non-object cannot be indexed.
        for key in self._path or ():
            if value is None:
                return None
            if not isinstance(value, dict):
                kind = _JQ_TYPES.get(type(value), "value")
                raise ExpressionError(self.text, f'Cannot index {kind} with string ("{key}")')
            value = value.get(key)
        return value


_CACHE: dict[tuple[str, bool, frozenset[str]], CompiledExpression] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_LIMIT = 8192


def compile_expression(
    text: str, *, bare: bool = False, variables: frozenset[str] = NO_VARIABLES
) -> CompiledExpression:
    """Compile `${ expr }` (or, with `bare`, the jq text itself) once and cache it.

    `variables` names the variables in scope (e.g. a `for.each` item): `$name` reads them
    from the arguments, like the runtime arguments (`$input`, `$context`...).

    Raises:
        ExpressionError: the expression does not compile.
    """
    key = (text, bare, variables)
    compiled = _CACHE.get(key)
    if compiled is None:
        compiled = CompiledExpression(text, bare=bare, variables=variables)
        with _CACHE_LOCK:
            if len(_CACHE) >= _CACHE_LIMIT:
                _CACHE.clear()
            _CACHE[key] = compiled
    return compiled


def compile_field(value: Any, *, variables: frozenset[str] = NO_VARIABLES) -> CompiledValue:
    """Compile a field that is always an expression when it is a string (`if`, `output.as`...).

    Raises:
        ExpressionError: an expression inside does not compile.
    """
    if isinstance(value, str):
        return compile_expression(value, bare=not is_expression(value), variables=variables)
    return compile_value(value, variables=variables)


class TemplateValue:
    """A list or mapping with expressions inside, evaluated as one structure."""

    __slots__ = ("_combined", "_names", "_shape", "_uses_now", "text")

    def __init__(self, shape: Any, expressions: list[CompiledExpression], text: str) -> None:
        self._shape = shape
        self.text = text
        self._combined: Any = None
        self._names: tuple[str, ...] = ()
        self._uses_now = False
        slow = [e for e in expressions if e._path is None]
        if len(slow) >= 2:
            # Several jq leaves: one program builds the whole value, one jq call instead of N.
            names = sorted({n for e in expressions for n in e.names})
            self._names = tuple(names)
            self._uses_now = any(e.uses_now for e in expressions)
            uses_env = any(_ENV_RE.search(e.source) for e in expressions)
            body = _jq_source(shape)
            try:
                prefix = _program_prefix(self._names, self._uses_now, uses_env)
                self._combined = jq.compile(prefix + body)
            except ValueError:
                self._combined = None  # e.g. a constant jq cannot spell: walk leaf by leaf

    def evaluate(self, data: Any, args: Mapping[str, Any]) -> Any:
        if self._combined is not None:
            marks = turn_board.current()
            marks.begin_evaluation()
            try:
                feed = _feed(data, args, self._names, self._uses_now)
                return self._combined.input_text(_feed_text(feed)).first()
            except (ValueError, TypeError, StopIteration):
                pass  # walk again below to report the leaf that failed
            finally:
                marks.end_evaluation()
        return _build(self._shape, data, args)


def _jq_source(shape: Any) -> str:
    if isinstance(shape, CompiledExpression):
        return f"([first((\n{shape.source}\n))] | .[0])"
    if isinstance(shape, dict):
        items = ", ".join(f"{json.dumps(k)}: ({_jq_source(v)})" for k, v in shape.items())
        return "{" + items + "}"
    if isinstance(shape, list):
        return "[" + ", ".join(f"({_jq_source(v)})" for v in shape) + "]"
    if isinstance(shape, ConstantValue):
        return json.dumps(shape.value, allow_nan=False)
    return json.dumps(shape, allow_nan=False)


def _build(shape: Any, data: Any, args: Mapping[str, Any]) -> Any:
    if isinstance(shape, CompiledExpression):
        return shape.evaluate(data, args)
    if isinstance(shape, ConstantValue):
        return shape.value
    if isinstance(shape, dict):
        return {k: _build(v, data, args) for k, v in shape.items()}
    return [_build(v, data, args) for v in shape]


def _shape_of(value: Any, found: list[CompiledExpression], variables: frozenset[str]) -> Any:
    """Replace each expression by its compiled form and each constant subtree by a ConstantValue."""
    if is_expression(value):
        compiled = compile_expression(value, variables=variables)
        found.append(compiled)
        return compiled
    if isinstance(value, dict):
        before = len(found)
        shape = {k: _shape_of(v, found, variables) for k, v in value.items()}
        return shape if len(found) > before else ConstantValue(value)
    if isinstance(value, list):
        before = len(found)
        items = [_shape_of(v, found, variables) for v in value]
        return items if len(found) > before else ConstantValue(value)
    return ConstantValue(value)


def compile_value(value: Any, *, variables: frozenset[str] = NO_VARIABLES) -> CompiledValue:
    """Compile every `${ }` string inside `value`; a value without any stays a constant.

    Raises:
        ExpressionError: an expression inside does not compile.
    """
    found: list[CompiledExpression] = []
    shape = _shape_of(value, found, variables)
    if isinstance(shape, CompiledExpression | ConstantValue):
        return shape
    return TemplateValue(shape, found, json.dumps(value, default=str))


def evaluate(expression: str | CompiledValue, data: Any, args: Mapping[str, Any]) -> Any:
    """Evaluate one expression (text or compiled) against `data` with runtime `args`.

    Raises:
        ExpressionError: the expression does not compile or fails.
    """
    if isinstance(expression, str):
        expression = compile_expression(expression, bare=not is_expression(expression))
    return expression.evaluate(data, args)


def evaluate_value(value: Any, data: Any, args: Mapping[str, Any]) -> Any:
    """Evaluate every `${ }` string inside `value`; returns `value` itself when none is inside.

    Raises:
        ExpressionError: an expression inside does not compile or fails.
    """
    if isinstance(value, str):
        return compile_expression(value).evaluate(data, args) if is_expression(value) else value
    if isinstance(value, dict):
        changed = False
        result: dict[str, Any] = {}
        for key, item in value.items():
            new = evaluate_value(item, data, args)
            changed = changed or new is not item
            result[key] = new
        return result if changed else value
    if isinstance(value, list):
        items = [evaluate_value(item, data, args) for item in value]
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        return items if changed else value
    return value


def evaluate_condition(expression: str | CompiledValue, data: Any, args: Mapping[str, Any]) -> bool:
    """Evaluate an `if`/`when` condition: jq truthiness (only false and null are false).

    Raises:
        ExpressionError: the expression does not compile or fails.
    """
    result = evaluate(expression, data, args)
    return result is not None and result is not False
