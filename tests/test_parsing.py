"""Bounded YAML and JSON: bombs, depth and size are refused before anything walks the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from okra_sidecar.engine.definitions.dsl import load_definition_text
from okra_sidecar.engine.runtime.registry import read_directory
from okra_sidecar.errors import DefinitionError
from okra_sidecar.parsing import ParseLimitError, ParseLimits, load_json, load_yaml
from tests.api.test_hostile_input import alias_bomb
from tests.helpers import WORKFLOWS_DIR

LIMITS = ParseLimits()


def nested_yaml(depth: int) -> str:
    """A block mapping `depth` levels deep, as a person would write it."""
    return "".join(f"{'  ' * level}k{level}:\n" for level in range(depth)) + "  " * depth + "x"


def test_alias_bomb_is_refused_by_its_expanded_size() -> None:
    with pytest.raises(ParseLimitError, match="expands to more than 1000000 nodes"):
        load_yaml(alias_bomb(), yaml.SafeLoader, LIMITS)


def test_aliases_within_the_limits_load() -> None:
    text = "base: &base {retries: 3}\none: *base\ntwo: {<<: *base, extra: 1}\n"
    assert load_yaml(text, yaml.SafeLoader, LIMITS) == {
        "base": {"retries": 3},
        "one": {"retries": 3},
        "two": {"retries": 3, "extra": 1},
    }


def test_alias_count_is_limited() -> None:
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 11) + "]\n"
    with pytest.raises(ParseLimitError, match="more than 10 aliases"):
        load_yaml(text, yaml.SafeLoader, ParseLimits(max_aliases=10))


@pytest.mark.parametrize("text", [nested_yaml(65), "[" * 5000 + "]" * 5000])
def test_deep_yaml_is_refused(text: str) -> None:
    with pytest.raises(ParseLimitError, match="nests more than 64 levels deep"):
        load_yaml(text, yaml.SafeLoader, LIMITS)


def test_deep_flow_yaml_is_refused_as_it_is_scanned() -> None:
    # The scanner refuses the 65th open bracket: it no longer reads on (up to 1024 characters
    # for a possible key at each level, a cost that grows with the depth) to the character
    # here that cannot start any token, which the composer's own check came after.
    text = "[" * 65 + "`" + "]" * 65
    with pytest.raises(ParseLimitError, match="nests more than 64 levels deep"):
        load_yaml(text, yaml.SafeLoader, LIMITS)
    flat = "[" * 64 + "1" + "]" * 64
    assert load_yaml(flat, yaml.SafeLoader, LIMITS) is not None


def test_yaml_at_the_depth_limit_loads() -> None:
    assert load_yaml(nested_yaml(64), yaml.SafeLoader, LIMITS) is not None


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "[" * 65 + "]" * 65])
def test_deep_json_is_refused(text: str) -> None:
    with pytest.raises(ParseLimitError, match="nests more than 64 levels deep"):
        load_json(text, LIMITS)


@pytest.mark.parametrize("text", ["x" * 101, b"x" * 101])
def test_size_is_limited(text: str | bytes) -> None:
    small = ParseLimits(max_bytes=100)
    with pytest.raises(ParseLimitError, match="the limit is 100 bytes"):
        load_json(text, small)
    if isinstance(text, str):
        with pytest.raises(ParseLimitError, match="the limit is 100 bytes"):
            load_yaml(text, yaml.SafeLoader, small)


def test_a_400_deep_definition_names_its_file() -> None:
    with pytest.raises(DefinitionError) as raised:
        load_definition_text(nested_yaml(400), source="deep.yaml")
    assert str(raised.value).startswith("deep.yaml: ")
    assert "nests more than 64 levels deep" in str(raised.value)


def test_definition_with_an_alias_bomb_names_its_file() -> None:
    with pytest.raises(DefinitionError, match=r"^bomb\.yaml: refused: the document expands"):
        load_definition_text(alias_bomb(), source="bomb.yaml")


def test_definition_over_max_definition_bytes_stops_the_start(tmp_path: Path) -> None:
    steps = (WORKFLOWS_DIR / "steps.yaml").read_text()
    (tmp_path / "steps.yaml").write_text(steps)
    big = tmp_path / "big.json"
    document = yaml.safe_load(steps)
    document["document"]["name"] = "big"
    document["document"]["summary"] = "x" * 2000
    big.write_text(json.dumps(document))
    assert len(read_directory(tmp_path, max_bytes=4096)) == 2
    with pytest.raises(DefinitionError) as raised:
        read_directory(tmp_path, max_bytes=1000)
    assert f"{big}: is {big.stat().st_size} bytes; maxDefinitionBytes is 1000" in str(raised.value)
