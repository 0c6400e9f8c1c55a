"""The okra-client distribution (clients/python) installed alone into a fresh virtualenv."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.server import Sidecar
from tests.clients.commands import run_command
from tests.helpers import Stub

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CLIENT_DIR = REPO_ROOT / "clients" / "python"
INSTALL_TIMEOUT_S = 240
# What the client may bring: gRPC, protobuf and the google.rpc messages (grpcio's own
# typing-extensions), beside what every new virtualenv has.
ALLOWED = {"okra-client", "grpcio", "protobuf", "googleapis-common-protos", "typing-extensions"}
VENV_SEEDS = {"pip", "setuptools"}

# Run by the fresh virtualenv's Python, outside the repository: a Run, its status, a Cancel,
# and the typed error of a second Cancel. Prints one JSON line.
SCRIPT = """
import asyncio, json, sys

from okra_client import InstanceAlreadyFinishedError, OkraClient


async def main() -> None:
    async with OkraClient(sys.argv[1], timeout_s=10.0) as client:
        instance_id = await client.run("tests.forever.1.0.0", {"from": "okra-client"})
        status = (await client.get_status(instance_id)).status.value
        await client.cancel(instance_id, "done")
        try:
            await client.cancel(instance_id)
        except InstanceAlreadyFinishedError as error:
            reason = error.reason
        try:
            import okra_sidecar  # noqa: F401
            sidecar = True
        except ImportError:
            sidecar = False
    print(json.dumps({"instance": instance_id, "status": status, "reason": reason,
                      "sidecar_importable": sidecar}))


asyncio.run(main())
"""


async def run(*command: str | Path, cwd: Path) -> str:
    return await run_command(*command, cwd=cwd, timeout_s=INSTALL_TIMEOUT_S)


def test_the_client_declares_no_server_dependency() -> None:
    project = tomllib.loads((CLIENT_DIR / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert names <= ALLOWED


@pytest.mark.slow
@pytest.mark.timeout(2 * INSTALL_TIMEOUT_S + 60)
async def test_pip_install_of_the_client_alone_works_against_a_sidecar(
    sidecar: tuple[Sidecar, Stub], tmp_path: Path
) -> None:
    server, stub = sidecar
    venv = tmp_path / "venv"
    await run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    await run(python, "-m", "pip", "install", "-q", CLIENT_DIR, cwd=tmp_path)
    listed = json.loads(await run(python, "-m", "pip", "list", "--format=json", cwd=tmp_path))
    installed = {item["name"].lower().replace("_", "-") for item in listed}
    assert {"okra-client", "grpcio", "protobuf"} <= installed
    assert installed - VENV_SEEDS <= ALLOWED, f"server dependencies pulled in: {installed}"

    (tmp_path / "use.py").write_text(SCRIPT)
    out = await run(python, "use.py", f"127.0.0.1:{server.port}", cwd=tmp_path)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["status"] in {"pending", "running", "waiting"}
    assert report["reason"] == "INSTANCE_ALREADY_FINISHED"
    assert report["sidecar_importable"] is False
    instance = await stub.GetStatus(pb.GetStatusRequest(instance_id=report["instance"]))
    assert instance.status == pb.WORKFLOW_STATUS_CANCELLED
