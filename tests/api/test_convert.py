"""python_to_value builds the same Value as json_format.ParseDict, for every JSON shape;
value_to_python refuses the numbers JSON has no spelling for."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from okra_sidecar.api.convert import python_to_value, value_to_python
from okra_sidecar.errors import InvalidInputError

SAMPLES: list[Any] = [
    None,
    True,
    False,
    0,
    3,
    -2.5,
    "",
    "text",
    {},
    [],
    {"a": {}},
    [[]],
    {"a": [1, {"b": None, "c": True}], "d": "e"},
    [1, "a", None, {"z": []}],
]


@pytest.mark.parametrize("data", SAMPLES, ids=[repr(s) for s in SAMPLES])
def test_matches_parse_dict_and_round_trips(data: Any) -> None:
    built = struct_pb2.Value()
    python_to_value(data, built)
    expected = struct_pb2.Value()
    if data is None:
        expected.null_value = struct_pb2.NULL_VALUE
    else:
        json_format.ParseDict(data, expected)
    assert built == expected
    assert value_to_python(built, "input") == data


def test_value_to_python_turns_whole_numbers_into_ints_and_keeps_the_rest() -> None:
    built = struct_pb2.Value()
    json_format.ParseDict({"id": 7.0, "ratio": 0.5, "huge": 2.0**60, "list": [1.0, -0.0]}, built)
    data = value_to_python(built, "input")
    assert data == {"id": 7, "ratio": 0.5, "huge": 2.0**60, "list": [1, 0]}
    assert type(data["id"]) is int and type(data["huge"]) is float
    assert type(data["list"][0]) is int


def test_value_to_python_reads_an_unset_value_as_null() -> None:
    assert value_to_python(struct_pb2.Value(), "input") is None


def _with_number(number: float) -> struct_pb2.Value:
    """{"order": {"lines": [{"price": 1.5}, {"price": number}]}}: ParseDict refuses NaN."""
    built = struct_pb2.Value()
    built.struct_value.update({"order": {"lines": [{"price": 1.5}, {"price": number}]}})
    return built


@pytest.mark.parametrize(
    ("number", "name"),
    [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")],
    ids=["nan", "inf", "-inf"],
)
def test_value_to_python_refuses_a_number_json_cannot_write_and_names_its_place(
    number: float, name: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        value_to_python(_with_number(number), "run.input")
    [violation] = caught.value.violations
    assert violation.field == "run.input.order.lines[1].price"
    assert violation.description == f"{name} is not a JSON number; send a finite number"


def test_value_to_python_keeps_finite_floats_at_the_edges() -> None:
    data = value_to_python(_with_number(1.7976931348623157e308), "input")
    assert data == {"order": {"lines": [{"price": 1.5}, {"price": 1.7976931348623157e308}]}}
    tiny = struct_pb2.Value(number_value=5e-324)
    assert value_to_python(tiny, "input") == 5e-324
