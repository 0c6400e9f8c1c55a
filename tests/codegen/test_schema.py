"""JSON Schema -> types: each construct, rendered as TypeScript (the terser of the two)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from okra_sidecar.codegen.python import render_python
from okra_sidecar.codegen.schema import CodegenError, Shim, pascal_case, translate_schema
from okra_sidecar.codegen.signals import listened_signals
from okra_sidecar.codegen.typescript import render_typescript
from okra_sidecar.engine.definitions.dsl import load_definition_text
from tests.codegen.support import WORKFLOWS_DIR


def shim(schema: dict[str, Any] | None) -> Shim:
    taken: set[str] = set()
    return Shim(
        workflow_id="t.order.1.0.0",
        title="",
        marker="m",
        name="Order",
        input=translate_schema(schema, root_name="OrderInput", source="t.order.1.0.0", taken=taken),
        output=translate_schema(None, root_name="OrderOutput", source="t.order.1.0.0", taken=taken),
        signals=(),
    )


def ts(schema: dict[str, Any] | None) -> str:
    text = render_typescript(shim(schema), function="Order")
    body = text.split('export const WORKFLOW_ID = "t.order.1.0.0";\n\n', 1)[1]
    return body.split("export type OrderOutput = unknown;")[0]


def py(schema: dict[str, Any] | None) -> str:
    text = render_python(shim(schema), snake="order")
    body = text.split('WORKFLOW_ID = "t.order.1.0.0"\n\n\n', 1)[1]
    return body.split('OrderOutput: TypeAlias = "Any"')[0].strip()


def test_no_schema_is_any_json() -> None:
    assert ts(None).strip() == "export type OrderInput = unknown;"
    assert py(None) == 'OrderInput: TypeAlias = "Any"'


def test_required_and_optional_properties() -> None:
    schema = {
        "type": "object",
        "required": ["id"],
        "properties": {"id": {"type": "integer"}, "note": {"type": "string"}},
    }
    assert ts(schema).strip() == "export interface OrderInput {\n  id: number;\n  note?: string;\n}"
    assert py(schema) == "class OrderInput(TypedDict):\n    id: int\n    note: NotRequired[str]"


def test_type_lists_enums_and_const() -> None:
    schema = {
        "type": "object",
        "properties": {
            "maybe": {"type": ["string", "null"]},
            "size": {"enum": ["s", "m", 3, True, None]},
            "ratio": {"enum": [0.5, 1]},
            "kind": {"const": "order"},
        },
    }
    text = ts(schema)
    assert "maybe?: string | null;" in text
    assert 'size?: "s" | "m" | 3 | true | null;' in text
    assert "ratio?: number;" in text
    assert 'kind?: "order";' in text
    assert 'size: NotRequired[Literal["s", "m", 3, True] | None]' in py(schema)


def test_arrays_maps_and_nested_objects() -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "anything": {"type": "array"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "free": {"type": "object"},
            "rows": {
                "type": "array",
                "items": {"type": "object", "properties": {"n": {"type": "number"}}},
            },
        },
    }
    text = ts(schema)
    assert "tags?: Array<string>;" in text
    assert "anything?: Array<unknown>;" in text
    assert "counts?: Record<string, number>;" in text
    assert "free?: Record<string, unknown>;" in text
    assert "export interface OrderInputRowsItem {\n  n?: number;\n}" in text
    assert "rows?: Array<OrderInputRowsItem>;" in text


def test_refs_are_declared_once_and_may_recurse() -> None:
    schema = {
        "type": "object",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            },
            "id": {"type": "string"},
        },
        "properties": {
            "tree": {"$ref": "#/$defs/node"},
            "other": {"$ref": "#/$defs/node"},
            "key": {"$ref": "#/$defs/id"},
            "same": {"$ref": "#/properties/key"},
            "self": {"$ref": "#"},
        },
    }
    text = ts(schema)
    assert text.count("export interface OrderNode {") == 1
    assert "children?: Array<OrderNode>;" in text
    assert "tree?: OrderNode;" in text and "other?: OrderNode;" in text
    assert "export type OrderId = string;" in text and "key?: OrderId;" in text
    assert "self?: OrderInput;" in text
    assert 'OrderId: TypeAlias = "str"' in py(schema)


def test_unions_and_all_of() -> None:
    schema = {
        "type": "object",
        "properties": {
            "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "merged": {
                "allOf": [
                    {"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}},
                    {"type": "object", "properties": {"b": {"type": "boolean"}}},
                ]
            },
            "vague": {"allOf": [{"type": "string"}, {"minLength": 2}]},
        },
    }
    text = ts(schema)
    assert "either?: string | number;" in text
    assert "export interface OrderInputMerged {\n  a: string;\n  b?: boolean;\n}" in text
    assert "vague?: unknown;" in text


def test_an_all_of_within_an_all_of_keeps_every_part() -> None:
    # The fields of an allOf behind a $ref were lost: only the outer parts' own were typed.
    schema = {
        "allOf": [{"$ref": "#/$defs/base"}, {"properties": {"c": {"type": "string"}}}],
        "$defs": {
            "base": {
                "allOf": [
                    {"$ref": "#/$defs/named"},
                    {"required": ["b"], "properties": {"b": {"type": "integer"}}},
                ]
            },
            "named": {"required": ["a"], "properties": {"a": {"type": "string"}}},
        },
    }
    assert ts(schema).strip() == (
        "export interface OrderInput {\n  a: string;\n  b: number;\n  c?: string;\n}"
    )
    # A key required by one part and declared by another is required.
    split = {
        "allOf": [
            {"required": ["a"], "properties": {"a": {"type": "string"}}},
            {"properties": {"a": {"type": "string"}}},
        ]
    }
    assert "  a: string;" in ts(split)


def test_non_object_root() -> None:
    assert ts({"type": "array", "items": {"type": "integer"}}).strip() == (
        "export type OrderInput = Array<number>;"
    )


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"properties": {"a": {"$ref": "other.json#/x"}}}, "points outside the document"),
        ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, "points at nothing"),
        ({"properties": {"a": False}}, "accepts nothing"),
        ({"properties": {"a": {"type": "decimal"}}}, "unknown type 'decimal'"),
    ],
)
def test_refusals_name_the_workflow_and_place(schema: dict[str, Any], problem: str) -> None:
    with pytest.raises(CodegenError, match=problem) as caught:
        translate_schema(schema, root_name="OrderInput", source="t.order.1.0.0")
    assert str(caught.value).startswith("t.order.1.0.0: input.schema at /properties/a")


def test_names() -> None:
    assert pascal_case("ship-to") == pascal_case("ship_to") == "ShipTo"
    assert pascal_case("shipTo") == "ShipTo"
    assert pascal_case("3d") == "_3d"
    schema = {
        "type": "object",
        "$defs": {"input": {"type": "string"}},
        "properties": {"a": {"$ref": "#/$defs/input"}, "b": {"type": "object", "properties": {}}},
    }
    assert "export type OrderInput2 = string;" in ts(schema)


def test_output_schema_errors_say_so_and_names_are_shared_with_the_input() -> None:
    with pytest.raises(CodegenError, match="unknown type") as caught:
        translate_schema(
            {"properties": {"a": {"type": "decimal"}}},
            root_name="OrderOutput",
            source="t.order.1.0.0",
            label="output.schema",
        )
    assert str(caught.value).startswith("t.order.1.0.0: output.schema at /properties/a")
    money = {"$defs": {"money": {"type": "object", "properties": {"cents": {"type": "integer"}}}}}
    schema = {"type": "object", "properties": {"m": {"$ref": "#/$defs/money"}}, **money}
    taken = {"OrderHandle"}
    given = translate_schema(schema, root_name="OrderInput", source="t", taken=taken)
    taken_back = translate_schema(schema, root_name="OrderOutput", source="t", taken=taken)
    assert sorted(d.name for d in given.declarations) == ["OrderInput", "OrderMoney"]
    assert sorted(d.name for d in taken_back.declarations) == ["OrderMoney2", "OrderOutput"]


def test_signals_are_the_constant_types_that_listen_tasks_wait_for() -> None:
    refund = load_definition_text((WORKFLOWS_DIR / "refund.yaml").read_text(), source="refund.yaml")
    assert listened_signals(refund) == ("approve", "reject")
    text = render_python(replace(shim(None), signals=listened_signals(refund)), snake="order")
    assert 'OrderSignal: TypeAlias = Literal["approve", "reject"]' in text
    assert "    async def signal(" in text
    # Without a listen, a handle has no signal method and the module no signal type.
    checkout = load_definition_text(
        (WORKFLOWS_DIR / "checkout.yaml").read_text(), source="checkout.yaml"
    )
    assert listened_signals(checkout) == ()
    assert "signal" not in render_typescript(shim(None), function="Order").lower()


@pytest.mark.parametrize(
    ("schema", "cycle"),
    [
        ({"$ref": "#"}, "OrderInput -> OrderInput"),
        (
            {
                "properties": {"a": {"$ref": "#/$defs/a"}},
                "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
            },
            "OrderA -> OrderB -> OrderA",
        ),
        (
            {
                "properties": {"a": {"$ref": "#/$defs/a"}},
                "$defs": {"a": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/a"}]}},
            },
            "OrderA -> OrderA",
        ),
    ],
)
def test_a_ref_cycle_through_no_object_or_array_is_refused(
    schema: dict[str, Any], cycle: str
) -> None:
    # `type A = B; type B = A` would be invalid TypeScript and a mypy error: refuse it instead.
    with pytest.raises(CodegenError, match=f"{cycle} passes through no object or array"):
        translate_schema(schema, root_name="OrderInput", source="t.order.1.0.0")
    # Recursion through an array or an object's property stays a valid recursive type.
    recursive = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"$ref": "#"}}]}
    assert ts(recursive).strip() == "export type OrderInput = string | Array<OrderInput>;"


@pytest.mark.parametrize(
    "schema",
    [
        {"allOf": [{"$ref": "#"}]},
        {
            "properties": {"x": {"$ref": "#/$defs/a"}},
            "$defs": {
                "a": {"allOf": [{"$ref": "#/$defs/b"}]},
                "b": {"allOf": [{"$ref": "#/$defs/a"}]},
            },
        },
    ],
)
def test_an_all_of_that_includes_itself_is_refused_not_a_recursion_error(
    schema: dict[str, Any],
) -> None:
    with pytest.raises(CodegenError, match="allOf includes itself"):
        translate_schema(schema, root_name="OrderInput", source="t.order.1.0.0")


def test_a_title_or_description_cannot_break_out_of_a_comment_or_docstring() -> None:
    title = 'Quote """ and */ and \\N{x}\nsecond line'
    quoted = {"type": "object", "description": 'ends "quoted"', "properties": {"a": {}}}
    python = render_python(replace(shim(quoted), title=title), snake="order")
    compile(python, "shim.py", "exec")
    assert '(Quote \\"\\"\\" and */ and \\\\N{x} second line).' in python
    assert '"""ends \\"quoted\\""""' in python
    typescript = render_typescript(replace(shim(None), title=title), function="Order")
    assert 'workflow t.order.1.0.0 (Quote """ and * / and \\N{x} second line).' in typescript
    assert "*/ and" not in typescript and "\nsecond line" not in typescript


@pytest.mark.parametrize(
    "link", [{"$ref": "#/$defs/a{next}"}, {"allOf": [{"$ref": "#/$defs/a{next}"}]}]
)
def test_a_long_chain_of_refs_is_refused_not_a_recursion_error(link: dict[str, Any]) -> None:
    # A definition nests at most 64 levels, but $refs can chain without end.
    chain = {
        f"a{i}": json.loads(json.dumps(link).replace("{next}", str(i + 1))) for i in range(2000)
    }
    schema = {"properties": {"x": {"$ref": "#/$defs/a0"}}, "$defs": chain | {"a2000": {}}}
    with pytest.raises(CodegenError, match="more than 100 levels deep"):
        translate_schema(schema, root_name="OrderInput", source="t.order.1.0.0")
    short = {f"a{i}": {"$ref": f"#/$defs/a{i + 1}"} for i in range(50)}
    schema = {"properties": {"x": {"$ref": "#/$defs/a0"}}, "$defs": short | {"a50": {}}}
    assert "x?: OrderA0;" in ts(schema)
