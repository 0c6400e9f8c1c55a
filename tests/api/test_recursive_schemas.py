"""A Run whose input is too deep to check against a recursive input schema is refused as a
schema mismatch (INVALID_ARGUMENT), never answered INTERNAL, and writes nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.engine.definitions.schema_refs import MAX_REF_CHAIN
from okra_sidecar.errors import Reason
from okra_sidecar.server import Sidecar
from tests.helpers import (
    Stub,
    assert_reason,
    expect_rpc_error,
    make_settings,
    redis_fingerprint,
    running_sidecar,
    value,
)

WORKFLOW_ID = "tests.chain.1.0.0"


def chain_schema() -> dict[str, Any]:
    """The longest allowed chain of $refs, each in a few allOfs, on each level of nested
    arrays: each level costs hundreds of stack frames, and the load check cannot know how
    deep a value will be."""
    defs: dict[str, Any] = {
        f"r{i}": {"allOf": [{"allOf": [{"allOf": [{"$ref": f"#/$defs/r{i + 1}"}]}]}]}
        for i in range(MAX_REF_CHAIN - 1)
    }
    defs[f"r{MAX_REF_CHAIN - 1}"] = {"type": "array", "items": {"$ref": "#/$defs/r0"}}
    return {"$defs": defs, "$ref": "#/$defs/r0"}


def definition() -> str:
    schema = json.dumps({"format": "json", "document": chain_schema()})
    return (
        "document: {dsl: '1.0.0', namespace: tests, name: chain, version: '1.0.0'}\n"
        f"input: {{schema: {schema}}}\n"
        "do: [{a: {set: {x: 1}}}]\n"
    )


@pytest_asyncio.fixture
async def served(
    tmp_path: Path, redis: Redis, redis_url: str
) -> AsyncIterator[tuple[Sidecar, Stub]]:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "chain.yaml").write_text(definition())
    async with running_sidecar(make_settings(redis_url, workflows=workflows)) as running:
        yield running


def nested(depth: int) -> list[Any]:
    """`depth` arrays, one inside the other (Run takes up to 32)."""
    data: list[Any] = []
    for _ in range(depth - 1):
        data = [data]
    return data


async def test_input_too_deep_for_a_recursive_schema_is_invalid_argument(
    served: tuple[Sidecar, Stub], redis: Redis
) -> None:
    _, stub = served
    before = await redis_fingerprint(redis)
    error = await expect_rpc_error(
        stub.Run(pb.RunRequest(workflow_id=WORKFLOW_ID, input=value(nested(30)))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert assert_reason(error, Reason.INPUT_SCHEMA_MISMATCH) == {"field": "input"}
    assert error.details() == (
        "input nests too deeply to check against the workflow's input schema; send a flatter value"
    )
    assert await redis_fingerprint(redis) == before
    # A shallower value of the same shape runs.
    started = await stub.Run(pb.RunRequest(workflow_id=WORKFLOW_ID, input=value(nested(3))))
    assert started.instance_id
