"""The store's JSON text: orjson, with the stdlib for what orjson refuses."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from okra_sidecar.store.jsontext import dumps, loads

DOCUMENTS: list[Any] = [
    {"v": 2, "status": "waiting", "stack": [{"list": "/do", "index": 0}], "data": {"n": 1}},
    [1, 2.5, -3, True, False, None, "x"],
    {"nested": {"deep": [[], {}, ""]}, "float": 0.1, "big": 2**63 - 1},
    "text",
    0,
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_round_trip_and_same_meaning_as_the_stdlib(document: Any) -> None:
    text = dumps(document)
    assert isinstance(text, str)
    assert " " not in text.replace('"text"', "")  # compact, as the stdlib with separators
    assert loads(text) == document
    assert json.loads(text) == document
    assert loads(json.dumps(document)) == document


def test_non_ascii_text_stays_readable_and_round_trips() -> None:
    assert dumps({"name": "Zoë"}) == '{"name":"Zoë"}'
    assert loads(dumps({"name": "Zoë"}).encode()) == {"name": "Zoë"}


def test_integer_keys_become_text_as_with_the_stdlib() -> None:
    assert dumps({1: "a"}) == json.dumps({1: "a"}, separators=(",", ":"))


def test_integers_beyond_64_bits_fall_back_to_the_stdlib() -> None:
    assert dumps({"n": 2**70}) == '{"n":1180591620717411303424}'


def test_nan_and_infinity_are_written_as_null() -> None:
    assert dumps([math.nan, math.inf]) == "[null,null]"


def test_text_orjson_refuses_is_read_by_the_stdlib() -> None:
    # An earlier version wrote NaN with the stdlib encoder.
    value = loads('{"x":NaN}')
    assert math.isnan(value["x"])


def test_unsupported_types_still_fail() -> None:
    with pytest.raises(TypeError):
        dumps({"x": object()})
    with pytest.raises(ValueError):
        loads("{not json")


def test_default_converts_what_json_has_no_type_for() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    assert dumps({"x": Opaque()}, default=str) == '{"x":"opaque"}'
    assert (
        dumps({"x": Opaque(), "n": 2**70}, default=str)
        == '{"x":"opaque","n":1180591620717411303424}'
    )
