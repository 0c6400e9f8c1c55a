"""The compiler as the task compilers see it, so that they need not import compiler.py.

compiler.py dispatches each task to call_compiler.py, listen_compiler.py or try_compiler.py;
those compile against this protocol, which `TaskCompiler` satisfies, and the import graph
stays one-way: compiler -> task compilers -> this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, NoReturn, Protocol

from okra_sidecar.engine.definitions.durations import DurationSpec
from okra_sidecar.engine.definitions.expressions import CompiledValue
from okra_sidecar.engine.definitions.tasks import SchemaCheck, TaskList

__all__ = ["Compiler"]


class Compiler(Protocol):
    """What compiling one task needs: failing with a pointer, scopes and the shared compiles."""

    @property
    def authentications(self) -> Mapping[str, Any]: ...

    @property
    def retries(self) -> Mapping[str, Any]: ...

    def fail(self, path: str, problem: str) -> NoReturn: ...

    def scope(self, *names: tuple[str, str]) -> AbstractContextManager[None]: ...

    def task_list(
        self, value: Any, path: str, *, key: str = "do", jumps: bool = True
    ) -> TaskList: ...

    def condition(self, value: Any, path: str) -> CompiledValue: ...

    def field(self, value: Any, path: str) -> CompiledValue: ...

    def value(self, value: Any, path: str) -> CompiledValue: ...

    def duration(self, value: Any, path: str) -> DurationSpec: ...

    def io(
        self, value: Any, path: str, key: str
    ) -> tuple[CompiledValue | None, SchemaCheck | None]: ...

    def schema(self, value: Any, path: str) -> SchemaCheck: ...
