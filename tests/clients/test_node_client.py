"""The Node.js client (clients/node, @grpc/grpc-js) end to end against a real sidecar."""

from __future__ import annotations

import asyncio
import json

import pytest

from okra_sidecar.gen.workflow.v1 import workflow_pb2 as pb
from okra_sidecar.server import Sidecar
from tests.clients.node import NODE_DIR, NodeToolchain, ensure_node_modules, run_tsc
from tests.helpers import Stub

E2E_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def node_client() -> NodeToolchain:
    """The client and its e2e script compiled by tsc (strict) into clients/node/dist."""
    toolchain = ensure_node_modules()
    built = run_tsc(toolchain, "-p", ".", cwd=NODE_DIR)
    assert built.returncode == 0, f"tsc -p clients/node:\n{built.stdout}{built.stderr}"
    return toolchain


@pytest.mark.timeout(E2E_TIMEOUT_S + 30)
async def test_node_client_runs_signals_queries_and_cancels(
    node_client: NodeToolchain, sidecar: tuple[Sidecar, Stub]
) -> None:
    server, stub = sidecar
    process = await asyncio.create_subprocess_exec(
        node_client.node,
        str(NODE_DIR / "dist" / "test" / "e2e.js"),
        f"127.0.0.1:{server.port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), E2E_TIMEOUT_S)
    assert process.returncode == 0, f"node e2e failed:\n{err.decode()}{out.decode()}"
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["ok"] is True
    # What the Node client did is visible to the Python stub too.
    completed = await stub.GetStatus(pb.GetStatusRequest(instance_id=report["completed"]))
    assert completed.status == pb.WORKFLOW_STATUS_COMPLETED
    assert completed.tags["client"] == "node"
    cancelled = await stub.GetStatus(pb.GetStatusRequest(instance_id=report["cancelled"]))
    assert cancelled.status == pb.WORKFLOW_STATUS_CANCELLED
    assert cancelled.cancel_reason == "changed my mind"
