"""Helpers for engine tests: load definitions from YAML snippets and run them to an end."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from okra_sidecar.engine.dsl import WorkflowDefinition, load_definition_text
from okra_sidecar.engine.interpreter import (
    InboxSignal,
    TurnOutcome,
    TurnResult,
    advance,
    start_state,
)

SPEC_DIR_ENV = "OKRA_SPEC_DIR"
HEADER = "document: {dsl: '1.0.0', namespace: test, name: wf, version: '1.0.0'}\n"
T0 = 1_700_000_000_000


def spec_dir() -> Path:
    """The Serverless Workflow spec folder (DSL docs, schema, CTK, examples), or skip."""
    default = Path(__file__).resolve().parents[2].parent / "shared" / "serverless-workflow"
    path = Path(os.environ.get(SPEC_DIR_ENV) or default)
    if not path.is_dir():
        pytest.skip(f"spec folder not found at {path}; set {SPEC_DIR_ENV} to run spec tests")
    return path


def load(text: str, *, source: str = "test.yaml") -> WorkflowDefinition:
    return load_definition_text(textwrap.dedent(text), source=source)


def workflow(body: str) -> WorkflowDefinition:
    """A definition from the YAML after `document:` (usually `do:` and friends)."""
    return load(HEADER + textwrap.dedent(body))


def signal(entry_id: str, event_type: str, data: Any = None, **attributes: Any) -> InboxSignal:
    event = {
        "specversion": "1.0",
        "id": f"event-{entry_id}",
        "source": "tests",
        "type": event_type,
        "time": "2026-01-01T00:00:00Z",
        "datacontenttype": "application/json",
        "data": data,
        **attributes,
    }
    return InboxSignal(entry_id, event)


def begin(
    definition: WorkflowDefinition,
    workflow_input: Any = None,
    *,
    signals: Sequence[InboxSignal] = (),
    now: int = T0,
    max_steps: int = 1000,
) -> TurnResult:
    """The first turn of a new instance."""
    state = start_state(
        definition, instance_id="instance-1", workflow_input=workflow_input, now_ms=now
    )
    return advance(definition, state, signals=signals, now_ms=now, max_steps=max_steps)


def run(definition: WorkflowDefinition, workflow_input: Any = None, *, now: int = T0) -> TurnResult:
    """Turns without signals until the instance stops running (completes, fails or waits)."""
    result = begin(definition, workflow_input, now=now)
    while result.outcome is TurnOutcome.RUNNING:
        result = advance(definition, result.state, signals=(), now_ms=now)
    return result


def task_events(result: TurnResult, kind: str = "task.completed") -> list[str]:
    return [event["task"] for event in result.history if event["type"] == kind]
