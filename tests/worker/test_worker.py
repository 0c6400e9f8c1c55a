"""The Python worker helper against a real sidecar: handlers, failures, heartbeats, stop."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from okra_sidecar.engine.interpreter.effects import EffectKind
from okra_sidecar.server import Sidecar
from okra_sidecar.store.base import TurnExtras
from okra_sidecar.worker import TaskContext, TaskFailedError, TaskWorker
from tests.executors.test_runtime import commit_extras, effect, start_waiting, wait_for_result
from tests.helpers import Stub


async def test_handlers_complete_and_fail_tasks(
    sidecar: tuple[Sidecar, Stub], redis: Redis
) -> None:
    running, stub = sidecar
    instance_id = await start_waiting(stub)
    worker = TaskWorker(
        target=f"127.0.0.1:{running.port}", service="shop", worker_id="w-1", heartbeat_s=0.05
    )
    seen: list[TaskContext] = []

    @worker.task("charge")
    async def charge(arguments: Any, context: TaskContext) -> Any:
        seen.append(context)
        await asyncio.sleep(0.2)  # outlives a few heartbeats
        return {"charged": arguments["amount"]}

    @worker.task("ship")
    async def ship(arguments: Any) -> Any:
        raise TaskFailedError("no courier today", status=503)

    @worker.task("crash")
    async def crash(arguments: Any) -> Any:
        raise RuntimeError("bug")

    run = asyncio.create_task(worker.run())
    effects = [
        effect("charge#1", EffectKind.WORKER, {"function": "charge", "arguments": {"amount": 9}}),
        effect("ship#1", EffectKind.WORKER, {"function": "ship", "arguments": {}}),
        effect("crash#1", EffectKind.WORKER, {"function": "crash", "arguments": {}}),
        effect("nope#1", EffectKind.WORKER, {"function": "nope", "arguments": {}}),
    ]
    # tests.forever's namespace is `tests`: name the service explicitly, as metadata would.
    for item in effects:
        item["request"]["service"] = "shop"
    await commit_extras(running, instance_id, TurnExtras(effects=effects))
    charged = await wait_for_result(redis, instance_id, "charge#1")
    shipped = await wait_for_result(redis, instance_id, "ship#1")
    crashed = await wait_for_result(redis, instance_id, "crash#1")
    unknown = await wait_for_result(redis, instance_id, "nope#1")
    worker.stop()
    await asyncio.wait_for(run, timeout=5)
    assert charged["value"] == {"charged": 9}
    assert seen[0].instance_id == instance_id and seen[0].attempt == 1
    assert shipped["error"]["status"] == 503 and shipped["error"]["detail"] == "no courier today"
    assert crashed["error"]["status"] == 500 and "RuntimeError: bug" in crashed["error"]["detail"]
    assert unknown["error"]["status"] == 501
    assert await redis.xlen("okra:tasks:shop") == 0
