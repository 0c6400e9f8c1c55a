"""The spec's conformance scenarios (ctk/features), run through the interpreter.

Outside calls are answered by a fake that stands in for the endpoints the scenarios name (the
CTK runner through the real sidecar and a local HTTP server lives elsewhere).
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from okra_sidecar.ctk.features import Scenario, Step, parse_feature
from okra_sidecar.engine.definitions.dsl import WorkflowDefinition, load_definition_text, parse_yaml
from okra_sidecar.engine.interpreter.effects import Effect, EffectKind
from okra_sidecar.engine.interpreter.interpreter import TurnOutcome, TurnResult
from okra_sidecar.errors import DefinitionError

from .support import SPEC_DIR_ENV, Answer, HttpFake, drive, spec_dir

# Every scenario whose tasks are all supported (all of them); others would have to be refused
# as unsupported.
SUPPORTED_SCENARIOS = {
    "branch: Fork Task With Competing Concurrent Sub Tasks",
    "call: Call HTTP With Content Output",
    "call: Call HTTP With Response Output",
    "call: Call HTTP Using Basic Authentication",
    "call: Call OpenAPI With Content Output",
    "call: Call OpenAPI With Response Output",
    "data-flow: Input Filtering",
    "data-flow: Output Filtering",
    "data-flow: Use Non-object Output",
    "do: Task With Sequential Sub Tasks",
    "emit: Emit Task",
    "flow: Explicit Sequence Flow",
    "flow: Implicit Sequence Flow",
    "for: For Task",
    "raise: Raise task with inline error",
    "set: Set Task",
    "switch: Switch task with explicit default case",
    "switch: Switch task with implicit default case",
    "switch: Switch task with matching case",
    "try: Try Handle Caught Error",
    "try: Try Raise Uncaught Error",
}
PETSTORE = "https://petstore.swagger.io/v2/pet"
BASIC_AUTH = "Basic " + base64.b64encode(b"serverless-workflow:conformance-test").decode()


def pet(pet_id: int) -> dict[str, Any]:
    return {"id": pet_id, "name": f"pet-{pet_id}", "status": "available"}


def basic_auth(request: dict[str, Any]) -> tuple[int, Any]:
    granted = request["headers"].get("Authorization") == BASIC_AUTH
    return (200, {"authenticated": True}) if granted else (401, {"authenticated": False})


def answer_ctk(effect: Effect) -> Answer:
    """The CTK's endpoints; an OpenAPI operation answers as the petstore's document says."""
    if effect.kind is not EffectKind.OPENAPI:
        return ctk_endpoints().answer(effect)
    request = effect.request
    assert request["document"] == {"endpoint": "https://petstore.swagger.io/v2/swagger.json"}
    operations = {
        "findPetsByStatus": ("GET", f"{PETSTORE}/findByStatus", "query", "status"),
        "getPetById": ("GET", PETSTORE, "path", "petId"),
    }
    method, uri, where, name = operations[request["operationId"]]
    value = request["parameters"][name]
    if where == "path":
        uri, query = f"{uri}/{value}", {}
    else:
        query = {name: value}
    call = {
        "method": method,
        "uri": uri,
        "headers": {},
        "query": query,
        "body": None,
        "output": request["output"],
        "redirect": request["redirect"],
    }
    return ctk_endpoints().answer(replace(effect, kind=EffectKind.HTTP, request=call))


def ctk_endpoints() -> HttpFake:
    """The endpoints the CTK scenarios call, as the public services answer them."""
    return HttpFake(
        {
            ("GET", f"{PETSTORE}/findByStatus?status=available"): (200, [pet(1), pet(2)]),
            ("GET", f"{PETSTORE}/1"): (200, pet(1)),
            ("GET", f"{PETSTORE}/2"): (200, pet(2)),
            (
                "GET",
                "https://httpbin.org/basic-auth/serverless-workflow/conformance-test",
            ): basic_auth,
        }
    )


def collect() -> list[Any]:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "serverless-workflow"
    folder = Path(os.environ.get(SPEC_DIR_ENV) or default) / "ctk" / "features"
    if not folder.is_dir():
        reason = f"CTK features not found at {folder}; set {SPEC_DIR_ENV}"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-spec")]
    scenarios = [s for f in sorted(folder.glob("*.feature")) for s in parse_feature(f)]
    return [pytest.param(s, id=s.id) for s in scenarios]


def lookup(value: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"no '{dotted}' in {value!r}"
        value = value[part]
    return value


def started_names(result: TurnResult) -> list[str]:
    return [e["task"].rsplit("/", 1)[-1] for e in result.history if e["type"] == "task.started"]


def check_step(step: Step, result: TurnResult) -> None:
    text = step.text
    output = result.output
    if text == "the workflow should complete":
        assert result.outcome is TurnOutcome.COMPLETED, result.error
    elif text == "the workflow should complete with output:":
        assert result.outcome is TurnOutcome.COMPLETED, result.error
        assert output == parse_yaml(step.doc or "")
    elif text == "the workflow should fault":
        assert result.outcome is TurnOutcome.FAILED, result.output
    elif text == "the workflow should fault with error:":
        assert result.outcome is TurnOutcome.FAILED
        expected = parse_yaml(step.doc or "")
        assert result.error is not None
        assert {k: result.error.get(k) for k in expected} == expected
    elif match := re.fullmatch(r"the workflow output should have properties (.+)", text):
        for dotted in re.findall(r"'([^']+)'", match[1]):
            lookup(output, dotted)
    elif match := re.fullmatch(
        r"the workflow output should have a '(.+)' property with value:", text
    ):
        assert lookup(output, match[1]) == parse_yaml(step.doc or "")
    elif match := re.fullmatch(
        r"the workflow output should have a '(.+)' property containing (\d+) items", text
    ):
        assert len(lookup(output, match[1])) == int(match[2])
    elif match := re.fullmatch(r"(\w+) should run first", text):
        assert started_names(result)[0] == match[1]
    elif match := re.fullmatch(r"(\w+) should run last", text):
        assert started_names(result)[-1] == match[1]
    elif match := re.fullmatch(r"(\w+) should run after (\w+)", text):
        names = started_names(result)
        assert names.index(match[1]) > names.index(match[2])
    else:
        raise AssertionError(f"unknown CTK step: {text}")


@pytest.mark.parametrize("scenario", collect())
def test_ctk_scenario(scenario: Scenario) -> None:
    definition: WorkflowDefinition | None = None
    workflow_input: Any = {}
    checks: list[Step] = []
    for step in scenario.steps:
        if step.text == "a workflow with definition:":
            try:
                definition = load_definition_text(
                    step.doc or "", source=f"{scenario.feature}.feature"
                )
            except DefinitionError as exc:
                assert scenario.id not in SUPPORTED_SCENARIOS, str(exc)
                assert "does not support" in exc.problem or "not supported" in exc.problem, exc
                pytest.skip(f"unsupported: {exc}")
        elif step.text == "given the workflow input is:":
            workflow_input = parse_yaml(step.doc or "")
        elif step.text != "the workflow is executed":
            checks.append(step)
    assert scenario.id in SUPPORTED_SCENARIOS, "this scenario loads: add it to the expected set"
    assert definition is not None
    result = drive(definition, workflow_input, answer=answer_ctk)
    assert checks
    for step in checks:
        check_step(step, result)


def test_every_expected_scenario_exists() -> None:
    folder = spec_dir() / "ctk" / "features"
    found = {s.id for f in folder.glob("*.feature") for s in parse_feature(f)}
    assert SUPPORTED_SCENARIOS <= found
