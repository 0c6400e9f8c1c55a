"""Loading definitions: what a valid one yields, and exactly where and why a broken one fails."""

from __future__ import annotations

import json

import pytest

from okra_sidecar.engine.definitions.dsl import load_definition_text, parse_definition, parse_yaml
from okra_sidecar.errors import DefinitionError

from .support import HEADER, load, workflow


def test_definition_fields() -> None:
    definition = load(
        """
        document:
          dsl: '1.0.3'
          namespace: orders
          name: ship-order
          version: '2.1.0-rc.1+build.7'
          title: Ship an order
          summary: Ships it.
        input:
          schema:
            format: json
            document:
              type: object
              required: [orderId]
        schedule:
          on:
            one:
              with:
                type: com.example.order.placed
          every: PT1H
        do:
          - noop:
              set:
                ok: true
        """
    )
    assert definition.id == "orders.ship-order.2.1.0-rc.1+build.7"
    assert definition.key == "orders.ship-order"
    assert (definition.title, definition.summary) == ("Ship an order", "Ships it.")
    assert definition.input_schema == {"type": "object", "required": ["orderId"]}
    assert definition.triggers == ("every", "event")
    assert definition.document["do"][0]["noop"] == {"set": {"ok": True}}


def test_defaults_without_title_schedule_or_schema() -> None:
    definition = workflow("do: [{a: {set: {x: 1}}}]")
    assert (definition.title, definition.summary, definition.triggers) == ("", "", ())
    assert definition.input_schema is None


def test_plain_inline_input_schema() -> None:
    definition = workflow(
        """
        input:
          schema:
            type: object
            properties: {n: {type: integer}}
        do: [{a: {set: {x: 1}}}]
        """
    )
    assert definition.input_schema == {"type": "object", "properties": {"n": {"type": "integer"}}}


def test_all_schedule_triggers_in_order() -> None:
    definition = workflow(
        """
        schedule: {after: {minutes: 5}, cron: '0 0 * * *'}
        do: [{a: {set: {x: 1}}}]
        """
    )
    assert definition.triggers == ("cron", "after")


def test_json_text_is_accepted() -> None:
    document = {
        "document": {"dsl": "1.0.0", "namespace": "n", "name": "w", "version": "1.0.0"},
        "do": [{"a": {"set": {"x": "${ .y }"}}}],
    }
    assert load_definition_text(json.dumps(document), source="w.json").id == "n.w.1.0.0"
    assert parse_definition(document, source="w.json").key == "n.w"


def test_yaml_reads_like_json() -> None:
    # YAML 1.1 would read `on` and `yes` as booleans and dates as datetime objects.
    assert parse_yaml("on: 1\nyes: 2\nwhen: 2024-01-01\nflag: true\noff: no") == {
        "on": 1,
        "yes": 2,
        "when": "2024-01-01",
        "flag": True,
        "off": "no",
    }


def test_invalid_yaml() -> None:
    with pytest.raises(DefinitionError) as caught:
        load_definition_text("do: [unclosed", source="bad.yaml")
    assert caught.value.path == ""
    assert caught.value.problem.startswith("not valid YAML or JSON: ")
    assert "(line 1, column" in caught.value.problem


def test_error_message_names_source_path_and_problem() -> None:
    text = HEADER + "do:\n  - ship:\n      set: {a: 1}\n      then: shipit\n"
    with pytest.raises(DefinitionError) as caught:
        load_definition_text(text, source="orders.yaml")
    assert (
        str(caught.value) == "orders.yaml at /do/0/ship/then: 'shipit' is not a task in this list"
    )


DOC = "document: {dsl: '1.0.0', namespace: test, name: wf, version: '1.0.0'}"
SET = "do: [{a: {set: {x: 1}}}]"


BROKEN: list[tuple[str, str, str]] = [
    # (definition, path, problem)
    ("[]", "", "a workflow definition must be an object (a YAML or JSON mapping)"),
    (SET, "", "a workflow needs 'document' (dsl, namespace, name, version)"),
    (DOC, "", "a workflow needs 'do', the list of its tasks"),
    (f"{DOC}\n{SET}\nextra: 1", "/extra", "unknown property 'extra' in a workflow"),
    ("document: 1\n" + SET, "/document", "'document' must be an object"),
    (
        "document: {dsl: '1.0.0', namespace: test, name: wf}\n" + SET,
        "/document",
        "'document' needs 'version'",
    ),
    (
        "document: {dsl: '1.0.0', namespace: test, name: wf, version: 1}\n" + SET,
        "/document/version",
        "'version' must be a string",
    ),
    (
        "document: {dsl: '2.0.0', namespace: test, name: wf, version: '1.0.0'}\n" + SET,
        "/document/dsl",
        "DSL version '2.0.0' is not supported by this runtime (1.x only)",
    ),
    (
        "document: {dsl: 'one', namespace: test, name: wf, version: '1.0.0'}\n" + SET,
        "/document/dsl",
        "'one' is not a DSL version (e.g. 1.0.0)",
    ),
    (
        "document: {dsl: '1.0.0', namespace: Test, name: wf, version: '1.0.0'}\n" + SET,
        "/document/namespace",
        "'Test' is not a valid namespace: use 1 to 63 lowercase letters, digits and '-', "
        "starting and ending with a letter or digit",
    ),
    (
        "document: {dsl: '1.0.0', namespace: test, name: my.flow, version: '1.0.0'}\n" + SET,
        "/document/name",
        "'my.flow' is not a valid name: use 1 to 63 lowercase letters, digits and '-', "
        "starting and ending with a letter or digit",
    ),
    (
        "document: {dsl: '1.0.0', namespace: test, name: wf-, version: '1.0.0'}\n" + SET,
        "/document/name",
        "'wf-' is not a valid name: use 1 to 63 lowercase letters, digits and '-', "
        "starting and ending with a letter or digit",
    ),
    (
        "document: {dsl: '1.0.0', namespace: test, name: wf, version: '1.0'}\n" + SET,
        "/document/version",
        "'1.0' is not a semantic version (e.g. 1.0.0)",
    ),
    (
        "document: {dsl: '1.0.0', namespace: test, name: wf, version: '1.0.0', tilte: x}\n" + SET,
        "/document/tilte",
        "unknown property 'tilte' in 'document'",
    ),
    (f"{DOC}\ndo: {{}}", "/do", "'do' must be a list of tasks, not an object"),
    (f"{DOC}\ndo: []", "/do", "'do' must list at least one task"),
    (
        f"{DOC}\ndo: [{{a: {{set: {{x: 1}}}}, b: {{set: {{x: 1}}}}}}]",
        "/do/0",
        "each item of a task list must map one task name to its definition",
    ),
    (
        f"{DOC}\ndo: [{{a: {{set: {{x: 1}}}}}}, {{a: {{set: {{x: 2}}}}}}]",
        "/do/1/a",
        "task name 'a' is used twice in this list (also at /do/0/a)",
    ),
    (f"{DOC}\ndo: [{{a: 3}}]", "/do/0/a", "task 'a' must be an object, not a number"),
    (
        f"{DOC}\ndo: [{{a: {{then: end}}}}]",
        "/do/0/a",
        "task 'a' has no task type; expected one of call, do, emit, for, fork, listen, raise, "
        "run, set, switch, try, wait",
    ),
    (
        f"{DOC}\ndo: [{{a: {{set: {{x: 1}}, wait: PT1S}}}}]",
        "/do/0/a",
        "task 'a' has more than one task type: 'set' and 'wait'",
    ),
    (
        f"{DOC}\ndo: [{{a: {{set: {{x: 1}}, thenn: end}}}}]",
        "/do/0/a/thenn",
        "unknown property 'thenn' in a 'set' task",
    ),
    (
        f"{DOC}\ndo: [{{a: {{set: {{x: 1}}, then: 3}}}}]",
        "/do/0/a/then",
        "'then' must be continue, exit, end or the name of a task",
    ),
    (
        f"{DOC}\ndo:\n  - a: {{set: {{x: 1}}}}\n"
        "  - b:\n      do:\n        - c: {set: {x: 1}, then: a}",
        "/do/1/b/do/0/c/then",
        "'a' is not a task in this list",
    ),
    (
        f"{DOC}\ndo: [{{a: {{set: {{x: '${{ .x | }}'}}}}}}]",
        "/do/0/a/set",
        "invalid expression '${ .x | }': syntax error, unexpected end of file",
    ),
    (
        f"{DOC}\ndo: [{{a: {{set: {{}}}}}}]",
        "/do/0/a/set",
        "'set' needs at least one property",
    ),
    (
        f"{DOC}\ndo: [{{a: {{set: [1]}}}}]",
        "/do/0/a/set",
        "'set' must be an object or a runtime expression, not a list",
    ),
    (
        f"{DOC}\ndo: [{{a: {{if: 3, set: {{x: 1}}}}}}]",
        "/do/0/a/if",
        "a condition must be a runtime expression string, not a number",
    ),
    (
        f"{DOC}\ndo: [{{a: {{if: '.x ==', set: {{x: 1}}}}}}]",
        "/do/0/a/if",
        "invalid expression '.x ==': syntax error, unexpected end of file",
    ),
    (
        f"{DOC}\ndo: [{{a: {{input: {{form: .x}}, set: {{x: 1}}}}}}]",
        "/do/0/a/input/form",
        "unknown property 'form' in 'input'",
    ),
    (
        f"{DOC}\ndo: [{{a: {{output: {{as: 3}}, set: {{x: 1}}}}}}]",
        "/do/0/a/output/as",
        "'output.as' must be a runtime expression or an object",
    ),
    (
        f"{DOC}\ndo: [{{a: {{export: {{as: '{{'}}, set: {{x: 1}}}}}}]",
        "/do/0/a/export/as",
        "invalid expression '{': syntax error, unexpected end of file",
    ),
    (
        f"{DOC}\ninput: {{schema: {{document: {{type: thing}}}}}}\n{SET}",
        "/input/schema/document",
        "invalid JSON schema: 'thing' is not valid under any of the given schemas (at /type)",
    ),
    (
        f"{DOC}\ninput: {{schema: {{format: avro, document: {{}}}}}}\n{SET}",
        "/input/schema/format",
        "schema format 'avro' is not supported by this runtime (only json)",
    ),
    (
        f"{DOC}\ninput: {{schema: {{format: json}}}}\n{SET}",
        "/input/schema",
        "'schema' needs 'document'",
    ),
    (
        f"{DOC}\noutput: {{schema: {{resource: {{endpoint: 'https://x'}}}}}}\n{SET}",
        "/output/schema/resource",
        "external schema resources are not supported by this runtime; give the schema inline "
        "under 'document'",
    ),
    (
        f"{DOC}\ndo: [{{a: {{switch: []}}}}]",
        "/do/0/a/switch",
        "'switch' must be a non-empty list of cases",
    ),
    (
        f"{DOC}\ndo: [{{a: {{switch: [{{c: {{when: .x}}}}]}}}}]",
        "/do/0/a/switch/0/c",
        "switch case 'c' needs 'then'",
    ),
    (
        f"{DOC}\ndo: [{{a: {{switch: [{{c: {{then: end}}}}, {{d: {{then: exit}}}}]}}}}]",
        "/do/0/a/switch/1/d",
        "switch has more than one default case (a case without 'when'): 'c' and 'd'",
    ),
    (
        f"{DOC}\ndo: [{{a: {{switch: [{{c: {{when: .x, then: nowhere}}}}]}}}}]",
        "/do/0/a/switch/0/c/then",
        "'nowhere' is not a task in this list",
    ),
    (
        f"{DOC}\ndo: [{{a: {{switch: [{{c: {{when: .x, then: end, else: 1}}}}]}}}}]",
        "/do/0/a/switch/0/c/else",
        "unknown property 'else' in a case",
    ),
    (
        f"{DOC}\ndo: [{{a: {{raise: {{error: missing}}}}}}]",
        "/do/0/a/raise/error",
        "'missing' is not an error defined in use.errors",
    ),
    (
        f"{DOC}\ndo: [{{a: {{raise: {{error: {{type: 'https://x', status: '400'}}}}}}}}]",
        "/do/0/a/raise/error/status",
        "an error needs 'status', an integer",
    ),
    (
        f"{DOC}\ndo: [{{a: {{raise: {{error: {{status: 400}}}}}}}}]",
        "/do/0/a/raise/error/type",
        "an error needs 'type', a URI string",
    ),
    (
        f"{DOC}\nuse: {{errors: {{e: {{type: 'https://x', status: 500, code: 7}}}}}}\n{SET}",
        "/use/errors/e/code",
        "unknown property 'code' in an error",
    ),
    (
        f"{DOC}\ndo: [{{a: {{wait: 30}}}}]",
        "/do/0/a/wait",
        "a duration must be an ISO 8601 string (e.g. PT30S) or an object of days, hours, "
        "minutes, seconds, milliseconds",
    ),
    (
        f"{DOC}\ndo: [{{a: {{wait: 30 seconds}}}}]",
        "/do/0/a/wait",
        "'30 seconds' is not an ISO 8601 duration (e.g. PT30S, P1DT2H)",
    ),
    (
        f"{DOC}\ndo: [{{a: {{wait: {{secs: 3}}}}}}]",
        "/do/0/a/wait",
        "unknown duration unit 'secs'; expected one of days, hours, minutes, seconds, milliseconds",
    ),
    (
        f"{DOC}\ndo: [{{a: {{wait: PT1S, timeout: short}}}}]",
        "/do/0/a/timeout",
        "'short' is not a timeout defined in use.timeouts",
    ),
    (
        f"{DOC}\ndo: [{{a: {{listen: {{}}}}}}]",
        "/do/0/a/listen",
        "'listen' needs 'to'",
    ),
    (
        f"{DOC}\ndo: [{{a: {{listen: {{to: {{}}}}}}}}]",
        "/do/0/a/listen/to",
        "'to' needs exactly one of 'one', 'any', 'all'",
    ),
    (
        f"{DOC}\ndo: [{{a: {{listen: {{to: {{one: {{with: {{type: x}}}}, any: []}}}}}}}}]",
        "/do/0/a/listen/to",
        "'to' needs exactly one of 'one', 'any', 'all'",
    ),
    (
        f"{DOC}\ndo: [{{a: {{listen: {{to: {{all: [], until: '${{ true }}'}}}}}}}}]",
        "/do/0/a/listen/to/until",
        "'until' applies only to 'any'",
    ),
    (
        f"{DOC}\ndo: [{{a: {{listen: {{to: {{any: [{{type: x}}]}}}}}}}}]",
        "/do/0/a/listen/to/any/0/type",
        "unknown property 'type' in an event filter",
    ),
    (
        f"{DOC}\ndo: [{{a: {{listen: {{to: {{one: {{with: {{}}}}}}}}}}}}]",
        "/do/0/a/listen/to/one/with",
        "'with' must be an object naming at least one event attribute",
    ),
    (
        f"{DOC}\ndo: [{{a: {{listen: {{to: {{one: {{with: {{type: 3}}}}}}}}}}}}]",
        "/do/0/a/listen/to/one/with/type",
        "event attribute 'type' must be a string",
    ),
    (
        f"{DOC}\ndo: [{{a: {{listen: {{to: {{any: []}}, read: body}}}}}}]",
        "/do/0/a/listen/read",
        "'read' must be one of data, envelope, raw",
    ),
    (
        f"{DOC}\nschedule: {{}}\n{SET}",
        "/schedule",
        "'schedule' needs one of every, cron, after, on",
    ),
    (
        f"{DOC}\nschedule: {{cron: 'every day'}}\n{SET}",
        "/schedule/cron",
        "'cron' must be a CRON expression such as '0 0 * * *'",
    ),
    (
        f"{DOC}\nschedule: {{on: {{one: {{}}}}}}\n{SET}",
        "/schedule/on/one",
        "an event filter needs 'with'",
    ),
    (
        f"{DOC}\nevaluate: {{language: js}}\n{SET}",
        "/evaluate/language",
        "expression language 'js' is not supported by this runtime (only jq)",
    ),
    (
        f"{DOC}\nuse: {{secrets: {{a: 1}}}}\n{SET}",
        "/use/secrets",
        "'use.secrets' must be a list",
    ),
    (
        f"{DOC}\ntimeout: {{before: PT1S}}\n{SET}",
        "/timeout",
        "'timeout' must be {after: <duration>} or the name of a use.timeouts entry",
    ),
    (
        f"{DOC}\nuse: {{functions: {{a: {{call: b}}, b: {{call: a}}}}}}\n{SET}",
        "/use/functions/b/call",
        "function 'a' calls itself (a -> b -> a)",
    ),
    (
        f"{DOC}\nuse: {{authentications: {{a: {{use: b}}}}}}\n{SET}",
        "/use/authentications/a/use",
        "an authentication defined in use.authentications cannot 'use' another one",
    ),
    (
        f"{DOC}\ndo: [{{get: {{call: http, with: {{method: get, endpoint: {{uri: 'https://x', "
        "authentication: {use: nope}}}}}]",
        "/do/0/get/with/endpoint/authentication/use",
        "'nope' is not an authentication defined in use.authentications",
    ),
    (
        f"{DOC}\ndo: [{{get: {{call: http, with: {{method: get, endpoint: 'https://x', "
        "verb: get}}}]",
        "/do/0/get/with/verb",
        "unknown property 'verb' in 'with'",
    ),
    (
        f"{DOC}\ndo: [{{get: {{call: http, with: {{method: get, endpoint: 'https://x', "
        "output: json}}}]",
        "/do/0/get/with/output",
        "'output' must be one of content, response, raw",
    ),
    (
        f"{DOC}\ndo: [{{get: {{call: http, with: {{endpoint: 'https://x'}}}}}}]",
        "/do/0/get/with",
        "an http call needs 'method'",
    ),
    (
        f"{DOC}\ndo: [{{g: {{call: grpc, with: {{proto: {{endpoint: 'file://a.proto'}}, "
        "method: M, service: {name: S}}}}]",
        "/do/0/g/with/service",
        "'service' needs 'host', a string",
    ),
    (
        f"{DOC}\ndo: [{{o: {{call: openapi, with: {{document: {{endpoint: 'https://x'}}}}}}}}]",
        "/do/0/o/with",
        "an openapi call needs 'operationId'",
    ),
    (
        f"{DOC}\ndo: [{{e: {{emit: {{event: {{with: {{type: t}}}}}}}}}}]",
        "/do/0/e/emit/event/with",
        "an emitted event needs 'source', a string",
    ),
    (
        f"{DOC}\ndo: [{{f: {{fork: {{branches: [{{a: {{set: {{a: 1}}}}}}], compete: yes}}}}}}]",
        "/do/0/f/fork/compete",
        "'compete' must be true or false",
    ),
    (
        f"{DOC}\ndo: [{{t: {{try: [{{a: {{set: {{a: 1}}}}}}]}}}}]",
        "/do/0/t",
        "a 'try' task needs 'catch'",
    ),
    (
        f"{DOC}\ndo: [{{t: {{try: [{{a: {{set: {{a: 1}}}}}}], catch: {{errors: {{with: "
        "{status: '503'}}}}}]",
        "/do/0/t/catch/errors/with/status",
        "error filter 'status' must be an integer",
    ),
    (
        f"{DOC}\ndo: [{{t: {{try: [{{a: {{set: {{a: 1}}}}}}], catch: {{retry: {{limit: "
        "{attempt: {count: -1}}}}}}]",
        "/do/0/t/catch/retry/limit/attempt/count",
        "'count' must be a non-negative integer",
    ),
    (
        f"{DOC}\ndo: [{{t: {{try: [{{a: {{set: {{a: 1}}}}}}], catch: {{retry: {{jitter: "
        "{from: PT2S, to: PT1S}}}}}]",
        "/do/0/t/catch/retry/jitter",
        "'jitter.from' must not be longer than 'jitter.to'",
    ),
    (
        f"{DOC}\ndo: [{{r: {{run: {{workflow: {{namespace: a, name: b}}}}}}}}]",
        "/do/0/r/run/workflow",
        "'workflow' needs 'version', a string",
    ),
]


@pytest.mark.parametrize(("text", "path", "problem"), BROKEN)
def test_broken_definitions(text: str, path: str, problem: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        load_definition_text(text, source="broken.yaml")
    assert (caught.value.path, caught.value.problem) == (path, problem)
    assert caught.value.source == "broken.yaml"


def test_reusable_timeouts_and_errors_resolve() -> None:
    definition = workflow(
        """
        use:
          timeouts: {short: {after: PT5S}}
          errors: {nope: {type: 'https://example.com/nope', status: 409}}
        timeout: {after: {minutes: 1}}
        do:
          - hold: {wait: PT1M, timeout: short}
          - fail: {raise: {error: nope}}
        """
    )
    plan = definition.plan
    assert plan.timeout is not None and plan.timeout.ms == 60_000
    node = plan.nodes["/do/0/hold"]
    assert node.timeout is not None and node.timeout.ms == 5_000


def test_task_references_are_json_pointers() -> None:
    definition = workflow(
        """
        do:
          - a/b: {set: {x: 1}}
          - c~d: {do: [{inner: {set: {x: 2}}}]}
        """
    )
    assert sorted(definition.plan.nodes) == ["/do/0/a~1b", "/do/1/c~0d", "/do/1/c~0d/do/0/inner"]
