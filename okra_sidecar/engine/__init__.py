"""The workflow engine: DSL definitions, jq expressions and the pure interpreter."""

from __future__ import annotations

from okra_sidecar.engine.definitions.dsl import (
    WorkflowDefinition,
    load_definition_text,
    parse_definition,
    parse_yaml,
)
from okra_sidecar.engine.definitions.expressions import (
    CompiledExpression,
    ExpressionError,
    compile_expression,
    evaluate,
    evaluate_condition,
    evaluate_value,
    is_expression,
)
from okra_sidecar.engine.interpreter.interpreter import (
    InboxSignal,
    TurnOutcome,
    TurnResult,
    advance,
    start_state,
)

__all__ = [
    "CompiledExpression",
    "ExpressionError",
    "InboxSignal",
    "TurnOutcome",
    "TurnResult",
    "WorkflowDefinition",
    "advance",
    "compile_expression",
    "evaluate",
    "evaluate_condition",
    "evaluate_value",
    "is_expression",
    "load_definition_text",
    "parse_definition",
    "parse_yaml",
    "start_state",
]
