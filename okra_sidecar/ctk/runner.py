"""Runs CTK scenarios through a real sidecar, one sidecar (and key prefix) per scenario.

Each scenario's definition is registered from a folder of its own, run with its input through
the WorkflowHostAPI, and checked step by step against the finished instance (GetStatus) and its
history (GetHistory, for the order tasks ran in). The scenarios' external endpoints are served
by the local stand-in through host overrides.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf import json_format, struct_pb2
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc
from redis.asyncio import Redis

from okra_sidecar.config import (
    EffectSettings,
    EngineSettings,
    RedisSettings,
    ServerSettings,
    Settings,
)
from okra_sidecar.ctk.features import Scenario, Step, parse_feature
from okra_sidecar.ctk.stand_in import STAND_IN_HOSTS, stand_in_server
from okra_sidecar.engine.definitions.dsl import load_definition_text, parse_yaml
from okra_sidecar.errors import DefinitionError
from okra_sidecar.server import start_sidecar
from okra_sidecar.store.cluster_client import cluster_redis, names_a_cluster
from okra_sidecar.store.embedded import EmbeddedRedis

if TYPE_CHECKING:
    from okra_client.gen.workflow.v1.workflow_pb2_grpc import WorkflowHostAPIAsyncStub as Stub
else:
    Stub = pb_grpc.WorkflowHostAPIStub

__all__ = ["ScenarioResult", "run_features"]

FINISHED = {pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED, pb.WORKFLOW_STATUS_CANCELLED}
# In-process turns run without budgets (engine/processes.py): the CTK's definitions are trusted.
ENGINE = EngineSettings(
    processes=0,
    claim_idle_ms=1000,
    timer_interval_ms=20,
    read_block_ms=200,
    expression_timeout_ms=0,
    turn_timeout_ms=0,
)
SCENARIO_TIMEOUT_S = 20.0
# Dropping a scenario's keys after it: connecting and each command.
DROP_TIMEOUT_S = 5.0


class CheckFailedError(AssertionError):
    """A scenario step did not hold; the message says what was expected and found."""


@dataclass(frozen=True)
class ScenarioResult:
    scenario_id: str
    passed: bool
    reason: str = ""


@dataclass(frozen=True)
class Outcome:
    """A finished instance as the checks see it."""

    status: int
    output: Any
    error: dict[str, Any]
    started: list[str]  # task names, in the order they started


def _lookup(value: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise CheckFailedError(f"no '{dotted}' in the output {value!r}")
        value = value[part]
    return value


def _same(expected: Any, actual: Any, what: str) -> None:
    if expected != actual:
        raise CheckFailedError(f"{what}: expected {expected!r}, got {actual!r}")


def check_step(step: Step, outcome: Outcome) -> None:
    """One `Then`/`And` step of the kit against the finished instance.

    Raises:
        CheckFailedError: the step does not hold.
    """
    text = step.text
    completed = outcome.status == pb.WORKFLOW_STATUS_COMPLETED
    names = outcome.started
    if text in ("the workflow should complete", "the workflow should complete with output:"):
        if not completed:
            raise CheckFailedError(f"the workflow did not complete: {outcome.error or outcome}")
        if step.doc is not None:
            _same(parse_yaml(step.doc), outcome.output, "output")
    elif text in ("the workflow should fault", "the workflow should fault with error:"):
        if outcome.status != pb.WORKFLOW_STATUS_FAILED:
            raise CheckFailedError(f"the workflow did not fault: output {outcome.output!r}")
        if step.doc is not None:
            expected = parse_yaml(step.doc)
            _same(expected, {k: outcome.error.get(k) for k in expected}, "error")
    elif match := re.fullmatch(r"the workflow output should have properties (.+)", text):
        for dotted in re.findall(r"'([^']+)'", match[1]):
            _lookup(outcome.output, dotted)
    elif match := re.fullmatch(
        r"the workflow output should have a '(.+)' property with value:", text
    ):
        _same(parse_yaml(step.doc or ""), _lookup(outcome.output, match[1]), match[1])
    elif match := re.fullmatch(
        r"the workflow output should have a '(.+)' property containing (\d+) items", text
    ):
        _same(int(match[2]), len(_lookup(outcome.output, match[1])), f"items of {match[1]}")
    elif match := re.fullmatch(r"(\w+) should run first", text):
        _same(match[1], names[0] if names else None, "first task")
    elif match := re.fullmatch(r"(\w+) should run last", text):
        _same(match[1], names[-1] if names else None, "last task")
    elif match := re.fullmatch(r"(\w+) should run after (\w+)", text):
        if match[1] not in names or match[2] not in names:
            raise CheckFailedError(f"{match[1]} or {match[2]} never ran ({names})")
        if names.index(match[1]) < names.index(match[2]):
            raise CheckFailedError(f"{match[1]} ran before {match[2]} ({names})")
    else:
        raise CheckFailedError(f"unknown CTK step: {text}")


def _value(data: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(data, message)
    return message


def _python(message: Any) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _integral(value: Any) -> Any:
    """Protobuf Values carry every number as a double: give whole numbers back as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value


async def _finished(stub: Stub, instance_id: str) -> pb.WorkflowInstance:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SCENARIO_TIMEOUT_S
    while True:
        instance = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
        if instance.status in FINISHED:
            return instance
        if loop.time() > deadline:
            raise CheckFailedError(
                f"still {pb.WorkflowStatus.Name(instance.status)} after {SCENARIO_TIMEOUT_S:g}s"
                f" at {instance.current_step or 'no step'}"
            )
        await asyncio.sleep(0.02)


async def _started_tasks(stub: Stub, instance_id: str) -> list[str]:
    names: list[str] = []
    cursor = ""
    while True:
        page = await stub.GetHistory(
            pb.GetHistoryRequest(instance_id=instance_id, limit=1000, cursor=cursor)
        )
        names += [e.task.rsplit("/", 1)[-1] for e in page.events if e.type == "task.started"]
        if not page.cursor:
            return names
        cursor = page.cursor


def _write_definition(folder: Path, text: str) -> None:
    folder.mkdir(parents=True)
    (folder / "workflow.yaml").write_text(text, encoding="utf-8")


async def run_scenario(
    scenario: Scenario, *, redis_url: str, stand_in: str, folder: Path, prefix: str
) -> ScenarioResult:
    text, workflow_input, checks = "", None, []
    for step in scenario.steps:
        if step.text == "a workflow with definition:":
            text = step.doc or ""
        elif step.text == "given the workflow input is:":
            workflow_input = parse_yaml(step.doc or "")
        elif step.text != "the workflow is executed":
            checks.append(step)
    try:
        definition = load_definition_text(text, source=f"{scenario.feature}.feature")
    except DefinitionError as exc:
        return ScenarioResult(scenario.id, False, f"definition refused: {exc}")
    await asyncio.to_thread(_write_definition, folder, text)
    settings = Settings(
        server=ServerSettings(listen="127.0.0.1:0", grace_s=1.0),
        redis=RedisSettings(url=redis_url, key_prefix=prefix),
        engine=ENGINE,
        effects=EffectSettings(http_hosts=tuple((h, stand_in) for h in STAND_IN_HOSTS)),
        workflows_dir=folder,
    )
    sidecar = await start_sidecar(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            stub: Stub = pb_grpc.WorkflowHostAPIStub(channel)
            request = pb.RunRequest(workflow_id=definition.id)
            if workflow_input is not None:
                request.input.CopyFrom(_value(workflow_input))
            instance_id = (await stub.Run(request)).instance_id
            instance = await _finished(stub, instance_id)
            outcome = Outcome(
                status=instance.status,
                output=_integral(_python(instance.output)) if instance.HasField("output") else None,
                error=_integral(_python(instance.error)) if instance.HasField("error") else {},
                started=await _started_tasks(stub, instance_id),
            )
        for step in checks:
            check_step(step, outcome)
    except (CheckFailedError, grpc.aio.AioRpcError) as exc:
        detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        return ScenarioResult(scenario.id, False, detail or type(exc).__name__)
    finally:
        await sidecar.stop(None)
    return ScenarioResult(scenario.id, True)


async def _drop_prefix(redis_url: str, prefix: str) -> None:
    # A Cluster's keys are spread over its masters: RedisCluster scans and deletes on each.
    cluster = await names_a_cluster(redis_url, connect_timeout=DROP_TIMEOUT_S)
    client: Redis = (
        cast(
            Redis,
            cluster_redis(
                redis_url,
                max_connections=4,
                socket_timeout=DROP_TIMEOUT_S,
                connect_timeout=DROP_TIMEOUT_S,
            ),
        )
        if cluster
        else Redis.from_url(redis_url)
    )
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def run_features(spec_dir: Path, *, redis_url: str | None = None) -> list[ScenarioResult]:
    """Every scenario of `<spec_dir>/ctk/features`, in file order.

    With no `redis_url`, an embedded redis-server is started for the run (and stopped).
    """
    features = sorted((spec_dir / "ctk" / "features").glob("*.feature"))
    scenarios = [s for path in features for s in parse_feature(path)]
    results: list[ScenarioResult] = []
    with tempfile.TemporaryDirectory(prefix="okra-ctk-") as scratch, stand_in_server() as host:
        embedded = None
        if redis_url is None:
            embedded = EmbeddedRedis(data_dir=Path(scratch) / "redis", appendfsync="no")
            redis_url = await embedded.start()
        try:
            for index, scenario in enumerate(scenarios):
                prefix = f"okra-ctk-{index}:"
                try:
                    results.append(
                        await run_scenario(
                            scenario,
                            redis_url=redis_url,
                            stand_in=host,
                            folder=Path(scratch) / f"scenario-{index}",
                            prefix=prefix,
                        )
                    )
                finally:
                    await _drop_prefix(redis_url, prefix)
        finally:
            if embedded is not None:
                await embedded.stop()
    return results
