"""Definitions the runtime refuses at load: unsupported features and runs of themselves."""

from __future__ import annotations

import pytest

from okra_sidecar.errors import DefinitionError

from .support import workflow

UNSUPPORTED: list[tuple[str, str, str]] = [
    (
        "do: [{a: {set: {x: 1}}}, {b: {do: [{c: {call: asyncapi, with: {operation: x}}}]}}]",
        "/do/1/b/do/0/c/call",
        "task 'c' uses 'call: asyncapi', which is not supported by this runtime",
    ),
    (
        "do: [{m: {call: mcp, with: {method: tools/list}}}]",
        "/do/0/m/call",
        "task 'm' uses 'call: mcp', which is not supported by this runtime",
    ),
    (
        "do: [{a: {call: a2a, with: {method: message/send}}}]",
        "/do/0/a/call",
        "task 'a' uses 'call: a2a', which is not supported by this runtime",
    ),
    (
        "do: [{log: {call: 'log:1.0.0@default', with: {message: hi}}}]",
        "/do/0/log/call",
        "task 'log' calls 'log:1.0.0@default', a cataloged or remote function, which is not "
        "supported by this runtime; define it in use.functions or name a worker function",
    ),
    (
        "do: [{box: {run: {container: {image: alpine}}}}]",
        "/do/0/box/run/container",
        "task 'box' uses 'run.container', which is not supported by this runtime",
    ),
    (
        "do: [{sh: {run: {shell: {command: ls}}}}]",
        "/do/0/sh/run/shell",
        "task 'sh' uses 'run.shell', which is not supported by this runtime",
    ),
    (
        "do: [{js: {run: {script: {language: js, code: '1'}}}}]",
        "/do/0/js/run/script",
        "task 'js' uses 'run.script', which is not supported by this runtime",
    ),
    (
        "do: [{sub: {run: {workflow: {namespace: test, name: other, version: '1.0.0'}, "
        "return: code}}}]",
        "/do/0/sub/run/return",
        "'return: code' is not supported by this runtime for a workflow (stdout, the child's "
        "output, or none)",
    ),
    (
        "do: [{get: {call: http, with: {method: get, endpoint: {uri: 'https://x', "
        "authentication: {oauth2: {authority: 'https://a', grant: client_credentials}}}}}}]",
        "/do/0/get/with/endpoint/authentication/oauth2",
        "'oauth2' authentication is not supported by this runtime",
    ),
    (
        "use: {secrets: [pw]}\ndo: [{get: {call: http, with: {method: get, endpoint: "
        "{uri: 'https://x', authentication: {basic: {use: pw}}}}}}]",
        "/do/0/get/with/endpoint/authentication/basic/use",
        "secret-based authentication is not supported by this runtime (no secret store)",
    ),
    (
        "do: [{t: {try: [{a: {set: {x: 1}}}], catch: {retry: {delay: PT1S, "
        "backoff: {exponential: {multiplier: 3}}}}}}]",
        "/do/0/t/catch/retry/backoff/exponential",
        "'exponential' backoff settings are not supported by this runtime; the retry 'delay' is "
        "the base of every backoff",
    ),
    (
        "use: {extensions: [{log: {extend: all}}]}\ndo: [{a: {set: {x: 1}}}]",
        "/use/extensions",
        "extensions ('use.extensions') are not supported by this runtime",
    ),
]


@pytest.mark.parametrize(("body", "path", "problem"), UNSUPPORTED)
def test_unsupported_features_are_refused(body: str, path: str, problem: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        workflow(body)
    assert (caught.value.path, caught.value.problem) == (path, problem)


def test_a_workflow_may_not_run_itself() -> None:
    body = """
        do:
          - first: {set: {x: 1}}
          - again:
              do:
                - loop:
                    run:
                      workflow: {namespace: test, name: wf, version: '2.0.0'}
        """
    with pytest.raises(DefinitionError) as caught:
        workflow(body)
    assert (caught.value.path, caught.value.problem) == (
        "/do/1/again/do/0/loop/run/workflow",
        "a workflow may not run itself",
    )


def test_self_run_is_reported_before_unsupported_tasks() -> None:
    body = """
        do:
          - get: {call: mcp, with: {method: tools/list}}
          - loop: {run: {workflow: {namespace: test, name: wf, version: '1.0.0'}}}
        """
    with pytest.raises(DefinitionError, match="a workflow may not run itself"):
        workflow(body)
