"""The run form generated from an input schema, and the input it submits."""

from __future__ import annotations

import pytest

from okra_sidecar.console.forms import FormError, input_form, input_from_form

SCHEMA = {
    "type": "object",
    "required": ["requester", "amount"],
    "properties": {
        "requester": {"type": "string", "minLength": 1, "pattern": "^[a-z]+$"},
        "amount": {"type": "number", "minimum": 0, "maximum": 1000},
        "count": {"type": "integer"},
        "rush": {"type": "boolean"},
        "kind": {"enum": ["digital", "physical"]},
        "items": {"type": "array"},
    },
}


def test_fields_carry_the_schemas_constraints() -> None:
    html = input_form(SCHEMA)
    assert '<input name="string:requester" minlength="1" pattern="^[a-z]+$" required>' in html
    assert 'name="number:amount" min="0" max="1000" required>' in html
    assert "step=1" in html and 'name="integer:count"' in html
    assert 'type=checkbox name="bool:rush"' in html
    assert '<option value="&quot;digital&quot;">digital</option>' in html
    assert '<textarea name="json:items"' in html


def test_a_schema_without_properties_takes_json() -> None:
    assert 'name="__json"' in input_form(None)
    assert 'name="__json"' in input_form({"type": "array"})


def test_submitted_fields_become_typed_json() -> None:
    form = {
        "string:requester": "ada",
        "number:amount": "12.5",
        "integer:count": "",
        "bool:rush": "true",
        "enum:kind": '"digital"',
        "json:items": '[{"sku": "a"}]',
        "csrf": "ignored",
    }
    assert input_from_form(form) == {
        "requester": "ada",
        "amount": 12.5,
        "rush": True,
        "kind": "digital",
        "items": [{"sku": "a"}],
    }
    assert input_from_form({"number:amount": "3"}) == {"amount": 3}
    assert input_from_form({"__json": '{"a": [1]}'}) == {"a": [1]}


@pytest.mark.parametrize(
    ("form", "says"),
    [
        ({"integer:count": "1.5"}, "count: '1.5' is not a whole number"),
        ({"number:amount": "lots"}, "amount: 'lots' is not a number"),
        ({"json:items": "[1,"}, "items: not JSON"),
        ({"__json": "{"}, "input: not JSON"),
    ],
)
def test_bad_fields_are_named(form: dict[str, str], says: str) -> None:
    with pytest.raises(FormError, match=says):
        input_from_form(form)
