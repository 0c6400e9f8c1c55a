"""docs/grpcurl.md: every rpc the sidecar serves is in it, and every command in it runs as shown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from redis.asyncio import Redis

from okra_sidecar.server import Sidecar
from tests.docs.commands import grpcurl_env, parse_commands, run_steps
from tests.helpers import Stub, make_settings, running_sidecar

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
COOKBOOK = REPO_ROOT / "docs" / "grpcurl.md"
EXAMPLES_DIR = REPO_ROOT / "examples" / "workflows"
# Covered otherwise: reflection by `list` and `describe`; Health/Watch, a stream that never
# ends, in prose beside Health/Check. Health/List is in the proto but grpcio's aio health
# servicer does not implement it.
EXEMPT = {
    f"{reflection.SERVICE_NAME}/ServerReflectionInfo",
    f"{health.SERVICE_NAME}/Watch",
    f"{health.SERVICE_NAME}/List",
}


def served_rpcs(target: str) -> set[str]:
    """Every `service/method` the server at `target` lists through reflection."""
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        return {
            f"{name}/{method.name}"
            for name in database.get_services()
            for method in pool.FindServiceByName(name).methods
        }


async def test_every_served_rpc_is_in_the_cookbook(sidecar: tuple[Sidecar, Stub]) -> None:
    parsed = parse_commands(COOKBOOK.read_text(), name="docs/grpcurl.md")
    targets = {step.target for step in parsed}
    # A blocking client, so off the event loop that runs the server.
    served = await asyncio.to_thread(served_rpcs, f"127.0.0.1:{sidecar[0].port}")
    assert f"{health.SERVICE_NAME}/Check" in served
    missing = sorted(served - EXEMPT - targets)
    assert not missing, f"rpcs served but not in docs/grpcurl.md: {missing}"
    assert {"list", "describe"} <= targets
    errors = {s.method for s in parsed if s.expected is not None and s.expected.kind == "error"}
    assert errors >= {"Run", "GetStatus", "Signal", "Cancel"}
    assert all(s.expected is not None or s.capture for s in parsed), "show what each prints"


async def test_cookbook_commands_print_what_it_shows(redis: Redis, redis_url: str) -> None:
    if not EXAMPLES_DIR.is_dir():
        pytest.skip("the cookbook runs the example workflows, and examples/workflows is missing")
    parsed = parse_commands(COOKBOOK.read_text(), name="docs/grpcurl.md")
    settings = make_settings(redis_url, workflows=EXAMPLES_DIR)
    async with running_sidecar(settings) as (sidecar, _):
        await run_steps(parsed, address=f"127.0.0.1:{sidecar.port}", env=grpcurl_env())
