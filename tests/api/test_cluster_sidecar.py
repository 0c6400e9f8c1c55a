"""A sidecar on a 3-master Redis Cluster: instances, signals, schedules, worker tasks, limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest_asyncio
from google.protobuf import timestamp_pb2
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.config import HostSettings
from okra_sidecar.engine.interpreter.effects import EffectKind
from okra_sidecar.schedules import SCHEDULE_TAG
from okra_sidecar.store.base import TurnExtras
from okra_sidecar.store.cluster_client import cluster_redis
from tests.executors.test_runtime import commit_extras, effect, read_task, start_waiting
from tests.helpers import (
    eventually,
    expect_rpc_error,
    held,
    make_settings,
    running_sidecar,
    value,
    wait_for_status,
)


@pytest_asyncio.fixture
async def cluster(cluster_url: str) -> AsyncIterator[Redis]:
    """A client of the run's Cluster (flushed by `cluster_url`)."""
    client = cluster_redis(cluster_url, max_connections=16, socket_timeout=10, connect_timeout=2)
    try:
        yield cast(Redis, client)
    finally:
        await client.aclose()


async def test_a_sidecar_runs_instances_schedules_and_worker_tasks_on_a_cluster(
    cluster: Redis, cluster_url: str
) -> None:
    async with running_sidecar(make_settings(cluster_url)) as (running, stub):
        # Run, Signal, completion, Query and GetHistory.
        ids = []
        for amount in (1, 2, 3):
            request = pb.RunRequest(
                workflow_id="tests.approval.1.0.0", input=value({"amount": amount})
            )
            ids.append((await stub.Run(request)).instance_id)
        for instance_id in ids:
            await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
            await stub.Signal(
                pb.SignalRequest(
                    instance_id=instance_id, signal="approve", payload=value({"by": "x"})
                )
            )
        for instance_id in ids:
            done = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
            assert done.status == pb.WORKFLOW_STATUS_COMPLETED
        page = await stub.Query(pb.QueryRequest(workflow_id="tests.approval.1.0.0"))
        assert sorted(i.instance_id for i in page.instances) == sorted(ids)

        # A worker task: enqueued from the instance's effects, polled, completed.
        waiting = await start_waiting(stub)
        work = {"function": "charge", "arguments": {"amount": 3}, "service": "payments"}
        await commit_extras(
            running, waiting, TurnExtras(effects=[effect("charge#1", EffectKind.WORKER, work)])
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            worker = wpb_grpc.TaskWorkerStub(channel)
            poll = worker.PollTasks(wpb.PollTasksRequest(service="payments", worker_id="w1"))
            task = await asyncio.wait_for(read_task(poll), timeout=20)
            poll.cancel()
            assert (task.instance_id, task.effect_id) == (waiting, "charge#1")
            done_task = await worker.CompleteTask(
                wpb.CompleteTaskRequest(task_id=task.task_id, lease=task.lease)
            )
            assert done_task.accepted
        keys = running.store.keys
        assert await cluster.xlen(keys.tasks("payments", keys.partition(waiting))) == 0

        # A schedule fires an instance every second.
        start = timestamp_pb2.Timestamp()
        start.FromMilliseconds((int(time.time()) + 1) * 1000)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            created = await spb_grpc.ScheduleHostAPIStub(channel).TriggerWorkflow(
                spb.TriggerWorkflowRequest(
                    workflow_id="tests.steps.1.0.0",
                    input=value({"n": 0}),
                    cron_expression="* * * * * *",
                    start_time=start,
                )
            )

        async def fired() -> bool:
            found = await stub.Query(pb.QueryRequest(tags={SCHEDULE_TAG: created.schedule_id}))
            return len(found.instances) >= 2

        await eventually(fired, timeout_s=30, what="two firings of the schedule")


async def test_instance_limits_are_exact_on_a_cluster(cluster: Redis, cluster_url: str) -> None:
    settings = make_settings(cluster_url, host=HostSettings(max_concurrent_instances=5))
    async with running_sidecar(settings) as (_, one), running_sidecar(settings) as (_, two):

        async def attempt(n: int) -> str | None:
            request = pb.RunRequest(workflow_id="tests.forever.1.0.0")
            try:
                return (await (one if n % 2 else two).Run(request)).instance_id
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                return None

        results = await asyncio.gather(*(attempt(n) for n in range(20)))
        admitted = [r for r in results if r is not None]
        assert len(admitted) == 5
        assert await held(cluster) == 5
        await one.Cancel(pb.CancelRequest(instance_id=admitted[0], reason="make room"))
        assert await attempt(1) is not None
        await expect_rpc_error(
            two.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert await held(cluster) == 5
