"""python_to_value builds the same Value as json_format.ParseDict, for every JSON shape."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from okra_sidecar.api.convert import python_to_value, value_to_python

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
    assert value_to_python(built) == data


def test_value_to_python_turns_whole_numbers_into_ints_and_keeps_the_rest() -> None:
    built = struct_pb2.Value()
    json_format.ParseDict({"id": 7.0, "ratio": 0.5, "huge": 2.0**60, "list": [1.0, -0.0]}, built)
    data = value_to_python(built)
    assert data == {"id": 7, "ratio": 0.5, "huge": 2.0**60, "list": [1, 0]}
    assert type(data["id"]) is int and type(data["huge"]) is float
    assert type(data["list"][0]) is int


def test_value_to_python_reads_an_unset_value_as_null() -> None:
    assert value_to_python(struct_pb2.Value()) is None
