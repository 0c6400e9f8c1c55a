"""The Node.js client as `npm pack` makes it, installed into a scratch project and used there."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.server import Sidecar
from tests.clients.commands import run_command
from tests.clients.node import NODE_DIR, ensure_node_modules
from tests.helpers import Stub

NPM_TIMEOUT_S = 240
# The scratch project's use of the package, by its name: a Run and its status. One JSON line.
SCRIPT = """
const { OkraClient } = require("@okra/sidecar-client");

async function main() {
  const client = new OkraClient(process.argv[2], { timeoutMs: 10000 });
  try {
    const instanceId = await client.run({ workflowId: "tests.forever.1.0.0", input: {} });
    const instance = await client.getStatus(instanceId);
    console.log(JSON.stringify({ instanceId, workflowId: instance.workflowId }));
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
"""


async def run(*command: str | Path, cwd: Path) -> str:
    return await run_command(*command, cwd=cwd, timeout_s=NPM_TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.timeout(3 * NPM_TIMEOUT_S)
async def test_npm_pack_output_installs_and_works_against_a_sidecar(
    sidecar: tuple[Sidecar, Stub], tmp_path: Path
) -> None:
    toolchain = ensure_node_modules()
    npm = shutil.which("npm")
    assert npm is not None  # ensure_node_modules skipped otherwise
    packed = json.loads(
        await run(npm, "pack", "--json", "--pack-destination", tmp_path, cwd=NODE_DIR)
    )
    tarball = tmp_path / packed[0]["filename"]
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    assert "package/protos/okra/workflow/v1/workflow.proto" in names
    assert "package/dist/src/client.js" in names
    assert not (NODE_DIR / "protos").exists(), "postpack removes the copied protos"

    project = tmp_path / "scratch"
    project.mkdir()
    (project / "package.json").write_text('{"name": "scratch", "private": true}\n')
    await run(npm, "install", "--no-audit", "--no-fund", tarball, cwd=project)
    (project / "use.js").write_text(SCRIPT)
    server, stub = sidecar
    out = await run(toolchain.node, "use.js", f"127.0.0.1:{server.port}", cwd=project)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["workflowId"] == "tests.forever.1.0.0"
    instance = await stub.GetStatus(pb.GetStatusRequest(instance_id=report["instanceId"]))
    assert instance.workflow_id == "tests.forever.1.0.0"
