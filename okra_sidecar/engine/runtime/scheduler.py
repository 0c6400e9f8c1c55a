"""Scheduler: fires due schedules in every sidecar, and keeps definition schedules current.

Every sidecar runs one. Each tick it reads the schedules due by its clock and decides each one
(engine/runtime/firing.py). A firing starts the instance whose id derives from the schedule and fire
time, so Redis creates it once however many sidecars decide the same firing; the schedule's
new state is then written only if its revision is still the one read, so one sidecar's
decision is recorded and the others' are dropped. A sidecar killed between the two steps leaves
the schedule due, and the next sidecar to look finds the instance already there.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from okra_sidecar.admission import RunLimits
from okra_sidecar.clock import now_ms
from okra_sidecar.config import HostSettings, ScheduleSettings
from okra_sidecar.engine.definitions.dsl import WorkflowDefinition
from okra_sidecar.engine.definitions.durations import iso_duration_ms, parse_duration
from okra_sidecar.engine.runtime.firing import decide, first_fire
from okra_sidecar.engine.runtime.registry import WorkflowRegistry, semver_key
from okra_sidecar.engine.runtime.starter import admission, build_instance, timeout_fields
from okra_sidecar.engine.runtime.timing import FireTimes
from okra_sidecar.errors import (
    DefinitionError,
    FailedPreconditionError,
    InvalidInputError,
    NotFoundError,
    OkraError,
    PreconditionViolation,
    Reason,
    StoreUnavailableError,
    schedule_changed,
)
from okra_sidecar.schedules import (
    FIRE_TIME_TAG,
    REQUEST_ID_NAMESPACE,
    SCHEDULE_TAG,
    SchedulePage,
    ScheduleRecord,
    ScheduleSource,
    ScheduleSpec,
    definition_schedule_id,
    firing_instance_id,
    format_fire_time,
)
from okra_sidecar.store.base import ScheduleStore, Store
from okra_sidecar.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

__all__ = ["FiringAuthorizer", "Scheduler", "checked_definition_spec", "definition_spec"]

MAX_STEPS_PER_SCHEDULE = 100
SAVE_ATTEMPTS = 8
ERROR_TEXT_LIMIT = 500


class FiringAuthorizer(Protocol):
    """Decides a firing as a Run by the schedule's owner (policy/firing.py).

    Returns the limits the Run would get; raises an OkraError (a policy denial, a limit) to
    refuse the firing.
    """

    async def __call__(
        self,
        *,
        owner: Mapping[str, Any],
        workflow_id: str,
        workflow_input: Any,
        started_by: str = "schedule",
    ) -> RunLimits: ...


def definition_spec(definition: WorkflowDefinition) -> ScheduleSpec | None:
    """The time schedule a definition declares (`cron`, `every` or `after`), None if none.

    `schedule.on` starts instances from events, not at times, so it has no spec here.
    """
    schedule = definition.document.get("schedule")
    if not isinstance(schedule, dict):
        return None
    base = ScheduleSpec(workflow_id=definition.id, input={})
    if isinstance(schedule.get("cron"), str):
        return ScheduleSpec(workflow_id=base.workflow_id, input={}, cron=schedule["cron"])
    for key in ("every", "after"):
        if key in schedule:
            ms = _fixed_duration_ms(schedule[key])
            if key == "every":
                return ScheduleSpec(workflow_id=base.workflow_id, input={}, every_ms=ms)
            return ScheduleSpec(workflow_id=base.workflow_id, input={}, after_ms=ms)
    return None


def checked_definition_spec(definition: WorkflowDefinition) -> ScheduleSpec | None:
    """definition_spec(), with its fire times checked.

    Raises:
        DefinitionError: the cron expression or duration cannot be used.
    """
    try:
        spec = definition_spec(definition)
        if spec is not None and spec.after_ms is None:
            FireTimes(spec, anchor_ms=0)
    except ValueError as exc:
        schedule = definition.document.get("schedule") or {}
        key = next((k for k in ("cron", "every", "after") if k in schedule), "")
        raise DefinitionError(f"workflow {definition.id}", f"/schedule/{key}", str(exc)) from None
    return spec


def _fixed_duration_ms(value: Any) -> int:
    if isinstance(value, str) and not value.startswith("${"):
        return iso_duration_ms(value)
    spec = parse_duration(value)
    if spec.ms is None:
        raise ValueError("a schedule's duration must be fixed, not an expression")
    return spec.ms


class Scheduler:
    """Schedules: created and changed through the api, fired by `run_once` every tick."""

    def __init__(
        self,
        *,
        schedules: ScheduleStore,
        store: Store,
        registry: WorkflowRegistry,
        host: HostSettings,
        settings: ScheduleSettings,
        clock: Callable[[], int] = now_ms,
        authorize: FiringAuthorizer | None = None,
    ) -> None:
        self._schedules = schedules
        self._store = store
        self._registry = registry
        self._host = host
        self._settings = settings
        self._clock = clock
        self._authorize = authorize
        self._task: asyncio.Task[None] | None = None

    @property
    def schedules(self) -> ScheduleStore:
        return self._schedules

    # -- the loop -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="okra-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _loop(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self.run_once()
                backoff = 0.1
                await asyncio.sleep(self._settings.tick_ms / 1000)
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as exc:
                logger.warning("scheduler: %s; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                logger.exception("scheduler tick failed; retrying")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def run_once(self) -> int:
        """Fire every schedule due by the clock; returns the instances this sidecar started."""
        started = 0
        for schedule_id in await self._schedules.due(self._clock(), limit=self._settings.batch):
            try:
                started += await self.fire(schedule_id)
            except FailedPreconditionError as exc:
                if exc.reason is not Reason.SCHEDULE_UNREADABLE:
                    raise
                # Left due, it would come first at every tick and fail it for every schedule.
                logger.warning("scheduler: no longer fires it: %s", exc)
                await self._schedules.drop_due(schedule_id)
        return started

    async def fire(self, schedule_id: str) -> int:
        """Take one due schedule as far as the clock says; returns the instances started."""
        started = 0
        for _ in range(MAX_STEPS_PER_SCHEDULE):
            record = await self._schedules.get(schedule_id)
            if record is None or record.paused:
                return started
            now = self._clock()
            previous = None
            if record.last_instance_id:
                previous = await self._schedules.run_end(record.last_instance_id)
            decision = decide(
                record,
                now,
                previous,
                grace_ms=int(self._settings.misfire_grace_s * 1000),
                poll_ms=self._settings.tick_ms,
            )
            changes: dict[str, Any] = {
                "next_fire_ms": decision.next_fire_ms,
                "buffered_ms": decision.buffered_ms,
                "skipped": record.skipped + decision.skipped,
            }
            if decision.reason:
                changes["last_error"] = decision.reason
            if decision.start_ms is not None:
                instance_id, error = await self._start(record, decision.start_ms, now)
                if instance_id:
                    changes.update(
                        last_instance_id=instance_id,
                        last_fire_ms=decision.start_ms,
                        fired=record.fired + 1,
                        last_error=decision.reason,
                    )
                    started += 1
                else:
                    changes["skipped"] += 1
                    changes["last_error"] = error
                    if record.spec.after_ms is not None:
                        # A refused `after` firing is not retried at once: it waits a delay.
                        changes["last_instance_id"] = ""
                        changes["next_fire_ms"] = now + record.spec.after_ms
            updated = record.evolve(**changes)
            revision = await self._schedules.save(updated, check_at_ms=decision.check_at_ms)
            if revision <= 0:
                return started  # another sidecar recorded this step (or the schedule went)
            if decision.check_at_ms is None or decision.check_at_ms > now:
                return started
        logger.warning("schedule %s still due after %d steps", schedule_id, MAX_STEPS_PER_SCHEDULE)
        return started

    async def _start(self, record: ScheduleRecord, fire_ms: int, now: int) -> tuple[str, str]:
        """Start the firing's instance: (instance id, '') or ('', why it was refused)."""
        spec = record.spec
        try:
            registered = await self._registry.resolve(spec.workflow_id)
            validator = registered.input_validator
            if validator is not None:
                try:
                    error = next(iter(validator.iter_errors(spec.input)), None)
                    problem = "" if error is None else error.message
                except RecursionError:
                    problem = "the input nests too deeply to check against the schema"
                if problem:
                    raise FailedPreconditionError(
                        f"the schedule's input does not match {registered.definition.id}'s "
                        f"input schema: {problem}",
                        reason=Reason.SCHEDULE_INPUT_MISMATCH,
                        violation=PreconditionViolation(
                            "INPUT_SCHEMA",
                            f"schedule/{record.schedule_id}",
                            "the schedule's input must match the workflow's input schema",
                        ),
                        metadata={
                            "schedule": record.schedule_id,
                            "workflow": registered.definition.id,
                        },
                    )
            limits = RunLimits()
            if self._authorize is not None:
                limits = await self._authorize(
                    owner=record.owner,
                    workflow_id=registered.definition.id,
                    workflow_input=spec.input,
                )
            instance_id = firing_instance_id(record, fire_ms)
            tags = {**spec.tags, SCHEDULE_TAG: record.schedule_id}
            tags[FIRE_TIME_TAG] = format_fire_time(fire_ms)
            new = build_instance(
                registered.definition,
                instance_id=instance_id,
                workflow_input=spec.input,
                created_us=now * 1000,
                tags=tags,
                owner=dict(record.owner),
                **timeout_fields(
                    limits,
                    created_ms=now,
                    config_max_s=self._host.max_instance_duration_s,
                    config_step_s=self._host.default_timeout_s,
                ),
            )
            # False when another sidecar created this firing's instance first: it is the same.
            await self._store.create_instance(
                new, **admission(self._host.max_concurrent_instances, limits)
            )
        except StoreUnavailableError:
            raise
        except OkraError as exc:
            logger.warning("schedule %s skipped its firing: %s", record.schedule_id, exc)
            return "", str(exc)[:ERROR_TEXT_LIMIT]
        return instance_id, ""

    # -- the api's operations -----------------------------------------------------------------

    async def create(
        self, spec: ScheduleSpec, *, owner: Mapping[str, Any], request_id: str = ""
    ) -> ScheduleRecord:
        """Create a schedule (a retried request_id returns the first one)."""
        if request_id:
            schedule_id = str(uuid.uuid5(REQUEST_ID_NAMESPACE, f"{spec.workflow_id}\0{request_id}"))
            existing = await self._schedules.get(schedule_id)
            if existing is not None:
                return existing
        else:
            schedule_id = str(uuid.uuid4())
        now = self._clock()
        record = ScheduleRecord(
            schedule_id=schedule_id,
            spec=spec,
            source=ScheduleSource.API,
            generation=uuid.uuid4().hex[:12],
            anchor_ms=now,
            created_ms=now,
            updated_ms=now,
            owner=dict(owner),
        )
        record = record.evolve(next_fire_ms=first_fire(record, now))
        if record.next_fire_ms is None:
            raise InvalidInputError.for_field(
                "end_time", "comes before the first fire time after now: the schedule never fires"
            )
        revision = await self._schedules.save(record, new=True, check_at_ms=record.next_fire_ms)
        if revision <= 0:
            existing = await self._schedules.get(schedule_id)
            if existing is not None:
                return existing
        return record.evolve(revision=max(revision, 1))

    async def get(self, schedule_id: str) -> ScheduleRecord:
        """Raises NotFoundError when there is no such schedule."""
        record = await self._schedules.get(schedule_id)
        if record is None:
            raise NotFoundError(
                f"schedule {schedule_id} does not exist",
                reason=Reason.SCHEDULE_NOT_FOUND,
                metadata={"schedule": schedule_id},
            )
        return record

    async def list_page(self, *, workflow_id: str, limit: int, cursor: str) -> SchedulePage:
        return await self._schedules.list_page(workflow_id=workflow_id, limit=limit, cursor=cursor)

    async def pause(self, schedule_id: str) -> ScheduleRecord:
        return await self._change(schedule_id, paused=True)

    async def resume(self, schedule_id: str) -> ScheduleRecord:
        return await self._change(schedule_id, paused=False)

    async def _change(self, schedule_id: str, *, paused: bool) -> ScheduleRecord:
        for _ in range(SAVE_ATTEMPTS):
            record = await self.get(schedule_id)
            if record.paused == paused:
                return record
            now = self._clock()
            if paused:
                updated = record.evolve(paused=True, updated_ms=now)
                check_at = None
            else:
                # Times passed while paused are not fired: go on from now.
                updated = record.evolve(paused=False, updated_ms=now, buffered_ms=None)
                if record.spec.after_ms is None:
                    updated = updated.evolve(next_fire_ms=first_fire(updated, now))
                    check_at = updated.next_fire_ms
                else:
                    check_at = now
            revision = await self._schedules.save(updated, check_at_ms=check_at)
            if revision > 0:
                return updated.evolve(revision=revision)
        raise schedule_changed(schedule_id)

    async def delete(self, schedule_id: str) -> None:
        for _ in range(SAVE_ATTEMPTS):
            try:
                record = await self.get(schedule_id)
            except FailedPreconditionError as exc:
                if exc.reason is not Reason.SCHEDULE_UNREADABLE:
                    raise
                if await self._delete_unreadable(schedule_id):
                    return
                continue
            if record.source is ScheduleSource.DEFINITION:
                raise FailedPreconditionError(
                    f"schedule {schedule_id} is declared by the workflow definition's `schedule`; "
                    "pause it, or remove `schedule` from the definition and bump its version",
                    reason=Reason.SCHEDULE_DECLARED_BY_WORKFLOW,
                    violation=PreconditionViolation(
                        "SCHEDULE_SOURCE",
                        f"schedule/{schedule_id}",
                        "only a schedule made with TriggerWorkflow can be deleted",
                    ),
                    metadata={"schedule": schedule_id, "workflow": record.spec.workflow_id},
                )
            outcome = await self._schedules.delete(schedule_id, revision=record.revision)
            if outcome != 0:
                return
        raise schedule_changed(schedule_id)

    async def _delete_unreadable(self, schedule_id: str) -> bool:
        """Delete a record that cannot be read; whether it is gone (False: it changed)."""
        revision = await self._schedules.stored_revision(schedule_id)
        if revision is None:
            return True
        return await self._schedules.delete(schedule_id, revision=revision) != 0

    def upcoming(self, record: ScheduleRecord, count: int) -> list[int]:
        """The next `count` fire times, soonest first (only the next one for `after`)."""
        if record.paused or record.next_fire_ms is None or count <= 0:
            return []
        if record.spec.after_ms is not None:
            return [record.next_fire_ms]
        times = FireTimes(record.spec, anchor_ms=record.anchor_ms)
        return [record.next_fire_ms, *times.upcoming(record.next_fire_ms, count - 1)]

    # -- definition schedules -----------------------------------------------------------------

    async def sync_definitions(self, definitions: list[WorkflowDefinition]) -> None:
        """Create or update the schedule each loaded definition declares.

        A workflow's schedule follows its highest version: a sidecar loading an older version
        leaves it alone, one loading a newer version replaces its spec (or deletes it when the
        newer version declares none). Sidecars loading the same definitions change nothing.
        """
        newest: dict[str, WorkflowDefinition] = {}
        for definition in definitions:
            held = newest.get(definition.key)
            if held is None or semver_key(definition.version) > semver_key(held.version):
                newest[definition.key] = definition
        for definition in newest.values():
            for _ in range(SAVE_ATTEMPTS):
                if await self._sync_one(definition):
                    break

    async def _sync_one(self, definition: WorkflowDefinition) -> bool:
        schedule_id = definition_schedule_id(definition.key)
        spec = checked_definition_spec(definition)
        existing = await self._schedules.get(schedule_id)
        now = self._clock()
        if existing is not None:
            if semver_key(existing.definition_version) > semver_key(definition.version):
                return True
            if existing.definition_version == definition.version and existing.spec == spec:
                return True
            if spec is None:
                return await self._schedules.delete(schedule_id, revision=existing.revision) != 0
        if spec is None:
            return True
        record = ScheduleRecord(
            schedule_id=schedule_id,
            spec=spec,
            source=ScheduleSource.DEFINITION,
            generation=uuid.uuid4().hex[:12],
            anchor_ms=now,
            created_ms=existing.created_ms if existing else now,
            updated_ms=now,
            definition_version=definition.version,
            paused=existing.paused if existing else False,
            fired=existing.fired if existing else 0,
            skipped=existing.skipped if existing else 0,
            last_fire_ms=existing.last_fire_ms if existing else None,
            last_instance_id=existing.last_instance_id if existing else "",
            revision=existing.revision if existing else 0,
        )
        if record.last_instance_id and spec.after_ms is not None:
            # A changed `after` schedule still follows the end of its latest instance.
            record = record.evolve(next_fire_ms=None)
        else:
            record = record.evolve(next_fire_ms=first_fire(record, now))
        check_at = None if record.paused else (record.next_fire_ms or now)
        revision = await self._schedules.save(record, new=existing is None, check_at_ms=check_at)
        if revision > 0:
            logger.info(
                "schedule %s %s for %s",
                schedule_id,
                "updated" if existing else "created",
                definition.id,
            )
        return revision > 0
