"""Glob lists: `allowed`/`blocked` names with `*` wildcards.

A pattern matches a whole name; `*` matches any run of characters, dots included, so
`report.*` matches `report.generation` and `report.generation.1.0.0`. Workflow lists are
matched against both `namespace.name` and the full id `namespace.name.version`. Matching is
case-sensitive. An empty `allowed` list sets no restriction; `blocked` wins over `allowed`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

GLOB_RE = re.compile(r"^[A-Za-z0-9_.*+-]+$")


def compile_glob(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if part == "*" else re.escape(part) for part in _split(pattern)))


def _split(pattern: str) -> list[str]:
    return [piece for piece in re.split(r"(\*)", pattern) if piece]


@dataclass(frozen=True)
class GlobList:
    """Patterns compiled once; `match` names the first pattern that matches a candidate."""

    patterns: tuple[str, ...] = ()
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, patterns: Sequence[str]) -> GlobList:
        return cls(tuple(patterns), tuple(compile_glob(p) for p in patterns))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, candidates: Iterable[str]) -> str | None:
        names = list(candidates)
        for pattern, compiled in zip(self.patterns, self._compiled, strict=True):
            if any(compiled.fullmatch(name) for name in names):
                return pattern
        return None


def check_pattern(pattern: object) -> str | None:
    """Why `pattern` is not a usable glob, or None when it is."""
    if not isinstance(pattern, str) or not pattern:
        return f"{pattern!r} is not a non-empty string"
    if not GLOB_RE.fullmatch(pattern):
        return f"{pattern!r} may hold only letters, digits, ., _, -, + and *"
    return None


__all__ = ["GlobList", "check_pattern", "compile_glob"]
