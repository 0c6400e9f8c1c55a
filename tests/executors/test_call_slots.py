"""Call slots: capped timeouts, freed by cancellation, shared across workflows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.config import EffectSettings, Settings
from okra_sidecar.store.keys import EXECUTOR_GROUP
from tests.helpers import KEYS, Stub, make_settings, running_sidecar, value, wait_for_status

from .stand_in import http_stand_in

DONE = {pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED}
CALL = """document: {{dsl: '1.0.0', namespace: calls, name: {name}, version: '1.0.0'}}
do:
  - ask:
      call: http
      with: {{method: get, endpoint: '${{ .url }}'}}
      {timeout}
"""


def write_workflows(directory: Path) -> Path:
    # `hang` asks for a year; `quick` takes the default.
    (directory / "hang.yaml").write_text(
        CALL.format(name="hang", timeout="timeout: {after: P365D}")
    )
    (directory / "quick.yaml").write_text(CALL.format(name="quick", timeout=""))
    return directory


class Silent:
    """A server that accepts connections and never answers; counts those still open."""

    def __init__(self) -> None:
        self.open = 0
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            while await reader.read(4096):
                pass  # the request, then nothing back: EOF when the caller gives up
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def silent_server() -> AsyncIterator[Silent]:
    silent = Silent()
    server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    silent.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/never"
    try:
        yield silent
    finally:
        server.close()


def with_effects(settings: Settings, effects: EffectSettings) -> Settings:
    return replace(settings, effects=effects)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def run_hanging(stub: Stub, url: str) -> str:
    run = await stub.Run(pb.RunRequest(workflow_id="calls.hang.1.0.0", input=value({"url": url})))
    return run.instance_id


async def quick_call_completes(stub: Stub) -> bool:
    """Whether a call of another workflow, answered at once, gets a slot and completes."""
    with http_stand_in() as (base, _):
        url = f"{base}/pets/5"
        run = await stub.Run(
            pb.RunRequest(workflow_id="calls.quick.1.0.0", input=value({"url": url}))
        )
        done = await wait_for_status(stub, run.instance_id, DONE, timeout_s=20)
    return done.status == pb.WORKFLOW_STATUS_COMPLETED


async def test_a_call_asking_for_a_year_is_cut_to_the_maximum(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = with_effects(
        make_settings(redis_url, workflows=write_workflows(tmp_path)),
        EffectSettings(max_call_timeout_s=0.5),
    )
    async with silent_server() as silent, running_sidecar(settings) as (_, stub):
        instance_id = await run_hanging(stub, silent.url)
        done = await wait_for_status(stub, instance_id, DONE, timeout_s=20)
        assert done.status == pb.WORKFLOW_STATUS_FAILED
        assert done.error.status == 408
        assert done.error.instance == "/do/0/ask"


async def test_cancelling_instances_aborts_their_calls_and_frees_the_slots(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = with_effects(
        make_settings(redis_url, workflows=write_workflows(tmp_path)),
        EffectSettings(concurrency=2, workflow_share=1.0),
    )
    async with silent_server() as silent, running_sidecar(settings) as (_, stub):
        hanging = [await run_hanging(stub, silent.url) for _ in range(2)]
        await until(lambda: silent.open == 2, "both calls connected")
        for instance_id in hanging:
            await stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="test"))
        await until(lambda: silent.open == 0, "both calls aborted")
        assert await quick_call_completes(stub)
        # The aborted calls were acknowledged: nothing is left for another sidecar to retry.
        for stream in KEYS.all_effects():
            assert not (await redis.xpending(stream, EXECUTOR_GROUP))["pending"]


async def test_one_workflow_cannot_hold_every_slot(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = with_effects(
        make_settings(redis_url, workflows=write_workflows(tmp_path)),
        EffectSettings(concurrency=2, workflow_share=0.5),
    )
    async with silent_server() as silent, running_sidecar(settings) as (_, stub):
        for _ in range(3):
            await run_hanging(stub, silent.url)
        await until(lambda: silent.open == 1, "the workflow's one slot taken")
        assert await quick_call_completes(stub)
        assert silent.open == 1  # the hanging workflow still holds only its share
