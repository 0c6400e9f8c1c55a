"""Hostile expressions: each fails its own instance; the sidecar and other instances go on."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from bench.cpu import child_pids
from okra_sidecar.config import EngineSettings, Settings
from okra_sidecar.engine.interpreter.effects import RUNTIME_ERROR
from okra_sidecar.engine.runtime.deadlines import TIMEOUT_ERROR_TYPE
from okra_sidecar.engine.runtime.probation import PROVEN_AFTER_TURNS
from okra_sidecar.engine.runtime.runner import SLOW_DEFINITIONS_REFRESH_S
from okra_sidecar.errors import StartupError
from okra_sidecar.server import start_sidecar
from okra_sidecar.store.base import Store
from tests.api.test_process import channel_to, start_process
from tests.helpers import (
    FAST_ENGINE,
    WORKFLOWS_DIR,
    Stub,
    make_settings,
    process_alive,
    running_sidecar,
    to_python,
    value,
    wait_for_status,
)

pytestmark = pytest.mark.slow
DONE = {pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED}
# The expressions of the reliability report, each of which once froze or aborted the sidecar.
HOSTILE = {
    "recursion": "${ def f: f; f }",
    "repeat": "${ [limit(1e8; repeat(1))] }",
    "reduce": "${ reduce range(.count) as $i (0; .+1) }",
    "range": "${ [range(1e9)] | length }",
}
HOSTILE_INPUT = {"count": 1e12}


def write_workflows(directory: Path) -> Path:
    """The hostile workflows (one task `spin` after a harmless `warm`) beside tests.steps."""
    shutil.copy(WORKFLOWS_DIR / "steps.yaml", directory / "steps.yaml")
    for name, expression in HOSTILE.items():
        header = f"{{dsl: '1.0.0', namespace: hostile, name: {name}, version: '1.0.0'}}"
        (directory / f"{name}.yaml").write_text(
            f"document: {header}\n"
            "do:\n"
            "  - warm:\n"
            "      set: {count: '${ .count }'}\n"
            "  - spin:\n"
            f"      set: {{value: '{expression}'}}\n"
        )
    return directory


async def test_each_hostile_expression_fails_its_instance_and_the_others_complete(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, workflows=write_workflows(tmp_path))
    defaults = EngineSettings()  # the budgets a sidecar has unless told otherwise
    engine = replace(
        FAST_ENGINE,
        processes=1,
        expression_timeout_ms=defaults.expression_timeout_ms,
        turn_timeout_ms=defaults.turn_timeout_ms,
    )
    settings = replace(settings, engine=engine)
    async with running_sidecar(settings) as (sidecar, stub):
        assert sidecar.engines is not None and sidecar.engines.slow_pid is not None
        regular = sidecar.engines.pids
        hostile = {
            name: (
                await stub.Run(
                    pb.RunRequest(workflow_id=f"hostile.{name}.1.0.0", input=value(HOSTILE_INPUT))
                )
            ).instance_id
            for name in HOSTILE
        }
        normal = await stub.Run(
            pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1}))
        )
        done = await wait_for_status(stub, normal.instance_id, DONE, timeout_s=60)
        assert done.status == pb.WORKFLOW_STATUS_COMPLETED
        assert to_python(done.output) == {"n": 22, "done": True}
        for name, instance_id in hostile.items():
            failed = await wait_for_status(stub, instance_id, DONE, timeout_s=90)
            assert failed.status == pb.WORKFLOW_STATUS_FAILED, name
            error = failed.error
            # Over time, or over memory (jq aborts its process) until the retries ran out.
            assert error.type in (TIMEOUT_ERROR_TYPE, RUNTIME_ERROR), (name, error)
            assert error.instance == "/do/1/spin", (name, error)
            assert "/do/1/spin" in error.title, (name, error)
            # Each was marked slow in the slow lane, where its new workflow was on probation.
            key = sidecar.store.keys.instance(instance_id)
            assert await redis.hget(key, "slow") == b"1", name
        assert sidecar.engines.pids == regular  # none of them cost a regular child
        # The sidecar still takes new work.
        again = await stub.Run(
            pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 2}))
        )
        done = await wait_for_status(stub, again.instance_id, DONE, timeout_s=30)
        assert to_python(done.output) == {"n": 32, "done": True}


async def test_a_turn_that_keeps_crashing_its_process_fails_its_instance(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    engine = replace(
        FAST_ENGINE,
        processes=1,
        expression_timeout_ms=0,
        turn_timeout_ms=0,
        memory_mb=64,
        crash_retries=1,
    )
    settings = replace(make_settings(redis_url, workflows=write_workflows(tmp_path)), engine=engine)
    async with running_sidecar(settings) as (sidecar, stub):
        assert sidecar.engines is not None
        regular, slow_child = sidecar.engines.pids, sidecar.engines.slow_pid
        run = await stub.Run(
            pb.RunRequest(workflow_id="hostile.range.1.0.0", input=value(HOSTILE_INPUT))
        )
        failed = await wait_for_status(stub, run.instance_id, DONE, timeout_s=90)
        assert failed.status == pb.WORKFLOW_STATUS_FAILED
        assert failed.error.type == RUNTIME_ERROR
        assert failed.error.title == "Turn crashed its engine process in /do/1/spin"
        assert "2 times" in failed.error.detail
        # It crashed the slow lane's child, where its new workflow was on probation.
        assert sidecar.engines.slow_pid != slow_child
        assert sidecar.engines.pids == regular
        normal = await stub.Run(
            pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1}))
        )
        done = await wait_for_status(stub, normal.instance_id, DONE, timeout_s=30)
        assert done.status == pb.WORKFLOW_STATUS_COMPLETED


async def test_an_engine_child_stuck_in_jq_dies_with_its_killed_parent(
    redis: Redis, redis_url: str, unused_tcp_port: int, tmp_path: Path
) -> None:
    env = {
        "OKRA_ENGINE_PROCESSES": "1",
        "OKRA_EXPRESSION_TIMEOUT_MS": "0",
        "OKRA_TURN_TIMEOUT_MS": "0",
    }
    workflows = write_workflows(tmp_path)
    process = await start_process(redis_url, unused_tcp_port, workflows=workflows, env=env)
    try:
        children = child_pids(process.pid)  # the one taking turns and the spare
        async with channel_to(unused_tcp_port) as stub:
            await stub.Run(
                pb.RunRequest(workflow_id="hostile.reduce.1.0.0", input=value(HOSTILE_INPUT))
            )
        # Wait until a child is busy in the expression (its CPU time grows past a second).
        second = os.sysconf("SC_CLK_TCK")
        # (a child starting on a busy machine may take a while to read the turn).
        for _ in range(1200):
            if any(_cpu_ticks(child) > second for child in children):
                break
            await asyncio.sleep(0.05)
        assert any(_cpu_ticks(child) > second for child in children)
        process.kill()
        await process.wait()
        for _ in range(100):
            if not any(process_alive(child) for child in children):
                break
            await asyncio.sleep(0.05)
        assert not any(process_alive(child) for child in children)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


async def test_in_process_turns_with_budgets_refuse_to_start(redis_url: str) -> None:
    # Settings built in code skip the config check; the start makes it again.
    engine = replace(FAST_ENGINE, expression_timeout_ms=1000)
    settings = replace(make_settings(redis_url), engine=engine)
    with pytest.raises(StartupError, match="cannot be enforced"):
        await start_sidecar(settings)


def slow_lane_settings(redis_url: str, tmp_path: Path) -> Settings:
    """A budget far longer than the mark takes: a normal instance must not wait it out."""
    engine = replace(
        FAST_ENGINE,
        processes=1,
        expression_timeout_ms=15_000,
        turn_timeout_ms=60_000,
        slow_expression_ms=100,
    )
    return replace(make_settings(redis_url, workflows=write_workflows(tmp_path)), engine=engine)


async def wait_marked_slow(redis: Redis, key: str) -> None:
    for _ in range(600):
        if await redis.hget(key, "slow"):
            break
        await asyncio.sleep(0.05)
    assert await redis.hget(key, "slow") == b"1"


async def prove(stub: Stub, store: Store, workflow_id: str, workflow_input: Any) -> None:
    """Run a workflow until its turns have proved fast in the slow lane (probation.py), and
    long enough after that for the regular runners to have read it."""
    for _ in range(PROVEN_AFTER_TURNS):
        run = await stub.Run(pb.RunRequest(workflow_id=workflow_id, input=value(workflow_input)))
        done = await wait_for_status(stub, run.instance_id, DONE, timeout_s=60)
        assert done.status == pb.WORKFLOW_STATUS_COMPLETED
    assert workflow_id in await store.proven_definitions()
    await asyncio.sleep(4 * SLOW_DEFINITIONS_REFRESH_S)


async def take_as_proven(stub: Stub, store: Store, workflow_id: str) -> None:
    """What prove() ends with, without its turns (tests/store/test_slow_lane.py has those),
    once the engine children are set up (a normal instance went through both lanes)."""
    run = await stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1})))
    done = await wait_for_status(stub, run.instance_id, DONE, timeout_s=60)
    assert done.status == pb.WORKFLOW_STATUS_COMPLETED
    await store.mark_proven(workflow_id)
    await asyncio.sleep(4 * SLOW_DEFINITIONS_REFRESH_S)


async def test_a_new_slow_workflow_runs_on_probation_in_the_slow_lane_and_holds_up_nobody(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = slow_lane_settings(redis_url, tmp_path)
    async with running_sidecar(settings) as (sidecar, stub):
        assert sidecar.engines is not None
        await prove(stub, sidecar.store, "tests.steps.1.0.0", {"n": 1})
        [regular] = sidecar.engines.pids
        slow_child = sidecar.engines.slow_pid
        assert slow_child is not None
        if hasattr(os, "SCHED_IDLE"):
            # Turns on probation run at normal priority, like the regular lane's.
            assert os.sched_getscheduler(slow_child) == os.SCHED_OTHER
            assert os.sched_getscheduler(regular) == os.SCHED_OTHER
        hostile = await stub.Run(
            pb.RunRequest(workflow_id="hostile.reduce.1.0.0", input=value(HOSTILE_INPUT))
        )
        await wait_marked_slow(redis, sidecar.store.keys.instance(hostile.instance_id))
        if hasattr(os, "SCHED_IDLE"):
            # Marked slow, it spins on in the slow lane with only the CPU nothing else wants.
            assert os.sched_getscheduler(slow_child) == os.SCHED_IDLE
        normal = await stub.Run(
            pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1}))
        )
        done = await wait_for_status(stub, normal.instance_id, DONE, timeout_s=60)
        assert done.status == pb.WORKFLOW_STATUS_COMPLETED
        # Done while the hostile one still spins in the slow lane, within its budget there.
        status = await stub.GetStatus(pb.GetStatusRequest(instance_id=hostile.instance_id))
        assert status.status not in DONE  # its first turn has committed nothing yet
        assert sidecar.engines.pids == [regular]  # the new hostile workflow cost no regular child
        for pid in sidecar.engines.pids:  # set up (it took the normal turn): no core dumps
            assert resource.prlimit(pid, resource.RLIMIT_CORE) == (0, 0)
        failed = await wait_for_status(stub, hostile.instance_id, DONE, timeout_s=90)
        assert failed.status == pb.WORKFLOW_STATUS_FAILED
        assert failed.error.type == TIMEOUT_ERROR_TYPE
        assert failed.error.title == "Expression timed out in /do/1/spin"
        assert sidecar.engines.slow_pid != slow_child  # stopped over budget in the slow lane


async def test_a_proven_workflow_slow_on_some_input_moves_to_the_slow_lane(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    # Proven fast (on small counts, say), the reduce then runs long in a regular child.
    settings = slow_lane_settings(redis_url, tmp_path)
    async with running_sidecar(settings) as (sidecar, stub):
        assert sidecar.engines is not None
        await take_as_proven(stub, sidecar.store, "hostile.reduce.1.0.0")
        [regular] = sidecar.engines.pids
        hostile = await stub.Run(
            pb.RunRequest(workflow_id="hostile.reduce.1.0.0", input=value(HOSTILE_INPUT))
        )
        await wait_marked_slow(redis, sidecar.store.keys.instance(hostile.instance_id))
        for _ in range(600):  # the regular child that ran it is stopped and replaced
            if sidecar.engines.pids and sidecar.engines.pids != [regular]:
                break
            await asyncio.sleep(0.05)
        assert sidecar.engines.pids and sidecar.engines.pids != [regular]


async def test_a_regular_child_over_its_wall_clock_budget_moves_the_instance_to_the_slow_lane(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    # slowExpressionMs counts CPU time; a child starved of CPU on a busy host reaches the
    # wall-clock budget first. A CPU mark this far away stands in for that host: the budget
    # in a regular child must send the instance to the slow lane, where it then fails.
    engine = replace(
        FAST_ENGINE,
        processes=1,
        expression_timeout_ms=1000,
        turn_timeout_ms=60_000,
        slow_expression_ms=600_000,
    )
    settings = replace(make_settings(redis_url, workflows=write_workflows(tmp_path)), engine=engine)
    async with running_sidecar(settings) as (sidecar, stub):
        assert sidecar.engines is not None
        # Proven, so that the hostile input's turn is taken by a regular child.
        await take_as_proven(stub, sidecar.store, "hostile.reduce.1.0.0")
        slow_child = sidecar.engines.slow_pid
        hostile = await stub.Run(
            pb.RunRequest(workflow_id="hostile.reduce.1.0.0", input=value(HOSTILE_INPUT))
        )
        failed = await wait_for_status(stub, hostile.instance_id, DONE, timeout_s=90)
        assert failed.status == pb.WORKFLOW_STATUS_FAILED
        assert failed.error.type == TIMEOUT_ERROR_TYPE
        assert failed.error.title == "Expression timed out in /do/1/spin"
        key = sidecar.store.keys.instance(hostile.instance_id)
        assert await redis.hget(key, "slow") == b"1"  # judged in the slow lane, not the regular
        assert sidecar.engines.slow_pid != slow_child
