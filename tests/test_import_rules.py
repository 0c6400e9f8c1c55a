"""Import rules between the layers, read from the source with `ast` (nothing is imported).

The interpreter is pure: nothing it imports, directly or through other sidecar modules, may
reach asyncio, Redis, gRPC or the store. The store never imports the engine, and the engine
never imports policy (policy fills in `okra_sidecar.admission`, which the engine reads). No
two engine modules import each other, even for types only (compile code and the models it
builds live apart: definitions/compiling.py).
Each rule is also run against a synthetic module that breaks it, so a checker that stopped
seeing imports would fail here rather than pass everything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import okra_sidecar

PACKAGE = Path(okra_sidecar.__file__).resolve().parent
ROOT = "okra_sidecar"


@dataclass(frozen=True)
class ImportRule:
    """Modules under `scope` may not import anything under one of `forbidden`."""

    scope: str
    forbidden: tuple[str, ...]
    # Follow imports of other sidecar modules too (the interpreter's purity is transitive).
    transitive: bool = False


RULES = (
    ImportRule(
        "okra_sidecar.engine.interpreter",
        ("asyncio", "redis", "grpc", "okra_sidecar.store"),
        transitive=True,
    ),
    ImportRule("okra_sidecar.store", ("okra_sidecar.engine",)),
    ImportRule("okra_sidecar.engine", ("okra_sidecar.policy",)),
)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imports_of(module: str, source: str, *, is_package: bool = False) -> set[str]:
    """Absolute names of the modules `source` imports, with relative imports resolved.

    `from a import b` counts as importing both `a` and `a.b` (b may be a submodule).
    """
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def package_sources() -> dict[str, tuple[str, bool]]:
    """Every module of the sidecar package (generated code aside): name -> (source, package?)."""
    modules: dict[str, tuple[str, bool]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        if relative.parts[0] == "gen":
            continue
        is_package = relative.name == "__init__"
        parts = relative.parts[:-1] if is_package else relative.parts
        modules[".".join((ROOT, *parts))] = (path.read_text(), is_package)
    return modules


def violations(rule: ImportRule, modules: Mapping[str, tuple[str, bool]]) -> list[str]:
    """`module -> ... -> forbidden` chains that break `rule`, one per offending module."""
    graph = {
        name: imports_of(name, source, is_package=is_package)
        for name, (source, is_package) in modules.items()
    }
    found = []
    for start in sorted(name for name in graph if _under(name, rule.scope)):
        chain = _forbidden_chain(start, rule, graph)
        if chain:
            found.append(" -> ".join(chain))
    return found


def _forbidden_chain(
    start: str, rule: ImportRule, graph: Mapping[str, Iterable[str]]
) -> list[str] | None:
    """A shortest import chain from `start` to a forbidden module, or None."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        current = queue.pop(0)
        for name in sorted(graph.get(current, ())):
            if any(_under(name, bad) for bad in rule.forbidden):
                return [*paths[current], name]
            if rule.transitive and name in graph and name not in paths:
                paths[name] = [*paths[current], name]
                queue.append(name)
    return None


def engine_cycle(modules: Mapping[str, tuple[str, bool]], scope: str) -> list[str] | None:
    """One import cycle among the modules under `scope` (packages' __init__ aside), or None."""
    inside = {
        name for name, (_, is_package) in modules.items() if _under(name, scope) and not is_package
    }
    graph = {name: sorted(inside & imports_of(name, modules[name][0])) for name in sorted(inside)}
    done: set[str] = set()
    for start in graph:
        # Depth-first with an explicit stack of (module, its next import to follow).
        stack, on_stack = [(start, 0)], {start}
        while stack:
            name, at = stack.pop()
            if name in done or at >= len(graph[name]):
                done.add(name)
                on_stack.discard(name)
                continue
            stack.append((name, at + 1))
            target = graph[name][at]
            if target in on_stack:
                chain = [entry for entry, _ in stack]
                return [*chain[chain.index(target) :], target]
            if target not in done:
                stack.append((target, 0))
                on_stack.add(target)
    return None


def test_the_package_keeps_every_rule() -> None:
    modules = package_sources()
    assert "okra_sidecar.engine.interpreter.interpreter" in modules
    for rule in RULES:
        assert not violations(rule, modules), rule
    assert engine_cycle(modules, "okra_sidecar.engine") is None


def test_a_cycle_between_engine_modules_is_found() -> None:
    modules = {
        "okra_sidecar.engine.definitions.a": ("from . import b\n", False),
        "okra_sidecar.engine.definitions.b": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from okra_sidecar.engine.definitions.a import A\n",
            False,
        ),
        "okra_sidecar.engine.definitions.c": ("from . import a\n", False),
    }
    assert engine_cycle(modules, "okra_sidecar.engine") == [
        "okra_sidecar.engine.definitions.a",
        "okra_sidecar.engine.definitions.b",
        "okra_sidecar.engine.definitions.a",
    ]
    del modules["okra_sidecar.engine.definitions.b"]
    assert engine_cycle(modules, "okra_sidecar.engine") is None


def test_a_direct_import_breaks_its_rule() -> None:
    bad = {
        "okra_sidecar.engine.interpreter.bad": ("import asyncio\n", False),
        "okra_sidecar.store.bad": ("from okra_sidecar.engine import runtime\n", False),
        "okra_sidecar.engine.runtime.bad": ("from ...policy.model import Decision\n", False),
    }
    for rule in RULES:
        assert violations(rule, bad), rule


def test_an_import_through_another_module_breaks_the_interpreter_rule() -> None:
    modules = {
        "okra_sidecar.engine.interpreter.bad": ("from okra_sidecar import helper\n", False),
        "okra_sidecar.helper": ("from okra_sidecar.store.base import Store\n", False),
    }
    assert violations(RULES[0], modules) == [
        "okra_sidecar.engine.interpreter.bad -> okra_sidecar.helper -> okra_sidecar.store.base"
    ]


def test_imports_inside_functions_and_type_checking_blocks_count() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import grpc\n"
    source += "def f() -> None:\n    import redis\n"
    assert {"grpc", "redis"} <= imports_of("okra_sidecar.engine.interpreter.x", source)


def test_relative_imports_resolve_from_the_package() -> None:
    assert "okra_sidecar.store.base" in imports_of(
        "okra_sidecar.engine.x", "from ..store import base\n"
    )
    assert "okra_sidecar.engine.turn" in imports_of(
        "okra_sidecar.engine", "from .turn import X\n", is_package=True
    )
