"""Sizes that keep the code readable: no module over 600 lines, no function over 80.

Generated code (protobuf stubs) is left out. Each check is also run against a synthetic
source that breaks it, so a checker that stopped counting would fail here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
# Not ours to size: dependencies and generated protobuf code; hidden directories (.git, caches,
# and any virtualenv such as .venv or one a tool made beside it) are skipped by their dot.
SKIPPED_DIRS = frozenset({"node_modules", "gen", "build", "dist"})


def python_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        dirs = parts[:-1]
        hidden = any(part.startswith(".") for part in dirs)
        if (
            not hidden
            and SKIPPED_DIRS.isdisjoint(dirs)
            and not path.stem.endswith(("_pb2", "_pb2_grpc"))
        ):
            yield path


def oversized(name: str, source: str) -> list[str]:
    """`name` itself if it is too long, and each function in it that is (with its lines)."""
    found = []
    lines = source.count("\n") + (0 if source.endswith("\n") or not source else 1)
    if lines > MAX_MODULE_LINES:
        found.append(f"{name}: {lines} lines (at most {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - start + 1
            if length > MAX_FUNCTION_LINES:
                most = MAX_FUNCTION_LINES
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines (at most {most})")
    return found


def test_no_module_or_function_is_too_long() -> None:
    found = [
        problem
        for path in python_files(REPO_ROOT)
        for problem in oversized(str(path.relative_to(REPO_ROOT)), path.read_text())
    ]
    assert not found, "split these:\n" + "\n".join(found)


def test_the_walk_finds_our_code_and_skips_generated_code() -> None:
    names = {str(path.relative_to(REPO_ROOT)) for path in python_files(REPO_ROOT)}
    assert "okra_sidecar/engine/interpreter/interpreter.py" in names
    assert "tests/test_sizes.py" in names
    assert not [name for name in names if "/gen/" in name or name.endswith("_pb2.py")]


def test_a_long_module_is_reported() -> None:
    source = "x = 1\n" * (MAX_MODULE_LINES + 1)
    assert oversized("m.py", source) == ["m.py: 601 lines (at most 600)"]
    assert oversized("m.py", "x = 1\n" * MAX_MODULE_LINES) == []


def test_a_long_function_is_reported_with_its_decorators() -> None:
    body = "    x = 1\n" * (MAX_FUNCTION_LINES - 2)
    fits = f"def f() -> None:\n{body}    return None\n"
    assert oversized("m.py", fits) == []
    decorated = f"@staticmethod\n{fits}"
    assert oversized("m.py", decorated) == ["m.py:2 f: 81 lines (at most 80)"]
    nested = "class C:\n    async def g(self) -> None:\n" + "        y = 2\n" * MAX_FUNCTION_LINES
    assert oversized("m.py", nested) == ["m.py:2 g: 81 lines (at most 80)"]
