"""The command line as a newcomer meets it: help text, `validate FILE`, codegen's default."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from okra_sidecar.cli import build_parser
from okra_sidecar.cli import main as cli_main
from okra_sidecar.config_sources import ENV_VARIABLES, FLAG_KEYS

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "workflows"


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:  # argparse keeps its subparsers nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise AssertionError("no subcommands")


def test_serve_help_names_the_variable_of_every_flag() -> None:
    options = [a for a in subcommand("serve")._actions if a.option_strings != ["-h", "--help"]]
    assert options
    for action in options:
        named = re.findall(r"\(env (\w+)\)", action.help or "")
        assert len(named) == 1, f"{action.option_strings[0]}: say `(env VAR)` in its help"
        if action.dest == "config":
            assert named == ["OKRA_CONFIG"]
        else:
            assert ENV_VARIABLES[named[0]] == FLAG_KEYS[action.dest], action.option_strings


def test_serve_help_prints_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(env OKRA_REDIS_URL)" in text and "(env OKRA_LOG_FORMAT)" in text


def test_help_points_operators_at_the_okra_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "use the `okra` command" in text and "`okra --help`" in text


def test_validate_takes_one_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["validate", str(EXAMPLES / "order.yaml")]) == 0
    assert capsys.readouterr().out == "ok examples.order.1.0.0\n"


def test_validate_names_a_broken_or_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text((EXAMPLES / "order.yaml").read_text().replace("do:", "dont:", 1))
    assert cli_main(["validate", str(broken)]) == 1
    assert str(broken) in capsys.readouterr().err
    assert cli_main(["validate", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml: cannot be read: No such file or directory" in capsys.readouterr().err


def test_validate_applies_the_configured_definition_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OKRA_CONFIG", raising=False)
    monkeypatch.delenv("OKRA_MAX_DEFINITION_BYTES", raising=False)
    order = EXAMPLES / "order.yaml"
    size = order.stat().st_size
    small = tmp_path / "small.yaml"
    small.write_text(f"maxDefinitionBytes: {size - 1}\n")
    # A file that passes under the default limit is refused under the configured one.
    assert cli_main(["validate", str(order)]) == 0
    assert cli_main(["validate", "--config", str(small), str(order)]) == 1
    assert f"is {size} bytes; maxDefinitionBytes is {size - 1}" in capsys.readouterr().err
    assert cli_main(["validate", "--config", str(small), str(EXAMPLES)]) == 1
    assert f"maxDefinitionBytes is {size - 1}" in capsys.readouterr().err
    monkeypatch.setenv("OKRA_MAX_DEFINITION_BYTES", str(size - 1))
    assert cli_main(["validate", str(order)]) == 1
    assert f"maxDefinitionBytes is {size - 1}" in capsys.readouterr().err
    # A larger configured limit lets through a file over the default one.
    big = tmp_path / "big.yaml"
    big.write_text(order.read_text() + "# padding\n" * 120_000)
    large = tmp_path / "large.yaml"
    large.write_text(f"maxDefinitionBytes: {4 * 1024 * 1024}\n")
    monkeypatch.delenv("OKRA_MAX_DEFINITION_BYTES")
    assert cli_main(["validate", str(big)]) == 1
    assert "maxDefinitionBytes is 1048576" in capsys.readouterr().err
    assert cli_main(["validate", "--config", str(large), str(big)]) == 0
    assert capsys.readouterr().out.endswith("ok examples.order.1.0.0\n")


def test_validate_names_a_broken_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "okra.yaml"
    config.write_text("maxDefinitionBytes: none\n")
    assert cli_main(["validate", "--config", str(config), str(EXAMPLES / "order.yaml")]) == 2
    assert "maxDefinitionBytes: expected a whole number" in capsys.readouterr().err


def test_codegen_without_out_writes_to_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cli_main(["codegen", "--lang", "python", "--workflows", str(EXAMPLES)]) == 0
    out = tmp_path / "cache" / "okra-sidecar" / "codegen" / "python"
    written = {line.removeprefix("wrote ") for line in capsys.readouterr().out.splitlines()}
    assert written == {str(p) for p in out.iterdir()}
    assert out / "examples_order_v1_0_0.py" in out.iterdir()
