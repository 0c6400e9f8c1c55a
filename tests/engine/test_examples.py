"""The spec's example definitions: each is accepted or refused as unsupported, never as broken.

Every definition this loader accepts (examples and CTK) must also be valid against the
official JSON schema, which is only available in the spec folder, not at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from okra_sidecar.ctk.features import parse_feature
from okra_sidecar.engine.definitions.dsl import load_definition_text, parse_yaml
from okra_sidecar.engine.interpreter.interpreter import TurnOutcome, advance
from okra_sidecar.errors import DefinitionError

from .support import T0, HttpFake, begin, drive, result_signal, run, signal, spec_dir

ACCEPTED = {
    "accumulate-room-readings.yaml",
    "authentication-bearer-uri-format.yaml",
    "authentication-bearer.yaml",
    "authentication-reusable.yaml",
    "call-custom-function-inline.yaml",
    "call-grpc.yaml",
    "call-http-endpoint-interpolation-shorthand.yaml",
    "call-http-endpoint-interpolation.yaml",
    "call-http-query-headers-expressions.yaml",
    "call-http-query-parameters.yaml",
    "call-http-redirect.yaml",
    "call-openapi-redirect.yaml",
    "call-openapi.yaml",
    "conditional-task.yaml",
    "do-multiple.yaml",
    "do-single.yaml",
    "emit.yaml",
    "for.yaml",
    "fork.yaml",
    "listen-to-all read-envelope.yaml",
    "listen-to-all.yaml",
    "listen-to-any-filter.yaml",
    "listen-to-any-forever-foreach.yaml",
    "listen-to-any-until-condition.yaml",
    "listen-to-any-until-consumed.yaml",
    "listen-to-any.yaml",
    "listen-to-one.yaml",
    "raise-inline.yaml",
    "raise-reusable.yaml",
    "run-subflow.yaml",
    "schedule-cron.yaml",
    "schedule-event-driven.yaml",
    "set-expression.yaml",
    "set.yaml",
    "star-wars-homeworld.yaml",
    "switch-then-string.yaml",
    "try-catch-retry-inline.yaml",
    "try-catch-retry-reusable.yaml",
    "try-catch-then.yaml",
    "try-catch.yaml",
    "wait-duration-inline.yaml",
    "wait-duration-iso8601.yaml",
}
# Why the others are refused, by the first unsupported feature each uses (the test checks it).
REFUSED = {
    "authentication-oauth2-secret.yaml": "'oauth2' authentication",
    "authentication-oauth2.yaml": "'oauth2' authentication",
    "authentication-oidc-secret.yaml": "'oidc' authentication",
    "authentication-oidc.yaml": "'oidc' authentication",
    "call-asyncapi-publish.yaml": "'call: asyncapi'",
    "call-asyncapi-subscribe-consume-amount.yaml": "'call: asyncapi'",
    "call-asyncapi-subscribe-consume-forever-foreach.yaml": "'call: asyncapi'",
    "call-asyncapi-subscribe-consume-until.yaml": "'call: asyncapi'",
    "call-asyncapi-subscribe-consume-while.yaml": "'call: asyncapi'",
    "call-custom-function-cataloged.yaml": "a cataloged or remote function",
    "call-mcp.yaml": "'call: mcp'",
    "mock-service-extension.yaml": "extensions ('use.extensions')",
    "run-container-cleanup-always.yaml": "'run.container'",
    "run-container-cleanup-eventually.yaml": "'run.container'",
    "run-container-stdin-and-arguments.yaml": "'run.container'",
    "run-container-with-name.yaml": "'run.container'",
    "run-container-with-pull-policy.yaml": "'run.container'",
    "run-container.yaml": "'run.container'",
    "run-return-all.yaml": "'run.container'",
    "run-return-code.yaml": "'run.container'",
    "run-return-none.yaml": "'run.container'",
    "run-return-stderr.yaml": "'run.container'",
    "run-script-with-stdin-and-arguments.yaml": "'run.script'",
    "run-shell-stdin-and-arguments.yaml": "'run.shell'",
}


def example_files() -> list[Path]:
    files = sorted((spec_dir() / "examples").glob("*.yaml"))
    assert files, "no examples found"
    return files


@pytest.fixture(scope="module")
def official_schema() -> Draft202012Validator:
    schema = parse_yaml((spec_dir() / "schema" / "workflow.yaml").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_examples_are_accepted_or_refused_as_unsupported() -> None:
    accepted: set[str] = set()
    for path in example_files():
        try:
            load_definition_text(path.read_text(encoding="utf-8"), source=path.name)
        except DefinitionError as exc:
            unsupported = "does not support" in exc.problem or "not supported" in exc.problem
            assert unsupported, f"{path.name} refused for another reason: {exc}"
            assert exc.source == path.name and exc.path
            assert REFUSED.get(path.name, "?") in exc.problem, f"{path.name}: {exc.problem}"
        else:
            accepted.add(path.name)
    assert accepted == ACCEPTED
    assert {p.name for p in example_files()} == ACCEPTED | set(REFUSED)


def accepted_documents() -> list[tuple[str, Any]]:
    documents: list[tuple[str, Any]] = []
    for path in example_files():
        if path.name in ACCEPTED:
            documents.append((path.name, parse_yaml(path.read_text(encoding="utf-8"))))
    for feature in sorted((spec_dir() / "ctk" / "features").glob("*.feature")):
        for scenario in parse_feature(feature):
            doc = scenario.steps[0].doc or ""
            try:
                load_definition_text(doc, source=scenario.id)
            except DefinitionError:
                continue
            documents.append((scenario.id, parse_yaml(doc)))
    return documents


def test_accepted_definitions_are_valid_against_the_official_schema(
    official_schema: Draft202012Validator,
) -> None:
    documents = accepted_documents()
    assert len(documents) >= len(ACCEPTED)
    for name, document in documents:
        errors = [e.message for e in official_schema.iter_errors(document)]
        assert not errors, f"{name}: {errors}"


def load_example(name: str) -> Any:
    path = spec_dir() / "examples" / name
    return load_definition_text(path.read_text(encoding="utf-8"), source=name)


def test_example_raise_inline_runs() -> None:
    result = run(load_example("raise-inline.yaml"))
    assert result.outcome is TurnOutcome.FAILED
    assert result.error == {
        "type": "https://serverlessworkflow.io/errors/not-implemented",
        "status": 500,
        "title": "Not Implemented",
        "detail": "The workflow 'raise-not-implemented:0.1.0' is a work in progress and cannot "
        "be run yet",
        "instance": "/do/0/notImplemented",
    }
    assert run(load_example("raise-reusable.yaml")).error == result.error


def test_example_switch_then_string_runs() -> None:
    definition = load_example("switch-then-string.yaml")
    assert run(definition, {"orderType": "electronic"}).output == {
        "validate": True,
        "status": "fulfilled",
    }
    assert run(definition, {"orderType": "other"}).output == {
        "log": "warn",
        "message": "something's wrong",
    }


def test_example_set_reads_the_triggering_event() -> None:
    event = {"type": "io.serverlessworkflow.samples.events.trigger.v1", "data": {"n": 1}}
    assert run(load_example("set.yaml"), [event]).output == {"startEvent": event}
    assert run(load_example("set-expression.yaml"), [event]).output == event


def test_example_listen_to_all_reads_envelopes() -> None:
    definition = load_example("listen-to-all read-envelope.yaml")
    inbox = [
        signal("1-0", "com.fake-hospital.vitals.measurements.bpm", {"bpm": 130}),
        signal("2-0", "com.fake-hospital.vitals.measurements.temperature", {"temperature": 36}),
        signal("3-0", "com.fake-hospital.vitals.measurements.temperature", {"temperature": 39}),
    ]
    result = begin(definition, signals=inbox)
    assert result.consumed == ["1-0", "3-0"]
    assert result.output == [inbox[0].event, inbox[2].event]


def test_example_wait_durations_agree() -> None:
    inline = begin(load_example("wait-duration-inline.yaml"))
    iso = begin(load_example("wait-duration-iso8601.yaml"))
    assert inline.wake_at_ms == iso.wake_at_ms
    assert inline.wake_at_ms is not None


PET = "https://petstore.swagger.io/v2/pet"


def test_example_try_catch_retry_reusable_retries_then_succeeds() -> None:
    definition = load_example("try-catch-retry-reusable.yaml")
    attempts: list[int] = []

    def flaky(request: dict[str, Any]) -> tuple[int, Any]:
        attempts.append(len(attempts))
        return (503, None) if len(attempts) < 3 else (200, {"id": 1, "name": "Milou"})

    fake = HttpFake({("GET", f"{PET}/1"): flaky})
    result = drive(definition, {"petId": 1}, answer=fake.answer)
    assert result.output == {"id": 1, "name": "Milou"}
    assert len(attempts) == 3
    retried = [e["time"] - T0 for e in result.history if e["type"] == "task.retried"]
    assert retried == [3_000, 9_000]  # exponential backoff from a 3 s delay


def test_example_try_catch_then_emits_and_skips_the_purchase() -> None:
    definition = load_example("try-catch-then.yaml")
    result = drive(definition, {"petId": 9}, answer=HttpFake().answer)
    assert result.outcome is TurnOutcome.COMPLETED
    assert result.context["error"]["status"] == 404
    started = [e["task"] for e in result.history if e["type"] == "task.started"]
    assert "/do/0/tryGetPet/catch/do/0/notifySupport" in started
    assert "/do/1/buyPet" not in started


def test_example_try_catch_swallows_a_404() -> None:
    result = drive(load_example("try-catch.yaml"), {"petId": 9}, answer=HttpFake().answer)
    assert result.output == {"petId": 9}


def test_example_star_wars_homeworld_follows_the_exported_link() -> None:
    planet = "https://swapi.dev/api/planets/1/"
    fake = HttpFake(
        {
            ("GET", "https://swapi.dev/api/people/1"): (200, {"homeworld": planet}),
            ("GET", planet): (200, {"name": "Tatooine"}),
        }
    )
    result = drive(load_example("star-wars-homeworld.yaml"), {"id": 1}, answer=fake.answer)
    assert result.output == {"name": "Tatooine"}
    assert result.context == {"homeworld": planet}


def test_example_for_listens_in_the_loop_and_its_output_as_fails_as_written() -> None:
    definition = load_example("for.yaml")
    result = begin(definition, {"pets": [{"id": 1}, {"id": 2}], "vet": "dr"})
    assert result.current_step == "/do/0/checkup/do/0/waitForCheckup"
    event = "com.fake.petclinic.pets.checkup.completed.v2"
    inbox = [signal("1-0", event, {"vet": "dr", "pets": []})]
    result = advance(definition, result.state, signals=inbox, now_ms=T0)
    # A listen outputs the array of the events it consumed: `.pets` cannot index it.
    assert result.error is not None
    assert result.error["detail"] == (
        'expression \'.pets + [{ "id": $pet.id }]\' failed: Cannot index array with string ("pets")'
    )


def test_example_fork_competes_two_calls() -> None:
    definition = load_example("fork.yaml")
    first = begin(definition, {"patient": {"fullName": "Ann"}, "room": {"number": 3}})
    assert [e.request["uri"] for e in first.effects] == [
        "https://fake-hospital.com/api/v3/alert/nurses",
        "https://fake-hospital.com/api/v3/alert/doctor",
    ]
    assert first.effects[0].request["body"] == {"patientId": "Ann", "room": 3}
    done = advance(
        definition, first.state, signals=[result_signal("e2", value="doctor")], now_ms=T0
    )
    assert done.output == "doctor"


def test_example_listen_forever_posts_each_event() -> None:
    definition = load_example("listen-to-any-forever-foreach.yaml")
    gossip = signal("1-0", "gossip", {"roomId": "r1", "g": 1})
    first = begin(definition, signals=[gossip])
    (effect,) = first.effects  # each event is the input of its iteration
    assert effect.request["uri"] == "https://fake-chat-api.com/room/r1"
    assert effect.request["body"] == {"event": {"roomId": "r1", "g": 1}}
    after = advance(definition, first.state, signals=[result_signal("e1")], now_ms=T0)
    assert after.outcome is TurnOutcome.WAITING
    assert after.subscriptions == [{"task": "/do/0/listenToGossips", "with": {}}]


def test_example_run_subflow_asks_for_the_child() -> None:
    first = begin(load_example("run-subflow.yaml"), {"user": {"id": 1}})
    (effect,) = first.effects
    assert effect.request == {
        "workflow": {"namespace": "test", "name": "register-customer", "version": "0.1.0"},
        "input": {"customer": ".user"},  # strict mode: `.user` without ${ } is a string
    }
