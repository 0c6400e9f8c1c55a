"""The scheduler against a real Redis with a clock the test moves: days of cron in seconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from okra_sidecar.admission import RunLimits
from okra_sidecar.config import HostSettings, ScheduleSettings
from okra_sidecar.engine.definitions.dsl import WorkflowDefinition, load_definition_text
from okra_sidecar.engine.runtime.cancelling import cancel_instance
from okra_sidecar.engine.runtime.registry import WorkflowRegistry, read_directory
from okra_sidecar.engine.runtime.scheduler import Scheduler
from okra_sidecar.errors import DefinitionError, FailedPreconditionError, PolicyDeniedError
from okra_sidecar.instances import InstanceRecord, QueryFilter
from okra_sidecar.schedules import (
    FIRE_TIME_TAG,
    SCHEDULE_TAG,
    CatchUpPolicy,
    OverlapPolicy,
    ScheduleSource,
    ScheduleSpec,
    definition_schedule_id,
)
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.redis_store import RedisStore
from okra_sidecar.store.schedule_store import RedisScheduleStore
from tests.helpers import WORKFLOWS_DIR, FakeClock

HOUR = 3_600_000
DAY = 24 * HOUR
SCHEDULED_DIR = Path(__file__).parent.parent / "workflows_scheduled"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@dataclass
class World:
    store: RedisStore
    schedules: RedisScheduleStore
    registry: WorkflowRegistry
    clock: FakeClock

    def scheduler(self, **options: Any) -> Scheduler:
        return Scheduler(
            schedules=self.schedules,
            store=self.store,
            registry=self.registry,
            host=HostSettings(),
            settings=ScheduleSettings(tick_ms=250, misfire_grace_s=60),
            clock=self.clock,
            **options,
        )

    async def instances(self, schedule_id: str) -> list[InstanceRecord]:
        page = await self.store.query(QueryFilter(tags={SCHEDULE_TAG: schedule_id}, limit=1000))
        return sorted(page.instances, key=lambda r: r.tags[FIRE_TIME_TAG])

    async def fire_times(self, schedule_id: str) -> list[str]:
        return [r.tags[FIRE_TIME_TAG] for r in await self.instances(schedule_id)]


@pytest_asyncio.fixture
async def world(redis: Redis) -> AsyncIterator[World]:
    keys = RedisKeys()
    store = RedisStore(redis=redis, keys=keys)
    registry = WorkflowRegistry(store=store)
    await registry.register(read_directory(WORKFLOWS_DIR))
    yield World(
        store=store,
        schedules=RedisScheduleStore(redis=redis, keys=keys),
        registry=registry,
        clock=FakeClock(ms("2024-03-25T00:00:00")),
    )


def cron_spec(expression: str, **changes: Any) -> ScheduleSpec:
    return replace(
        ScheduleSpec(workflow_id="tests.steps.1.0.0", input={"n": 1}, cron=expression), **changes
    )


async def run_for(world: World, scheduler: Scheduler, span_ms: int, step_ms: int) -> None:
    end = world.clock.now + span_ms
    while world.clock.now < end:
        world.clock.now += step_ms
        await scheduler.run_once()


async def test_daily_cron_in_a_time_zone_over_ten_days_across_dst(world: World) -> None:
    scheduler = world.scheduler()
    record = await scheduler.create(cron_spec("0 9 * * *", time_zone="Europe/Berlin"), owner={})
    await run_for(world, scheduler, 10 * DAY, HOUR)
    # Berlin moves from UTC+1 to UTC+2 on 31 March: 09:00 local is 08:00Z, then 07:00Z.
    assert await world.fire_times(record.schedule_id) == [
        *(f"2024-03-{day}T08:00:00.000Z" for day in range(25, 31)),
        *(f"2024-03-{day}T07:00:00.000Z" for day in (31,)),
        *(f"2024-04-0{day}T07:00:00.000Z" for day in range(1, 4)),
    ]
    instances = await world.instances(record.schedule_id)
    assert {r.workflow_id for r in instances} == {"tests.steps.1.0.0"}
    assert {str(r.input) for r in instances} == {"{'n': 1}"}
    stored = await scheduler.get(record.schedule_id)
    assert stored.fired == 10
    assert stored.last_instance_id == instances[-1].instance_id
    assert stored.next_fire_ms == ms("2024-04-04T07:00:00")


async def test_sidecars_racing_on_one_schedule_start_one_instance_per_firing(
    world: World,
) -> None:
    sidecars = [world.scheduler() for _ in range(3)]
    record = await sidecars[0].create(cron_spec("*/15 * * * *"), owner={})
    for _ in range(4 * 6):
        world.clock.now += 15 * 60_000
        await asyncio.gather(*(s.run_once() for s in sidecars))
    times = await world.fire_times(record.schedule_id)
    assert len(times) == 24
    assert len(set(times)) == 24
    assert (await sidecars[1].get(record.schedule_id)).fired == 24


async def test_downtime_fires_once_for_the_latest_missed_time(world: World) -> None:
    scheduler = world.scheduler()
    record = await scheduler.create(cron_spec("0 6 * * *"), owner={})
    world.clock.now = ms("2024-03-30T12:00:00")  # no sidecar ran for five days
    assert await scheduler.run_once() == 1
    assert await world.fire_times(record.schedule_id) == ["2024-03-30T06:00:00.000Z"]
    stored = await scheduler.get(record.schedule_id)
    assert stored.skipped == 5
    assert "missed" in stored.last_error
    assert stored.next_fire_ms == ms("2024-03-31T06:00:00")


async def test_downtime_can_skip_every_missed_time(world: World) -> None:
    scheduler = world.scheduler()
    spec = cron_spec("0 6 * * *", catch_up=CatchUpPolicy.SKIP_MISSED)
    record = await scheduler.create(spec, owner={})
    world.clock.now = ms("2024-03-30T12:00:00")
    assert await scheduler.run_once() == 0
    assert await world.fire_times(record.schedule_id) == []
    assert (await scheduler.get(record.schedule_id)).skipped == 6
    world.clock.now = ms("2024-03-31T06:00:01")
    assert await scheduler.run_once() == 1


async def test_late_by_less_than_the_grace_still_fires(world: World) -> None:
    scheduler = world.scheduler()
    record = await scheduler.create(
        cron_spec("* * * * * *", catch_up=CatchUpPolicy.SKIP_MISSED), owner={}
    )
    world.clock.now += 30_000  # 30 fire times, all within the 60 s grace
    assert await scheduler.run_once() == 30
    assert len(await world.fire_times(record.schedule_id)) == 30


async def test_overlap_skip_waits_for_the_previous_instance(world: World) -> None:
    scheduler = world.scheduler()
    record = await scheduler.create(cron_spec("0 * * * *", overlap=OverlapPolicy.SKIP), owner={})
    await run_for(world, scheduler, 3 * HOUR, HOUR)  # nothing runs them: they stay pending
    instances = await world.instances(record.schedule_id)
    assert len(instances) == 1
    await cancel_instance(
        world.store, instances[0].instance_id, reason="done", now_ms=world.clock.now
    )
    await run_for(world, scheduler, HOUR, HOUR)
    assert len(await world.instances(record.schedule_id)) == 2
    stored = await scheduler.get(record.schedule_id)
    assert (stored.fired, stored.skipped) == (2, 2)


async def test_overlap_buffer_one_starts_the_buffered_firing_when_free(world: World) -> None:
    scheduler = world.scheduler()
    record = await scheduler.create(
        cron_spec("0 * * * *", overlap=OverlapPolicy.BUFFER_ONE), owner={}
    )
    await run_for(world, scheduler, 3 * HOUR, HOUR)
    instances = await world.instances(record.schedule_id)
    assert len(instances) == 1
    assert (await scheduler.get(record.schedule_id)).buffered_ms == ms("2024-03-25T02:00:00")
    await cancel_instance(
        world.store, instances[0].instance_id, reason="done", now_ms=world.clock.now
    )
    world.clock.now += 1000
    assert await scheduler.run_once() == 1
    assert await world.fire_times(record.schedule_id) == [
        "2024-03-25T01:00:00.000Z",
        "2024-03-25T02:00:00.000Z",
    ]


async def test_paused_schedules_do_not_fire_and_resume_from_now(world: World) -> None:
    scheduler = world.scheduler()
    record = await scheduler.create(cron_spec("0 * * * *"), owner={})
    paused = await scheduler.pause(record.schedule_id)
    assert paused.paused
    assert scheduler.upcoming(paused, 3) == []
    await run_for(world, scheduler, 5 * HOUR, HOUR)
    assert await world.fire_times(record.schedule_id) == []
    world.clock.now += 30 * 60_000
    resumed = await scheduler.resume(record.schedule_id)
    assert resumed.next_fire_ms == ms("2024-03-25T06:00:00")
    assert scheduler.upcoming(resumed, 3) == [ms(f"2024-03-25T0{h}:00:00") for h in (6, 7, 8)]
    await run_for(world, scheduler, HOUR, HOUR)
    assert await world.fire_times(record.schedule_id) == ["2024-03-25T06:00:00.000Z"]


async def test_a_refused_firing_is_skipped_with_the_reason(world: World) -> None:
    async def deny(*, owner: Mapping[str, Any], workflow_id: str, workflow_input: Any) -> RunLimits:
        assert owner == {"sub": "reports-service"}
        raise PolicyDeniedError(
            f"Run of {workflow_id} denied", policy="policy.workflow.run.blocked"
        )

    scheduler = world.scheduler(authorize=deny)
    record = await scheduler.create(cron_spec("0 * * * *"), owner={"sub": "reports-service"})
    await run_for(world, scheduler, HOUR, HOUR)
    assert await world.fire_times(record.schedule_id) == []
    stored = await scheduler.get(record.schedule_id)
    assert (stored.fired, stored.skipped) == (0, 1)
    assert stored.last_error == "Run of tests.steps.1.0.0 denied"


async def test_a_retried_request_id_returns_the_first_schedule(world: World) -> None:
    scheduler = world.scheduler()
    first = await scheduler.create(cron_spec("0 * * * *"), owner={}, request_id="r1")
    again = await scheduler.create(cron_spec("0 * * * *"), owner={}, request_id="r1")
    other = await scheduler.create(cron_spec("0 * * * *"), owner={}, request_id="r2")
    assert first.schedule_id == again.schedule_id != other.schedule_id


async def test_definition_schedules_are_shared_and_follow_the_newest_version(
    world: World,
) -> None:
    definitions = read_directory(SCHEDULED_DIR)
    await world.registry.register(definitions)
    one, other = world.scheduler(), world.scheduler()
    await one.sync_definitions(definitions)
    tick_id = definition_schedule_id("sched.tick")
    created = await one.get(tick_id)
    assert created.source is ScheduleSource.DEFINITION
    assert created.spec.every_ms == 1000
    assert (await one.get(definition_schedule_id("sched.nightly"))).spec.cron == "0 2 * * *"
    assert (await one.get(definition_schedule_id("sched.again"))).spec.after_ms == 5000
    # Another sidecar with the same files changes nothing.
    await other.sync_definitions(definitions)
    assert (await other.get(tick_id)).revision == created.revision
    world.clock.now += 3500
    assert await one.run_once() >= 3
    assert len(await world.fire_times(tick_id)) == 3

    newer = _definition("1.1.0", "every:\n    seconds: 2")
    await world.registry.register([newer])
    await other.sync_definitions([newer])
    updated = await other.get(tick_id)
    assert (updated.definition_version, updated.spec.every_ms) == ("1.1.0", 2000)
    assert updated.spec.workflow_id == "sched.tick.1.1.0"
    await one.sync_definitions(definitions)  # an older sidecar restarting leaves it alone
    assert (await one.get(tick_id)).revision == updated.revision

    with pytest.raises(FailedPreconditionError, match="declared by the workflow definition"):
        await one.delete(tick_id)
    unscheduled = _definition("2.0.0", None)
    await world.registry.register([unscheduled])
    await one.sync_definitions([unscheduled])
    assert await world.schedules.get(tick_id) is None


async def test_after_schedules_run_again_a_delay_after_each_end(world: World) -> None:
    definitions = read_directory(SCHEDULED_DIR)
    await world.registry.register(definitions)
    scheduler = world.scheduler()
    await scheduler.sync_definitions([d for d in definitions if d.name == "again"])
    schedule_id = definition_schedule_id("sched.again")
    world.clock.now += 1
    assert await scheduler.run_once() == 1
    await run_for(world, scheduler, 20_000, 1000)  # the first is still unfinished
    [first] = await world.instances(schedule_id)
    ended = world.clock.now
    await cancel_instance(world.store, first.instance_id, reason="done", now_ms=ended)
    await run_for(world, scheduler, 4000, 1000)
    assert len(await world.instances(schedule_id)) == 1
    assert (await scheduler.get(schedule_id)).next_fire_ms == ended + 5000
    await run_for(world, scheduler, 1000, 1000)
    assert len(await world.instances(schedule_id)) == 2


def _definition(version: str, schedule: str | None) -> WorkflowDefinition:
    lines = [
        "document:",
        "  dsl: '1.0.0'",
        "  namespace: sched",
        "  name: tick",
        f"  version: '{version}'",
    ]
    if schedule is not None:
        lines += ["schedule:", f"  {schedule}"]
    lines += ["do:", "  - mark:", "      set:", "        ticked: true"]
    return load_definition_text("\n".join(lines) + "\n", source=f"tick {version}")


async def test_a_definition_with_an_unusable_cron_stops_the_sync(world: World) -> None:
    broken = load_definition_text(
        "document: {dsl: '1.0.0', namespace: sched, name: broken, version: '1.0.0'}\n"
        "schedule: {cron: '61 * * * *'}\n"
        "do: [{mark: {set: {ran: true}}}]\n",
        source="broken.yaml",
    )
    with pytest.raises(DefinitionError, match=r"/schedule/cron: '61 \* \* \* \*' is not a valid"):
        await world.scheduler().sync_definitions([broken])
