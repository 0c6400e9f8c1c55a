"""Rule 4, depth: the walk a small Value skips, and why skipping it never lets one through."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2

from okra_sidecar.api.convert import value_to_python
from okra_sidecar.errors import InvalidInputError
from okra_sidecar.policy.rules import check_input_depth


def _lists(depth: int) -> Any:
    data: Any = []
    for _ in range(depth - 1):
        data = [data]
    return data


def _objects(depth: int) -> Any:
    data: Any = {}
    for _ in range(depth - 1):
        data = {"": data}
    return data


def _mixed(depth: int) -> Any:
    data: Any = {}
    for level in range(depth - 1):
        data = [data] if level % 2 else {"": data}
    return data


def _value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if isinstance(data, dict):
        value.struct_value.SetInParent()  # set even when empty, as a client's `{}` is
        value.struct_value.update(data)
    else:
        value.list_value.SetInParent()
        value.list_value.extend(data)
    assert value_to_python(value, "input") == data
    return value


@pytest.mark.parametrize("shape", [_lists, _objects, _mixed])
def test_the_smallest_value_of_each_depth_takes_two_bytes_a_level(shape: Any) -> None:
    # The bound the shortcut rests on: nothing nests d deep in fewer than 2 * d bytes.
    for depth in range(1, 80):
        value = _value(shape(depth))
        assert value.ByteSize() >= 2 * depth, (shape.__name__, depth)


@pytest.mark.parametrize("shape", [_lists, _objects, _mixed])
def test_a_value_one_level_too_deep_is_refused_with_its_size_given(shape: Any) -> None:
    for limit in (1, 2, 3, 8, 32):
        value = _value(shape(limit + 1))
        with pytest.raises(InvalidInputError, match=f"more than {limit} deep"):
            check_input_depth(
                value_to_python(value, "payload"),
                limit,
                field="payload",
                encoded_bytes=value.ByteSize(),
            )
        allowed = _value(shape(limit))
        check_input_depth(
            value_to_python(allowed, "input"), limit, encoded_bytes=allowed.ByteSize()
        )


def test_without_a_size_the_data_is_walked() -> None:
    with pytest.raises(InvalidInputError, match="input: nests objects and arrays more than 2"):
        check_input_depth({"a": {"b": {"c": 1}}}, 2)
