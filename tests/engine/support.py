"""Helpers for engine tests: load definitions from YAML snippets and run them to an end."""

from __future__ import annotations

import base64
import json
import os
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from okra_sidecar.engine.definitions.dsl import WorkflowDefinition, load_definition_text
from okra_sidecar.engine.interpreter.effects import Effect, EffectKind, result_event
from okra_sidecar.engine.interpreter.interpreter import (
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


COMMUNICATION_ERROR = "https://serverlessworkflow.io/spec/1.0.0/errors/communication"


def result_signal(
    effect_id: str,
    *,
    value: Any = None,
    error: dict[str, Any] | None = None,
    entry_id: str | None = None,
) -> InboxSignal:
    """The inbox entry an executor delivers for an effect's outcome."""
    event = result_event(effect_id, time_iso="2026-01-01T00:00:00Z", value=value, error=error)
    return InboxSignal(entry_id or f"result-{effect_id}", event)


Answer = tuple[Any, dict[str, Any] | None]  # (value, error)


@dataclass
class HttpFake:
    """Answers http effects from a table keyed by (METHOD, uri with query), like a server.

    A route maps to (status, content) or to a callable of the request giving one.
    """

    routes: dict[tuple[str, str], Any] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def answer(self, effect: Effect) -> Answer:
        request = effect.request
        self.requests.append(request)
        uri = request["uri"]
        if request["query"]:
            uri += ("&" if "?" in uri else "?") + urlencode(request["query"])
        route = self.routes.get((request["method"], uri))
        if route is None:
            status, content = 404, {"message": f"no route for {request['method']} {uri}"}
        elif callable(route):
            status, content = route(request)
        else:
            status, content = route
        limit = 400 if request["redirect"] else 300
        if not 200 <= status < limit:
            return None, {
                "type": COMMUNICATION_ERROR,
                "status": status,
                "title": "Not Found" if status == 404 else f"HTTP {status}",
                "detail": f"{request['method']} {uri} answered {status}",
            }
        headers = {"Content-Type": "application/json"}
        if request["output"] == "response":
            described = {"method": request["method"], "uri": uri, "headers": request["headers"]}
            return {
                "request": described,
                "statusCode": status,
                "headers": headers,
                "content": content,
            }, None
        if request["output"] == "raw":
            return base64.b64encode(json.dumps(content).encode()).decode(), None
        return content, None


def drive(
    definition: WorkflowDefinition,
    workflow_input: Any = None,
    *,
    answer: Callable[[Effect], Answer] | None = None,
    now: int = T0,
    max_turns: int = 100,
) -> TurnResult:
    """Turns until the instance ends or is stuck, answering every effect it asks for.

    Results arrive in the inbox as an executor would deliver them; the clock jumps to
    `wake_at_ms` when nothing else can move the instance. Emit effects are answered with null.
    The last turn's result is returned with the history of every turn.
    """
    result = begin(definition, workflow_input, now=now)
    history = list(result.history)
    inbox: list[InboxSignal] = []
    for _ in range(max_turns):
        for effect in result.effects:
            if effect.kind is EffectKind.EMIT or answer is None:
                value, error = None, None
            else:
                value, error = answer(effect)
            inbox.append(result_signal(effect.effect_id, value=value, error=error))
        inbox = [s for s in inbox if s.entry_id not in result.consumed]
        if result.outcome in (TurnOutcome.COMPLETED, TurnOutcome.FAILED):
            return replace(result, history=history)
        if not inbox and result.outcome is TurnOutcome.WAITING:
            if result.wake_at_ms is None:
                return replace(result, history=history)
            now = max(now, result.wake_at_ms)
        result = advance(definition, result.state, signals=inbox, now_ms=now)
        history.extend(result.history)
    raise AssertionError(f"the instance did not end in {max_turns} turns")


def only_effect(effects: list[Effect]) -> Effect:
    assert len(effects) == 1, effects
    return effects[0]
