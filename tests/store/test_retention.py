"""Retention: instances finished more than retentionDays ago go, with every key and index entry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc
from redis.asyncio import Redis

from okra_sidecar.engine.runtime.retention import RetentionKeeper
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.server import start_sidecar
from okra_sidecar.store.cluster_client import cluster_redis
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.retention_store import RedisRetentionStore
from tests.helpers import (
    KEYS,
    FakeClock,
    expect_rpc_error,
    index_size,
    make_settings,
    value,
    wait_for_status,
    with_host,
)

DAY = 86_400_000


async def test_finished_instances_past_retention_are_purged_with_their_keys(
    redis: Redis, redis_url: str
) -> None:
    # Starts at the wall clock, which Cancel reads, and moves on by itself only in the test.
    clock = FakeClock(int(time.time() * 1000))
    settings = with_host(make_settings(redis_url), retention_days=1)
    sidecar = await start_sidecar(settings, clock=clock)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    try:
        stub = pb_grpc.WorkflowHostAPIStub(channel)
        done = [
            (
                await stub.Run(
                    pb.RunRequest(
                        workflow_id="tests.steps.1.0.0",
                        input=value({"n": i}),
                        correlation_id=f"order-{i}",
                        tags={"batch": "old"},
                    )
                )
            ).instance_id
            for i in range(3)
        ]
        held = (await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))).instance_id
        dropped = (await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))).instance_id
        for instance_id in done:
            await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        await wait_for_status(stub, dropped, {pb.WORKFLOW_STATUS_WAITING})
        await stub.Signal(pb.SignalRequest(instance_id=dropped, signal="poke"))
        await stub.Cancel(pb.CancelRequest(instance_id=dropped, reason="no longer needed"))
        await wait_for_status(stub, held, {pb.WORKFLOW_STATUS_WAITING})
        keeper = sidecar.retention
        assert keeper is not None

        clock.now += DAY // 2
        assert await keeper.purge_once() == 0
        clock.now += DAY // 2 + 60_000  # past the cutoff for all four, Cancel's included
        assert await keeper.purge_once() == 4
        assert await keeper.purge_once() == 0

        for instance_id in [*done, dropped]:
            await expect_rpc_error(
                stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id)),
                grpc.StatusCode.NOT_FOUND,
            )
            assert await redis.keys(KEYS.instance(instance_id) + "*") == []
        assert await redis.exists(KEYS.instance(held), KEYS.history(held)) == 2
        page = await stub.Query(pb.QueryRequest())
        assert [i.instance_id for i in page.instances] == [held]
        partition = KEYS.partition(held)
        for index in (
            KEYS.index_all(partition),
            KEYS.index_workflow(partition, "tests.forever.1.0.0"),
        ):
            members: Any = await redis.zrange(index, 0, -1)
            assert [m.decode().split(":", 1)[1] for m in members] == [held]
        leftovers: list[Callable[[int], str]] = [
            KEYS.index_finished,
            lambda p: KEYS.index_workflow(p, "tests.steps.1.0.0"),
            lambda p: KEYS.index_status(p, InstanceStatus.COMPLETED),
            lambda p: KEYS.index_status(p, InstanceStatus.CANCELLED),
            lambda p: KEYS.index_correlation(p, "order-1"),
            lambda p: KEYS.index_tag(p, "batch", "old"),
        ]
        assert [await index_size(redis, k) for k in leftovers] == [0] * len(leftovers)
    finally:
        await channel.close()
        await sidecar.stop(None)


async def test_purging_goes_in_batches(redis: Redis) -> None:
    keys = RedisKeys()
    for i in range(25):
        member = f"{i:017d}:00000000-0000-4000-8000-{i:012d}"
        await redis.zadd(keys.index_finished(keys.partition(member[18:])), {member: 1000 + i})
        await redis.hset(
            keys.instance(member.split(":", 1)[1]),
            mapping={"wf": "tests.steps.1.0.0", "status": "completed", "tags": "{}"},
        )
    store = RedisRetentionStore(redis=redis, keys=keys)
    assert await store.purge_finished(finished_before_ms=1009, limit=4) == 4
    assert await index_size(redis, keys.index_finished) == 21
    from okra_sidecar.config import HostSettings, ScheduleSettings

    keeper = RetentionKeeper(
        store=store,
        host=HostSettings(retention_days=1),
        settings=ScheduleSettings(retention_batch=4),
        clock=lambda: DAY + 1020,
    )
    assert await keeper.purge_once() == 17
    assert await index_size(redis, keys.index_finished) == 4
    await asyncio.sleep(0)


async def test_purging_on_a_redis_cluster_loads_its_script(cluster_url: str) -> None:
    # Written as create and a finishing commit leave them (each in its partition's slot):
    # the script Redis Cluster does not know yet must be loaded for the pipeline.
    client = cast(
        Redis, cluster_redis(cluster_url, max_connections=8, socket_timeout=10, connect_timeout=2)
    )
    keys = RedisKeys(partitions=4)
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(8)]
    try:
        for n, instance_id in enumerate(ids):
            partition = keys.partition(instance_id)
            member = f"{n:017d}:{instance_id}"
            await client.hset(
                keys.instance(instance_id),
                mapping={"wf": "t.w.1.0.0", "status": "completed", "ikey": member},
            )
            await client.zadd(keys.index_all(partition), {member: 0})
            await client.zadd(keys.index_finished(partition), {member: 1000})
        store = RedisRetentionStore(redis=client, keys=keys)
        assert await store.purge_finished(finished_before_ms=2000, limit=100) == len(ids)
        for instance_id in ids:
            assert await client.exists(keys.instance(instance_id)) == 0
            assert await client.zcard(keys.index_all(keys.partition(instance_id))) == 0
    finally:
        await client.aclose()
