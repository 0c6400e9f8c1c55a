"""docs/grpcurl.md: every rpc is in it, and every command in it runs as shown."""

from __future__ import annotations

from pathlib import Path

from grpc_health.v1 import health
from redis.asyncio import Redis

from okra_sidecar.gen.workflow.v1 import workflow_pb2 as pb
from okra_sidecar.server import SERVICE_NAME
from tests.docs.commands import grpcurl_env, parse_commands, run_steps
from tests.helpers import make_settings, running_sidecar

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
COOKBOOK = REPO_ROOT / "docs" / "grpcurl.md"
EXAMPLES_DIR = REPO_ROOT / "examples" / "workflows"


def test_every_rpc_is_in_the_cookbook() -> None:
    parsed = parse_commands(COOKBOOK.read_text(), name="docs/grpcurl.md")
    targets = {step.target for step in parsed}
    service = pb.DESCRIPTOR.services_by_name["WorkflowHostAPI"]
    wanted = {f"{SERVICE_NAME}/{method.name}" for method in service.methods}
    wanted |= {f"{health.SERVICE_NAME}/Check", "list", "describe"}
    assert wanted <= targets, f"not in docs/grpcurl.md: {sorted(wanted - targets)}"
    errors = [s for s in parsed if s.expected is not None and s.expected.kind == "error"]
    assert {s.method for s in errors} >= {"Run", "GetStatus", "Signal", "Cancel"}
    assert all(s.expected is not None or s.capture for s in parsed), "show what each prints"


async def test_cookbook_commands_print_what_it_shows(redis: Redis, redis_url: str) -> None:
    parsed = parse_commands(COOKBOOK.read_text(), name="docs/grpcurl.md")
    settings = make_settings(redis_url, workflows=EXAMPLES_DIR)
    async with running_sidecar(settings) as (sidecar, _):
        await run_steps(parsed, address=f"127.0.0.1:{sidecar.port}", env=grpcurl_env())
