"""Helpers for the codegen tests: copying workflows, and reading type checkers' error lines."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).parent / "workflows"
MARK = "expect-error"


def copy_workflows(target: Path) -> Path:
    shutil.copytree(WORKFLOWS_DIR, target)
    return target


def rename_order_id(workflows: Path) -> None:
    """The schema change the callers must notice: `orderId` becomes `orderNumber`."""
    path = workflows / "checkout.yaml"
    text = path.read_text()
    assert "orderId" in text
    path.write_text(text.replace("orderId", "orderNumber"))


def marked_lines(source: str) -> set[int]:
    """Line numbers (1-based) carrying the expect-error mark."""
    return {number for number, line in enumerate(source.splitlines(), 1) if MARK in line}


def error_lines(output: str, file_name: str, pattern: str) -> set[int]:
    """Line numbers of `file_name` that a checker's output reports errors on."""
    regex = re.compile(pattern.format(file=re.escape(file_name)), re.M)
    return {int(match.group("line")) for match in regex.finditer(output)}
