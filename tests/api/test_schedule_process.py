"""Three sidecar processes on one Redis fire a schedule; one is SIGKILLed midway.

Every fire time between the schedule's start and end must have exactly one instance: none
twice (the sidecars race for each firing) and none missed (the survivors carry on).
"""

from __future__ import annotations

import time
from collections import Counter

import grpc
import pytest
from google.protobuf import timestamp_pb2
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.schedules import FIRE_TIME_TAG, SCHEDULE_TAG, format_fire_time
from tests.api.test_process import channel_to, free_port, start_processes
from tests.helpers import eventually, value

pytestmark = pytest.mark.slow
SPAN_S = 8


def at(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


async def test_three_sidecars_start_one_instance_per_firing_though_one_is_killed(
    redis: Redis, redis_url: str
) -> None:
    ports = [free_port() for _ in range(3)]
    env = {"OKRA_SCHEDULE_TICK_MS": "50"}
    processes = await start_processes(redis_url, ports, env=env)
    try:
        start = (int(time.time()) + 3) * 1000
        end = start + SPAN_S * 1000
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
            created = await spb_grpc.ScheduleHostAPIStub(channel).TriggerWorkflow(
                spb.TriggerWorkflowRequest(
                    workflow_id="tests.steps.1.0.0",
                    input=value({"n": 0}),
                    cron_expression="* * * * * *",
                    start_time=at(start),
                    end_time=at(end),
                )
            )
        expected = [format_fire_time(ms) for ms in range(start, end + 1, 1000)]
        per_time: Counter[str] = Counter()
        async with channel_to(ports[1]) as stub:

            async def fired(count: int) -> bool:
                page = await stub.Query(
                    pb.QueryRequest(tags={SCHEDULE_TAG: created.schedule_id}, limit=1000)
                )
                per_time.clear()
                per_time.update(i.tags[FIRE_TIME_TAG] for i in page.instances)
                return len(per_time) >= count

            # Killed once some firings are done and some are still to come.
            await eventually(lambda: fired(2), timeout_s=SPAN_S + 30, what="two firings")
            processes[0].kill()  # SIGKILL: no drain, maybe mid-firing
            await processes[0].wait()
            assert len(per_time) < len(expected), "the kill came after the last firing"
            await eventually(
                lambda: fired(len(expected)), timeout_s=SPAN_S + 30, what="every firing"
            )
        assert sorted(per_time) == expected
        assert set(per_time.values()) == {1}
    finally:
        for process in processes[1:]:
            process.terminate()
        for process in processes:
            await process.wait()
