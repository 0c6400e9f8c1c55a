"""Signal payload schemas declared in a listen task's `metadata.signals`: compiled at load,
refused at load when they name no signal the task waits for or disagree."""

from __future__ import annotations

import pytest

from okra_sidecar.errors import DefinitionError

from .support import workflow

LISTEN = """
    do:
      - decide:
          listen:
            to:
              any:
                - with: {type: approve}
                - with: {type: reject}
          metadata:
            signals:
%s
"""
APPROVE = """\
              approve:
                schema:
                  format: json
                  document: {type: object, required: [by], properties: {by: {type: string}}}
"""

# A second listen task, waiting for approve alone; its `metadata.signals` entries follow.
AGAIN = """\
      - again:
          listen:
            to:
              one: {with: {type: approve}}
          metadata:
            signals:
"""


def test_a_declared_payload_schema_is_compiled_per_signal() -> None:
    definition = workflow(LISTEN % APPROVE)
    assert set(definition.signal_payloads) == {"approve"}
    check = definition.signal_payloads["approve"]
    assert check.problem({"by": "grace"}) is None
    assert check.problem({"by": 5}) == "5 is not of type 'string' (at /by)"
    assert check.problem(None) == "None is not of type 'object'"


def test_the_same_schema_in_two_listen_tasks_is_one_declaration() -> None:
    twice = (LISTEN % APPROVE) + AGAIN + APPROVE
    assert set(workflow(twice).signal_payloads) == {"approve"}


REFUSED = [
    (
        LISTEN % "              later: {schema: {document: {type: object}}}\n",
        "/do/0/decide/metadata/signals/later",
        "the task does not listen for signal 'later' (it waits for approve, reject); declare "
        "payloads only for the types its 'listen.to' names",
    ),
    (
        LISTEN % "              approve: {document: {type: object}}\n",
        "/do/0/decide/metadata/signals/approve",
        "'metadata.signals.approve' must be an object with 'schema'",
    ),
    (
        LISTEN % "              approve: {schema: {document: {type: object}}, doc: x}\n",
        "/do/0/decide/metadata/signals/approve/doc",
        "unknown property 'doc' in 'metadata.signals.approve'",
    ),
    (
        LISTEN.replace(
            "          metadata:\n            signals:\n%s",
            "          metadata:\n            signals: [approve]\n",
        ),
        "/do/0/decide/metadata/signals",
        "'metadata.signals' must be an object: signal name -> {schema}",
    ),
    (
        (LISTEN % APPROVE)
        + AGAIN
        + "              approve: {schema: {document: {type: string}}}\n",
        "/do/1/again/metadata/signals/approve",
        "signal 'approve' has another payload schema at /do/0/decide/metadata/signals/approve; "
        "declare one schema per signal (or the same one in both places)",
    ),
]


@pytest.mark.parametrize(("body", "path", "problem"), REFUSED)
def test_a_bad_declaration_is_refused_at_load(body: str, path: str, problem: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        workflow(body)
    assert (caught.value.path, caught.value.problem) == (path, problem)
