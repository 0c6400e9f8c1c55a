"""Loading definitions: broken files refuse the start, versions are immutable in Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from redis.asyncio import Redis

from okra_sidecar.engine.definitions.dsl import parse_definition
from okra_sidecar.engine.runtime.registry import WorkflowRegistry, read_directory
from okra_sidecar.errors import AlreadyExistsError, DefinitionError, NotFoundError
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.redis_store import RedisStore
from tests.helpers import WORKFLOWS_DIR, command_calls

STEPS = yaml.safe_load((WORKFLOWS_DIR / "steps.yaml").read_text())


def write(folder: Path, name: str, document: object) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(document) if name.endswith(".yaml") else json.dumps(document))
    return path


def test_broken_file_is_reported_with_path_and_problem(tmp_path: Path) -> None:
    write(tmp_path, "good.yaml", STEPS)
    broken = {**STEPS, "do": [{"a": {"set": {"x": 1}, "then": "nowhere"}}]}
    bad = write(tmp_path, "bad.json", broken)
    with pytest.raises(DefinitionError) as raised:
        read_directory(tmp_path)
    assert str(bad) in str(raised.value)
    assert "nowhere" in str(raised.value)


def test_same_id_twice_in_a_directory_with_different_content(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", STEPS)
    write(tmp_path, "b.yaml", {**STEPS, "do": [{"only": {"set": {"x": 1}}}]})
    with pytest.raises(DefinitionError, match="bump document.version"):
        read_directory(tmp_path)


def test_yaml_and_json_of_one_document_are_one_definition(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", STEPS)
    write(tmp_path, "a.json", STEPS)
    assert [d.id for d in read_directory(tmp_path)] == ["tests.steps.1.0.0"]


def test_validate_command(tmp_path: Path) -> None:
    write(tmp_path, "steps.yaml", STEPS)
    ok = subprocess.run(
        [sys.executable, "-m", "okra_sidecar", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (ok.returncode, ok.stdout) == (0, "ok tests.steps.1.0.0\n")
    write(tmp_path, "bad.yaml", {"document": {"dsl": "1.0.0"}})
    bad = subprocess.run(
        [sys.executable, "-m", "okra_sidecar", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "bad.yaml" in bad.stderr


def test_serve_refuses_to_start_on_a_broken_file(tmp_path: Path, redis_url: str) -> None:
    write(tmp_path, "bad.yaml", {**STEPS, "do": "nothing"})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "okra_sidecar",
            "serve",
            "--listen=127.0.0.1:0",
            f"--redis-url={redis_url}",
            f"--workflows={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "refusing to start" in result.stderr
    assert "bad.yaml" in result.stderr


async def test_registered_versions_are_immutable(redis: Redis) -> None:
    store = RedisStore(redis=redis, keys=RedisKeys())
    steps = parse_definition(STEPS, source="steps.yaml")
    await WorkflowRegistry(store=store).register([steps])
    await WorkflowRegistry(store=store).register([steps])  # identical content is fine
    changed = parse_definition({**STEPS, "do": [{"x": {"set": {"y": 2}}}]}, source="changed")
    before = await redis.hgetall("okra:definitions")
    with pytest.raises(AlreadyExistsError, match="bump document.version"):
        await WorkflowRegistry(store=store).register([changed])
    assert await redis.hgetall("okra:definitions") == before


async def test_other_sidecars_see_registered_definitions(redis: Redis) -> None:
    store = RedisStore(redis=redis, keys=RedisKeys())
    await WorkflowRegistry(store=store).register(read_directory(WORKFLOWS_DIR))
    other = WorkflowRegistry(store=store)  # a sidecar started without --workflows
    assert (await other.get("tests.steps.1.0.0")).definition.name == "steps"
    assert (await other.resolve("tests.approval")).definition.version == "2.0.0"
    with pytest.raises(NotFoundError, match="ListWorkflows"):
        await other.get("tests.steps.9.0.0")
    with pytest.raises(NotFoundError, match="no registered version"):
        await other.resolve("tests.nothing")


def version_of(version: str, **document: object) -> dict[str, object]:
    """The steps definition under another version (and other document fields)."""
    return {**STEPS, "document": {**STEPS["document"], "version": version, **document}}


async def test_resolve_reads_the_version_index_not_every_definition(redis: Redis) -> None:
    store = RedisStore(redis=redis, keys=RedisKeys())
    big = {"summary": "x" * 200_000}
    versions = [
        parse_definition(version_of(v, **big), source=v) for v in ("1.0.0", "1.10.0", "1.9.0")
    ]
    await WorkflowRegistry(store=store).register(versions)
    other = WorkflowRegistry(store=store)
    before = await command_calls(redis, "hgetall"), await command_calls(redis, "hget")
    for _ in range(5):
        assert (await other.resolve("tests.steps")).definition.version == "1.10.0"
    # One HGET for the content the first time, then the cache; never the whole hash.
    after = await command_calls(redis, "hgetall"), await command_calls(redis, "hget")
    assert (after[0] - before[0], after[1] - before[1]) == (0, 1)
    await WorkflowRegistry(store=store).register(
        [parse_definition(version_of("2.0.0-rc.1"), source="rc")]
    )
    assert (await other.resolve("tests.steps")).definition.version == "2.0.0-rc.1"


async def test_definitions_registered_before_the_index_are_found_and_indexed(
    redis: Redis,
) -> None:
    store = RedisStore(redis=redis, keys=RedisKeys())
    steps = parse_definition(STEPS, source="steps.yaml")
    await WorkflowRegistry(store=store).register([steps])
    await redis.delete("okra:definitions:versions:tests.steps")  # as an older sidecar left it
    assert (await WorkflowRegistry(store=store).resolve("tests.steps")).definition.id == steps.id
    assert await redis.smembers("okra:definitions:versions:tests.steps") == {steps.id.encode()}


def test_a_schema_that_would_never_end_refuses_the_directory(tmp_path: Path) -> None:
    write(tmp_path, "good.yaml", STEPS)
    looping = {"format": "json", "document": {"anyOf": [{"type": "string"}, {"$ref": "#"}]}}
    bad = write(tmp_path, "bad.yaml", {**STEPS, "input": {"schema": looping}})
    with pytest.raises(DefinitionError) as raised:
        read_directory(tmp_path)
    assert f"{bad} at /input/schema/document: invalid JSON schema: the $ref cycle" in str(
        raised.value
    )
    assert "(at /anyOf/1)" in str(raised.value)
