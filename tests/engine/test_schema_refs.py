"""JSON schemas whose validation would never end are refused at load: `$ref` cycles that pass
through no object property or array item, and over-long `$ref` chains. Recursive types (a
tree) still load, and a value too deep for one is refused as a mismatch, not a crash."""

from __future__ import annotations

import json
from typing import Any

import pytest

from okra_sidecar.engine.definitions.schema_refs import MAX_REF_CHAIN
from okra_sidecar.engine.definitions.tasks import TOO_DEEP
from okra_sidecar.errors import DefinitionError

from .support import workflow

NEVER_ENDS = "passes through no object property or array item, so validating it would never end"
CYCLES: list[tuple[dict[str, Any], str, str]] = [
    ({"$ref": "#"}, "# -> #", "the root"),
    ({"allOf": [{"$ref": "#"}]}, "# -> #/allOf/0 -> #", "/allOf/0"),
    ({"anyOf": [{"type": "string"}, {"$ref": "#"}]}, "# -> #/anyOf/1 -> #", "/anyOf/1"),
    (
        {
            "$defs": {"a": {"$anchor": "a", "$ref": "#/$defs/b"}, "b": {"not": {"$ref": "#a"}}},
            "$ref": "#/$defs/a",
        },
        "#/$defs/a -> #/$defs/b -> #/$defs/b/not -> #/$defs/a",
        "/$defs/b/not",
    ),
]
TREE = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "children": {"type": "array", "items": {"$ref": "#"}},
    },
}


def doc(schema: dict[str, Any]) -> str:
    return json.dumps({"format": "json", "document": schema})


def with_input(schema: dict[str, Any]) -> str:
    return f"input: {{schema: {doc(schema)}}}\ndo: [{{a: {{set: {{x: 1}}}}}}]\n"


def with_output(schema: dict[str, Any]) -> str:
    return f"do: [{{a: {{set: {{x: 1}}}}}}]\noutput: {{schema: {doc(schema)}}}\n"


def with_signal(schema: dict[str, Any]) -> str:
    return (
        "do:\n  - wait:\n      listen: {to: {one: {with: {type: go}}}}\n"
        f"      metadata: {{signals: {{go: {{schema: {doc(schema)}}}}}}}\n"
    )


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (with_input, "/input/schema/document"),
        (with_output, "/output/schema/document"),
        (with_signal, "/do/0/wait/metadata/signals/go/schema/document"),
    ],
    ids=["input", "output", "signal"],
)
@pytest.mark.parametrize(
    ("schema", "cycle", "where"), CYCLES, ids=["ref", "allOf", "anyOf", "defs"]
)
def test_a_cycle_with_no_progress_is_refused(
    body: Any, path: str, schema: dict[str, Any], cycle: str, where: str
) -> None:
    with pytest.raises(DefinitionError) as caught:
        workflow(body(schema))
    assert (caught.value.source, caught.value.path) == ("test.yaml", path)
    assert (
        caught.value.problem
        == f"invalid JSON schema: the $ref cycle {cycle} {NEVER_ENDS} (at {where})"
    )


def ref_chain(links: int) -> dict[str, Any]:
    """`links` $refs in a row, then an object whose `c` starts the chain again."""
    defs: dict[str, Any] = {f"r{i}": {"$ref": f"#/$defs/r{i + 1}"} for i in range(links - 1)}
    defs[f"r{links - 1}"] = {"type": "object", "properties": {"c": {"$ref": "#/$defs/r0"}}}
    return {"$defs": defs, "$ref": "#/$defs/r0"}


def test_an_over_long_ref_chain_is_refused() -> None:
    with pytest.raises(DefinitionError) as caught:
        workflow(with_input(ref_chain(MAX_REF_CHAIN + 1)))
    assert caught.value.problem == (
        f"invalid JSON schema: a chain of more than {MAX_REF_CHAIN} $refs on one value starts "
        "here; shorten it (at the root)"
    )


def test_a_recursive_type_through_array_items_loads_and_validates() -> None:
    definition = workflow(with_input(TREE))
    check = definition.plan.input_schema
    assert check is not None
    leaf = {"name": "c", "children": [{"name": "d"}]}
    assert check.problem({"name": "a", "children": [{"name": "b", "children": [leaf]}]}) is None
    bad = {"name": "a", "children": [{"name": "b", "children": [{"name": 1}]}]}
    assert check.problem(bad) == "1 is not of type 'string' (at /children/0/children/0/name)"


def test_a_value_too_deep_for_a_recursive_schema_is_a_problem_not_a_crash() -> None:
    # Each level of the value costs a full chain of $refs: 60 levels exhaust Python's stack.
    definition = workflow(with_output(ref_chain(MAX_REF_CHAIN)))
    check = definition.plan.output_schema
    assert check is not None
    value: dict[str, Any] = {}
    for _ in range(60):
        value = {"c": value}
    assert check.problem(value) == TOO_DEEP
    assert check.problem({"c": {"c": {}}}) is None
