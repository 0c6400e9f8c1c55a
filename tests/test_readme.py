"""The README's grpcurl walkthrough, run command by command against a real sidecar.

The README follows the conventions of tests/docs/commands.py, which finds its commands and runs
them: each ```sh block holds at most one command, starting with `grpcurl` or `VAR=$(grpcurl`,
and the fenced block after it is what it prints, compared strictly: grpcurl's layout and every
line of an error as printed, with only ids, timestamps and cursors free to differ.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from okra_sidecar.cli import main as cli_main
from okra_sidecar.config import Settings
from okra_sidecar.config_sources import ENV_VARIABLES, SETTINGS
from okra_sidecar.engine.definitions.dsl import parse_yaml
from tests.docs.commands import (
    ADDRESS,
    FENCE_RE,
    Step,
    grpcurl_env,
    match_lines,
    parse_commands,
    run_steps,
)
from tests.helpers import make_settings, running_sidecar

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
EXAMPLES_DIR = REPO_ROOT / "examples" / "workflows"
REQUIRED_METHODS = frozenset(
    {"list", "ListWorkflows", "GetStatus", "Query", "Run", "Signal", "Cancel"}
)

# Read by Settings.load besides ENV_VARIABLES, and by the tests (the test section).
LOAD_VARIABLES = frozenset({"OKRA_CONFIG", "OTEL_SDK_DISABLED", "OKRA_SPEC_DIR"})


def parse_readme(text: str) -> list[Step]:
    steps = parse_commands(text, name="README.md")
    for step in steps:
        assert step.script.startswith("grpcurl"), f"{step.where}: {step.script!r}"
    return steps


def test_readme_commands_are_found() -> None:
    steps = parse_readme(README.read_text())
    assert {step.method for step in steps} >= REQUIRED_METHODS
    assert sum(step.expected is not None and step.expected.kind == "error" for step in steps) >= 2
    assert any(step.capture for step in steps)


async def test_readme_walkthrough(redis: Redis, redis_url: str) -> None:
    steps = parse_readme(README.read_text())
    env = grpcurl_env()
    settings = make_settings(redis_url, workflows=EXAMPLES_DIR)
    async with running_sidecar(settings) as (sidecar, _):
        await run_steps(steps, address=f"127.0.0.1:{sidecar.port}", env=env, strict=True)


# "seed" as where the API came from; a random seed (`--seed`) is another word.
ORIGIN_RE = re.compile(r"\bthe seed\b|\bseed(?:'s| interface| keys?| snippets?)\b", re.IGNORECASE)


def test_user_facing_docs_speak_of_the_specification() -> None:
    """The docs name the Host API specification, not how the project came about."""
    documents = [
        README,
        *sorted((REPO_ROOT / "docs").glob("*.md")),
        *sorted((REPO_ROOT / "deploy").rglob("*.md")),
        *sorted((REPO_ROOT / "deploy").rglob("*.yaml")),
        *sorted((REPO_ROOT / "protos").rglob("*.proto")),
        *sorted((REPO_ROOT / "protos").glob("*.md")),
        *sorted((REPO_ROOT / "clients").glob("*/README.md")),
    ]
    found = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for path in documents
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ORIGIN_RE.search(line)
    ]
    assert not found, "say 'the Host API specification' instead of 'seed' in " + ", ".join(found)


# -- the Python quickstart -----------------------------------------------------------------------


def quickstart(text: str) -> tuple[str, str]:
    """The README's one ```python block and the ```text block showing what it prints."""
    fences = list(FENCE_RE.finditer(text))
    found = [n for n, fence in enumerate(fences) if fence.group("info") == "python"]
    assert len(found) == 1, "the README shows one Python program, the quickstart"
    shown = fences[found[0] + 1]
    assert shown.group("info") == "text", "the quickstart is followed by what it prints"
    return fences[found[0]].group("body"), shown.group("body")


async def test_readme_python_quickstart_runs_as_pasted(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    program, shown = quickstart(README.read_text())
    assert "asyncio.run(" in program
    script = tmp_path / "quickstart.py"
    settings = make_settings(redis_url, workflows=EXAMPLES_DIR)
    async with running_sidecar(settings) as (sidecar, _):
        # Only the address changes: the test's sidecar listens on a free port.
        script.write_text(
            program.replace(ADDRESS.replace("localhost", "127.0.0.1"), f"127.0.0.1:{sidecar.port}")
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    match_lines(shown, out.decode(), {}, "quickstart.py")


# -- the configuration section -------------------------------------------------------------------


def test_readme_config_file_lists_every_setting_with_its_default(tmp_path: Path) -> None:
    fences = list(FENCE_RE.finditer(README.read_text()))
    yaml_blocks = [m.group("body") for m in fences if m.group("info") == "yaml"]
    assert len(yaml_blocks) == 1, "the Configuration section shows one yaml block"
    text = yaml_blocks[0]
    document = parse_yaml(text)
    host = document.pop("workflowHostAPI")
    assert {*document, *host} == set(SETTINGS)
    examples = {line.split(":", 1)[0].strip() for line in text.split("\n") if "# example" in line}
    config = tmp_path / "okra.yaml"
    config.write_text(text)
    loaded = Settings.load(flags={"config": str(config)}, environ={})
    defaults = Settings()
    for key, (section, attribute, _) in SETTINGS.items():
        value = getattr(loaded if section is None else getattr(loaded, section), attribute)
        default = getattr(defaults if section is None else getattr(defaults, section), attribute)
        if key in examples:
            assert value != default, f"{key} is marked '# example' but shows its default"
        else:
            assert value == default, (
                f"{key}: the README shows {value!r}, the default is {default!r}"
            )


def test_readme_names_every_flag_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    text = README.read_text()
    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    flags = set(re.findall(r"(--[a-z][a-z-]+)", capsys.readouterr().out)) - {"--help"}
    configuration = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    documented_flags = set(re.findall(r"`(--[a-z][a-z-]+)[ `]", configuration))
    assert documented_flags == flags
    documented_variables = set(re.findall(r"\b((?:OKRA|OTEL)_[A-Z0-9_]+)\b", text))
    assert documented_variables == set(ENV_VARIABLES) | LOAD_VARIABLES
