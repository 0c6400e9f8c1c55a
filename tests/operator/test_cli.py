"""The `okra` command end to end: a real sidecar on Redis, the command run as a process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import pytest

from okra_sidecar.config import AuthSettings, TlsSettings
from okra_sidecar.operator.cli import okra as okra_group
from okra_sidecar.operator.session import ExitCode
from okra_sidecar.server import Sidecar
from tests.helpers import Stub, make_settings, running_sidecar
from tests.pki import Authority

OKRA = Path(sys.executable).with_name("okra")
TIMEOUT_S = 30.0
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def okra(address: str, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run `okra ARGS` against the sidecar at `address`, as a user's shell would."""
    environ = {**os.environ, "OKRA_ADDRESS": address, "COLUMNS": "200", **(env or {})}
    environ.pop("OKRA_OUTPUT", None)
    process = await asyncio.create_subprocess_exec(
        str(OKRA),
        *args,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


@pytest.fixture
def address(sidecar: tuple[Sidecar, Stub]) -> str:
    return f"127.0.0.1:{sidecar[0].port}"


async def start_approval(address: str, amount: int = 5, *extra: str) -> str:
    started = await okra(
        address,
        "instances",
        "start",
        "tests.approval.1.0.0",
        "--input",
        json.dumps({"amount": amount}),
        *extra,
    )
    assert started.code == 0, started.err
    return started.out.strip()


async def wait_status(address: str, instance_id: str, status: str) -> dict[str, Any]:
    for _ in range(100):
        got = await okra(address, "instances", "get", instance_id, "-o", "json")
        assert got.code == 0, got.err
        if got.json()["status"] == status:
            return dict(got.json())
        await asyncio.sleep(0.1)
    raise AssertionError(f"{instance_id} never reached {status}")


async def test_workflows_list_and_show(address: str) -> None:
    table = await okra(address, "workflows", "list")
    assert table.code == 0, table.err
    header, *rows = table.out.splitlines()
    assert header.split() == ["WORKFLOW", "VERSION", "TRIGGERS", "TITLE"]
    assert any(row.split()[:3] == ["tests.approval.1.0.0", "1.0.0", "manual"] for row in rows)

    listed = await okra(address, "-o", "json", "workflows", "list")
    ids = {w["workflowId"] for w in listed.json()}
    assert {"tests.approval.1.0.0", "tests.approval.2.0.0", "tests.steps.1.0.0"} <= ids

    both = await okra(address, "workflows", "show", "tests.approval", "-o", "json")
    assert [w["version"] for w in both.json()] == ["1.0.0", "2.0.0"]
    one = await okra(address, "workflows", "show", "tests.approval.2.0.0")
    assert one.code == 0 and "version:    2.0.0" in one.out

    missing = await okra(address, "workflows", "show", "tests.nothing")
    assert missing.code == ExitCode.NOT_FOUND
    assert "no workflow tests.nothing is registered" in missing.err


async def test_an_instance_from_start_to_signal(address: str) -> None:
    instance_id = await start_approval(address, 7, "--tag", "team=ops", "--correlation-id", "c-1")
    waiting = await wait_status(address, instance_id, "waiting")
    assert waiting["tags"] == {"team": "ops"} and waiting["correlationId"] == "c-1"

    table = await okra(address, "instances", "list", "--status", "waiting")
    header, *rows = table.out.splitlines()
    assert header.split()[:4] == ["INSTANCE", "WORKFLOW", "STATUS", "STEP"]
    assert [r.split()[:4] for r in rows] == [
        [instance_id, "tests.approval.1.0.0", "waiting", "/do/0/askForApproval"]
    ]
    by_tag = await okra(address, "instances", "list", "--tag", "team=ops", "-o", "json")
    assert [i["instanceId"] for i in by_tag.json()["instances"]] == [instance_id]
    none = await okra(address, "instances", "list", "--tag", "team=dev")
    assert none.code == 0 and none.out.strip() == "no matching instances"

    signalled = await okra(
        address,
        "instances",
        "signal",
        instance_id,
        "approve",
        "--payload",
        '{"by": "grace"}',
        "--signal-id",
        "s-1",
    )
    assert signalled.code == 0 and signalled.out.strip() == "signal s-1 delivered"
    done = await wait_status(address, instance_id, "completed")
    assert done["output"] == {"amount": 7, "approvedBy": "grace"}
    # Every time in JSON output is RFC 3339, as jq's `fromdate` and other parsers read it.
    for field in ("startTime", "endTime", "updatedAt"):
        assert RFC3339.fullmatch(done[field]), (field, done[field])
    assert done["revision"] >= 2

    finished = await okra(address, "instances", "signal", instance_id, "approve")
    assert finished.code == ExitCode.PRECONDITION, finished.err
    assert "FAILED_PRECONDITION" in finished.err

    history = await okra(address, "instances", "history", instance_id, "-o", "json")
    types = [event["type"] for event in history.json()]
    assert types[0] == "workflow.created" and types[-1] == "workflow.completed"
    assert "task.completed" in types
    assert all(RFC3339.fullmatch(event["time"]) for event in history.json())
    history_table = await okra(address, "instances", "history", instance_id)
    assert history_table.out.splitlines()[0].split() == ["TIME", "EVENT", "TASK", "DETAILS"]

    record = await okra(address, "instances", "get", instance_id)
    assert "status:" in record.out and "completed" in record.out


async def test_count_pages_through_every_match(address: str) -> None:
    ids = [await start_approval(address, n) for n in range(3)]
    for instance_id in ids:
        await wait_status(address, instance_id, "waiting")
    counted = await okra(address, "instances", "count", "--status", "waiting", "-o", "json")
    assert counted.json() == {"count": 3}
    plain = await okra(address, "instances", "count", "--status", "completed")
    assert plain.out.strip() == "0"

    first = await okra(address, "instances", "list", "--limit", "2", "-o", "json")
    page = first.json()
    assert len(page["instances"]) == 2 and page["cursor"]
    rest = await okra(
        address, "instances", "list", "--limit", "2", "--cursor", page["cursor"], "-o", "json"
    )
    seen = [i["instanceId"] for i in page["instances"] + rest.json()["instances"]]
    assert sorted(seen) == sorted(ids)


async def test_cancel_and_watch(address: str) -> None:
    instance_id = await start_approval(address)
    await wait_status(address, instance_id, "waiting")
    watcher = await asyncio.create_subprocess_exec(
        str(OKRA),
        *("--address", address, "-o", "json", "instances", "watch", instance_id),
        stdout=asyncio.subprocess.PIPE,
    )
    assert watcher.stdout is not None
    # Cancel only once the watch has shown the instance waiting.
    first = await asyncio.wait_for(watcher.stdout.readline(), TIMEOUT_S)
    assert json.loads(first)["status"] == "waiting"
    cancelled = await okra(address, "instances", "cancel", instance_id, "--reason", "not needed")
    assert cancelled.code == 0 and cancelled.out.strip() == f"instance {instance_id} cancelled"
    rest, _ = await asyncio.wait_for(watcher.communicate(), TIMEOUT_S)
    assert watcher.returncode == 0
    assert [json.loads(line)["status"] for line in rest.splitlines()] == ["cancelled"]
    final = await wait_status(address, instance_id, "cancelled")
    assert final["cancelReason"] == "not needed"

    twice = await okra(address, "instances", "cancel", instance_id)
    assert twice.code == ExitCode.PRECONDITION
    assert "FAILED_PRECONDITION" in twice.err and "already cancelled" in twice.err


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (
            ["instances", "get", "00000000-0000-4000-8000-000000000000"],
            ExitCode.NOT_FOUND,
            "NOT_FOUND",
        ),
        (["instances", "start", "tests.nothing.1.0.0"], ExitCode.NOT_FOUND, "is not registered"),
        (
            ["instances", "start", "tests.approval.1.0.0", "--input", '{"amount": -1}'],
            ExitCode.USAGE,
            "amount",
        ),
        (
            ["instances", "start", "tests.approval.1.0.0", "--input", "{nope"],
            ExitCode.USAGE,
            "not JSON",
        ),
        (["instances", "get", "not-an-id"], ExitCode.USAGE, "INVALID_ARGUMENT"),
        (["instances", "list", "--tag", "novalue"], ExitCode.USAGE, "is not KEY=VALUE"),
        (["instances", "list", "--started-after", "yesterday"], ExitCode.USAGE, "ISO 8601"),
        (["--tls-cert", __file__, "workflows", "list"], ExitCode.USAGE, "go together"),
        (
            ["schedules", "get", "00000000-0000-4000-8000-000000000000"],
            ExitCode.NOT_FOUND,
            "NOT_FOUND",
        ),
    ],
)
async def test_failures_exit_with_their_code(
    address: str, args: list[str], code: ExitCode, says: str
) -> None:
    result = await okra(address, *args)
    assert result.code == code, (result.out, result.err)
    assert says in result.err
    assert result.out == ""


async def test_a_field_at_fault_is_said_once(address: str) -> None:
    bad_id = await okra(address, "instances", "get", "not-an-id")
    assert bad_id.err.splitlines() == [
        "error: INVALID_ARGUMENT: instance_id: 'not-an-id' is not an instance id:"
        " expected the UUID that Run returned"
    ]
    # Several fields at fault: the message sums them up, each is listed below it.
    bad_input = await okra(
        address, "instances", "start", "tests.approval.1.0.0", "--input", '{"amount": "x"}'
    )
    first, *fields = bad_input.err.splitlines()
    assert first.startswith("error: INVALID_ARGUMENT: input.amount does not match")
    assert fields == ["  input.amount: 'x' is not of type 'number'"]


async def test_an_unreachable_sidecar_is_unavailable(address: str) -> None:
    result = await okra("127.0.0.1:1", "--timeout", "1", "workflows", "list")
    assert result.code == ExitCode.UNAVAILABLE
    assert result.err.startswith("error: ")


async def test_a_refused_call_exits_refused(redis_url: str, redis: Any) -> None:
    settings = make_settings(redis_url)
    settings = replace(settings, auth=AuthSettings(mode="required", hs256_secret="s" * 32))
    async with running_sidecar(settings) as (sidecar, _):
        result = await okra(f"127.0.0.1:{sidecar.port}", "workflows", "list")
        assert result.code == ExitCode.REFUSED
        assert "UNAUTHENTICATED" in result.err
        bad = await okra(f"127.0.0.1:{sidecar.port}", "--token", "x.y.z", "workflows", "list")
        assert bad.code == ExitCode.REFUSED


async def test_schedules_from_trigger_to_delete(address: str) -> None:
    created = await okra(
        address,
        "schedules",
        "trigger",
        "tests.steps.1.0.0",
        "--cron",
        "0 6 * * *",
        "--time-zone",
        "Europe/Berlin",
        "--input",
        "{}",
        "--tag",
        "team=ops",
    )
    assert created.code == 0, created.err
    schedule_id = created.out.strip()

    table = await okra(address, "schedules", "list")
    header, *rows = table.out.splitlines()
    assert header.split()[:3] == ["SCHEDULE", "WORKFLOW", "WHEN"]
    assert any(
        row.startswith(schedule_id) and "cron 0 6 * * * (Europe/Berlin)" in row for row in rows
    )

    paused = await okra(address, "schedules", "pause", schedule_id, "-o", "json")
    assert paused.json()["paused"] is True
    listed = await okra(address, "schedules", "list", "-o", "json")
    assert [s["paused"] for s in listed.json() if s["scheduleId"] == schedule_id] == [True]
    resumed = await okra(address, "schedules", "resume", schedule_id, "-o", "json")
    assert resumed.json()["paused"] is False and resumed.json()["nextFireTimes"]
    shown = await okra(address, "schedules", "get", schedule_id)
    assert "cronExpression: 0 6 * * *" in shown.out.replace("  ", " ")

    deleted = await okra(address, "schedules", "delete", schedule_id)
    assert deleted.code == 0 and deleted.out.strip() == f"schedule {schedule_id} deleted"
    gone = await okra(address, "schedules", "get", schedule_id)
    assert gone.code == ExitCode.NOT_FOUND


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
async def test_completion_scripts(shell: str) -> None:
    script = await okra("127.0.0.1:1", "completion", shell)
    assert script.code == 0
    assert "_OKRA_COMPLETE" in script.out
    completed = await okra(
        "127.0.0.1:1",
        # fish passes the word being completed itself; bash and zsh pass its index.
        env={
            "_OKRA_COMPLETE": f"{shell}_complete",
            "COMP_WORDS": "okra inst",
            "COMP_CWORD": "inst" if shell == "fish" else "1",
        },
    )
    assert completed.code == 0
    assert "instances" in completed.out and "workflows" not in completed.out


async def test_every_command_has_help_with_an_example() -> None:
    def leaves(command: click.Command, path: list[str]) -> list[list[str]]:
        if isinstance(command, click.Group):
            return [p for name, sub in command.commands.items() for p in leaves(sub, [*path, name])]
        return [path]

    for path in leaves(okra_group, []):
        shown = await okra("127.0.0.1:1", *path, "--help")
        assert shown.code == 0, path
        assert "Example" in shown.out, f"okra {' '.join(path)} --help shows no example"


async def test_mutual_tls(redis: Any, redis_url: str, tmp_path: Path) -> None:
    ca = Authority.create(tmp_path / "pki")
    server, client = ca.server(), ca.spiffe_client()
    settings = replace(
        make_settings(redis_url),
        tls=TlsSettings(cert_file=server.cert, key_file=server.key, client_ca_file=ca.cert),
    )
    async with running_sidecar(settings) as (sidecar, _):
        address = f"localhost:{sidecar.port}"
        mutual = ("--tls-ca", str(ca.cert), "--tls-cert", str(client.cert))
        listed = await okra(address, *mutual, "--tls-key", str(client.key), "workflows", "list")
        assert listed.code == 0, listed.err
        assert "tests.approval.1.0.0" in listed.out
        no_cert = await okra(address, "--tls-ca", str(ca.cert), "workflows", "list")
        assert no_cert.code == ExitCode.UNAVAILABLE
        plaintext = await okra(address, "--timeout", "2", "workflows", "list")
        assert plaintext.code == ExitCode.UNAVAILABLE
