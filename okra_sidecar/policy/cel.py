"""CEL conditions: compiled and name-checked when policies load, evaluated per call.

cel-python offers two runners sharing one process-wide parser. The sidecar uses only the
CompiledRunner (it transpiles to Python and evaluates ~5x faster); it is not thread-safe, so
every evaluation happens on the event loop's thread. Creating the first Environment costs
tens of milliseconds, so `CelEngine` makes one at startup and keeps it.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import (
    CELEvalError,
    CELUnsupportedError,
    Phase1Transpiler,
    Phase2Transpiler,
    Transpiler,
    TranspilerTree,
)

# celpy logs every evaluation error at ERROR level; a failed condition is our denial to report.
logging.getLogger("celpy").setLevel(logging.CRITICAL)

# Open maps accept any member below them; `None` marks one (claims, metadata, tags).
OPEN = None
SCHEMA: dict[str, Any] = {
    "request": {"method": {}, "auth": {"claims": OPEN, "peer": {}}, "metadata": OPEN},
    "workflow": {"id": {}, "fullId": {}, "namespace": {}, "name": {}, "version": {}},
    "instance": {"id": {}, "status": {}, "workflow": {}, "tags": OPEN},
    "service": {"name": {}, "namespace": {}},
    "event": {"type": {}, "source": {}, "subject": {}},
    "schedule": {"id": {}, "workflow": {}, "owner": OPEN},
    "task": {"queue": {}},
    # A bulk operation: what it does when it starts, its id after.
    "bulk": {"action": {}, "dryRun": {}, "id": {}},
    "env": OPEN,  # members are checked against the allow-list instead
}
# Macros whose first argument names a variable bound inside the call.
Tree = lark.Tree[Any]
# Outcomes remembered per condition, by the values it read (cleared when full).
MEMO_SIZE = 4096
BINDING_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
# The parser and transpiler recurse per nested bracket; far below Python's recursion limit.
MAX_NESTING = 32
MAX_SOURCE_CHARS = 4096


class CelCompileError(ValueError):
    """A condition that cannot be used: bad syntax or a name the activation lacks."""


class CelEvaluationError(RuntimeError):
    """A condition that failed at run time; the call it guards is denied."""


@dataclass(frozen=True)
class CelProgram:
    """One compiled condition and the source it came from."""

    source: str
    runner: celpy.Runner
    env_names: frozenset[str] = frozenset()  # the `env.X` names it reads
    roots: frozenset[str] = frozenset()  # the top-level names it reads (request, workflow...)
    paths: tuple[tuple[str, ...], ...] = ()  # every member path it reads
    _memo: dict[tuple[Any, ...], bool | str] = field(
        default_factory=dict, compare=False, repr=False
    )

    def decide(
        self, values: Mapping[str, Any], activation: Callable[[], Mapping[str, celtypes.Value]]
    ) -> bool:
        """`evaluate`, remembering the outcome for the values this condition reads.

        A condition reads nothing but the values at its member paths, and CEL has no clock and
        no randomness, so the same values always give the same outcome (or the same error).
        `values` is the activation as plain data, `activation` builds the CEL one on a miss.
        """
        key = tuple(_frozen(_lookup(values, path)) for path in self.paths)
        known = self._memo.get(key)
        if known is None:
            try:
                known = self.evaluate(activation())
            except CelEvaluationError as exc:
                known = str(exc)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = known
        if isinstance(known, str):
            raise CelEvaluationError(known)
        return known

    def evaluate(self, activation: Mapping[str, celtypes.Value]) -> bool:
        """True or False; anything else (an error, a non-bool) raises CelEvaluationError."""
        try:
            result = self.runner.evaluate(dict(activation))
        except (CELEvalError, CELUnsupportedError) as exc:
            raise CelEvaluationError(describe_error(exc)) from None
        except (TypeError, ValueError, KeyError, ZeroDivisionError) as exc:
            raise CelEvaluationError(f"{type(exc).__name__}: {exc}") from None
        if isinstance(result, CELEvalError):
            raise CelEvaluationError(describe_error(result))
        # The compiled runner gives a Python bool for some results, e.g. `a || (has(b) && c)`.
        if not isinstance(result, celtypes.BoolType | bool):
            raise CelEvaluationError(
                f"the condition gave {type(result).__name__} {result!r}, not true or false"
            )
        return bool(result)


_MISSING = ("missing",)


def _lookup(values: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = values
    for name in path:
        if not isinstance(value, Mapping) or name not in value:
            return _MISSING
        value = value[name]
    return value


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a value, typed, so that 1, 1.0 and true stay apart."""
    if value is _MISSING:
        return value
    if isinstance(value, dict | list):
        return ("json", json.dumps(value, sort_keys=True, default=str))
    return (type(value).__name__, value)


def describe_error(exc: BaseException) -> str:
    """The innermost message of celpy's nested (message, type, args) error tuples."""
    message = str(exc)
    args: Any = exc.args
    while (
        isinstance(args, tuple)
        and len(args) == 3
        and isinstance(args[0], str)
        and isinstance(args[1], type)
    ):
        message = args[0]
        args = args[2]
    return message


class _HasPhase1Transpiler(Phase1Transpiler):
    """celpy's first pass, with `has()` giving a CEL bool.

    celpy 0.5 transpiles `has(e.f)` to a Python `bool`, which its CEL operators refuse:
    `!has(x)` is "no such overload", and `has(x) && x == 1` fails when `x` is missing
    instead of being false, so a documented guard denied every call.
    """

    def ident_arg(self, tree: TranspilerTree) -> None:
        super().ident_arg(tree)
        if isinstance(tree.children[0], lark.Token) and tree.children[0].value == "has":
            tree.transpiled = f"celpy.celtypes.BoolType({tree.transpiled})"


class _HasTranspiler(Transpiler):
    def transpile(self) -> None:
        # Transpiler.transpile with the first pass above; the second is celpy's own.
        _HasPhase1Transpiler(self).visit(self.ast)
        phase_2 = Phase2Transpiler(self)
        phase_2.visit(self.ast)
        self.source_text = "\n".join(phase_2.statements(self.ast))
        self.executable_code = compile(self.source_text, "<cel>", "exec")


class _CompiledRunner(celpy.CompiledRunner):
    """celpy's CompiledRunner on `_HasTranspiler`."""

    def __init__(
        self,
        environment: celpy.Environment,
        ast: TranspilerTree,
        functions: dict[str, Any] | None = None,
    ) -> None:
        celpy.Runner.__init__(self, environment, ast, functions)
        self.tp = _HasTranspiler(ast=ast, activation=self.new_activation())
        self.tp.transpile()


class CelEngine:
    """The process's one CEL environment; compile when loading, evaluate per call."""

    def __init__(self) -> None:
        self._env = celpy.Environment(runner_class=_CompiledRunner)

    def compile(
        self, source: str, *, roots: frozenset[str], env_names: frozenset[str]
    ) -> CelProgram:
        """Parse, check every name against the activation, and transpile.

        Args:
            source: the CEL text.
            roots: top-level names this condition may use (e.g. no `instance` for Run).
            env_names: the names `env.X` may use (the environment allow-list).

        Raises:
            CelCompileError: with a message a policy author can act on.
        """
        if not isinstance(source, str) or not source.strip():
            raise CelCompileError("a condition must be a non-empty CEL expression")
        if len(source) > MAX_SOURCE_CHARS:
            raise CelCompileError(f"a condition may have at most {MAX_SOURCE_CHARS} characters")
        if _nesting(source) > MAX_NESTING:
            raise CelCompileError(
                f"brackets nest more than {MAX_NESTING} deep; split the condition up"
            )
        try:
            tree = self._env.compile(source)
        except CELParseError as exc:
            raise CelCompileError(f"not valid CEL: {' '.join(str(exc).split())}") from None
        except RecursionError:
            # lark and celpy recurse per operator: a long chain of them can still be too deep.
            raise CelCompileError("the condition is nested too deeply to compile") from None
        for problem in check_names(tree, roots=roots, env_names=env_names):
            raise CelCompileError(problem)
        try:
            runner = self._env.program(tree)
        except (CELEvalError, CELUnsupportedError, ValueError, TypeError) as exc:
            raise CelCompileError(f"cannot be compiled: {describe_error(exc)}") from None
        except (RecursionError, SyntaxError, MemoryError):
            raise CelCompileError("the condition is nested too deeply to compile") from None
        paths = list(_paths(tree))
        read_env = frozenset(p[1] for p in paths if p[0] == "env" and len(p) > 1)
        read_roots = frozenset(p[0] for p in paths)
        return CelProgram(
            source=source,
            runner=runner,
            env_names=read_env,
            roots=read_roots,
            paths=tuple(sorted({tuple(p) for p in paths})),
        )


def _nesting(source: str) -> int:
    """The deepest bracket nesting, counting brackets inside string literals too (a bound)."""
    depth = deepest = 0
    for char in source:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def to_cel(data: Any) -> celtypes.Value:
    """Plain JSON data as CEL values; plain dicts would compare wrongly."""
    return json_to_cel(data)


# -- name checks --------------------------------------------------------------------------------


def _token(node: Tree, index: int = -1) -> str:
    child = node.children[index]
    return str(child.value) if isinstance(child, lark.Token) else ""


def _parents(tree: Tree) -> dict[int, Tree]:
    parents: dict[int, Tree] = {}
    for node in tree.iter_subtrees():
        for child in node.children:
            if isinstance(child, lark.Tree):
                parents[id(child)] = node
    return parents


def _bound_names(tree: Tree) -> set[str]:
    """Variables bound by comprehension macros such as `list.exists(x, x > 1)`."""
    bound: set[str] = set()
    for node in tree.find_data("member_dot_arg"):
        if _token(node, 1) not in BINDING_MACROS or len(node.children) < 3:
            continue
        args = node.children[2]
        if isinstance(args, lark.Tree) and args.children:
            idents = (
                list(args.children[0].find_data("ident"))
                if isinstance(args.children[0], lark.Tree)
                else []
            )
            if idents:
                bound.add(_token(idents[0], 0))
    return bound


def _string_literal(node: Tree) -> str | None:
    """The value of an index expression that is just a string literal."""
    literals = list(node.find_data("literal"))
    if len(literals) != 1:
        return None
    text = _token(literals[0], 0)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


def _paths(tree: Tree) -> Iterator[list[str]]:
    """Each variable use as the member path it reads: `request.auth.claims.role`."""
    bound = _bound_names(tree)
    parents = _parents(tree)
    for ident in tree.find_data("ident"):
        name = _token(ident, 0)
        if name in bound:
            continue
        path = [name]
        node = parents.get(id(ident))  # primary
        node = parents.get(id(node)) if node is not None else None  # member
        while node is not None:
            parent = parents.get(id(node))
            if parent is None or parent.children[0] is not node:
                break
            if parent.data == "member_dot":
                path.append(_token(parent))
            elif parent.data == "member_index" and isinstance(parent.children[1], lark.Tree):
                key = _string_literal(parent.children[1])
                if key is None:
                    break
                path.append(key)
            else:
                break
            node = parents.get(id(parent))
        yield path


def check_names(tree: Tree, *, roots: frozenset[str], env_names: frozenset[str]) -> Iterator[str]:
    """Problems with the names a condition reads, each phrased for the policy author."""
    for path in _paths(tree):
        root = path[0]
        if root not in roots:
            known = ", ".join(sorted(roots))
            if root in SCHEMA:
                yield f"`{root}` is not available to this policy (it can use {known})"
            else:
                yield f"unknown name `{root}` (a policy can use {known})"
            continue
        if root == "env":
            if len(path) > 1 and path[1] not in env_names:
                allowed = ", ".join(sorted(env_names)) or "none"
                yield (
                    f"env.{path[1]} is not in the environment allow-list (policyEnv; "
                    f"allowed: {allowed})"
                )
            continue
        shape: Any = SCHEMA[root]
        for depth, member in enumerate(path[1:], start=1):
            if shape is OPEN:
                break
            if member not in shape:
                fields = ", ".join(sorted(shape)) or "no fields"
                prefix = ".".join(path[:depth])
                yield f"{prefix} has no field `{member}` (it has {fields})"
                break
            shape = shape[member]


__all__ = [
    "CelCompileError",
    "CelEngine",
    "CelEvaluationError",
    "CelProgram",
    "check_names",
    "describe_error",
    "to_cel",
]
