"""RedisScheduleStore: schedules as one hash each, with a due set that every scheduler polls."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

import redis.asyncio as aioredis

from okra_sidecar.errors import FailedPreconditionError, InvalidInputError
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.schedules import (
    SCHEDULE_ID_RE,
    PreviousRun,
    SchedulePage,
    ScheduleRecord,
    decode_record,
)
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.replies import map_redis_errors
from okra_sidecar.store.replies import text as _text
from okra_sidecar.store.scripts import load_script

logger = logging.getLogger(__name__)

LIST_SCAN_BATCH = 200
NEW = "new"


def encode_cursor(schedule_id: str) -> str:
    return base64.urlsafe_b64encode(schedule_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        schedule_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        schedule_id = ""
    if not SCHEDULE_ID_RE.fullmatch(schedule_id):
        raise InvalidInputError.for_field("cursor", "is not a cursor returned by ListSchedules")
    return schedule_id


class RedisScheduleStore:
    """Schedules on a redis.asyncio client it does not own (the sidecar's one client)."""

    def __init__(self, *, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._save = redis.register_script(load_script("schedule_save"))
        self._delete = redis.register_script(load_script("schedule_delete"))
        self._collect = redis.register_script(load_script("trigger_collect"))

    async def get(self, schedule_id: str) -> ScheduleRecord | None:
        with map_redis_errors():
            raw, rev = await self.redis.hmget(self.keys.schedule(schedule_id), ["r", "rev"])
        if raw is None or rev is None:
            return None
        return decode_record(schedule_id, raw, int(rev))

    async def stored_revision(self, schedule_id: str) -> int | None:
        """The revision of the stored schedule, readable or not; None when there is none."""
        with map_redis_errors():
            rev = await self.redis.hget(self.keys.schedule(schedule_id), "rev")
        return None if rev is None else int(rev)

    async def save(
        self, record: ScheduleRecord, *, new: bool = False, check_at_ms: int | None
    ) -> int:
        """Write `record` if its revision is still the stored one (or, with `new`, if none is).

        Returns:
            The new revision; 0 when the schedule changed meanwhile (or already exists); -1
            when it was deleted.
        """
        keys = self.keys
        with map_redis_errors():
            result = await self._save(
                keys=[keys.schedule(record.schedule_id), keys.schedules_all, keys.schedules_due],
                args=[
                    record.schedule_id,
                    NEW if new else str(record.revision),
                    json.dumps(record.to_json(), separators=(",", ":")),
                    "" if check_at_ms is None else str(check_at_ms),
                ],
            )
        return int(result)

    async def delete(self, schedule_id: str, *, revision: int) -> int:
        """Delete if unchanged: 1 when deleted, 0 when it changed meanwhile, -1 when gone."""
        keys = self.keys
        with map_redis_errors():
            result = await self._delete(
                keys=[keys.schedule(schedule_id), keys.schedules_all, keys.schedules_due],
                args=[schedule_id, str(revision)],
            )
        return int(result)

    async def due(self, now_ms: int, *, limit: int) -> list[str]:
        """Ids of schedules a scheduler must look at by now, most overdue first."""
        with map_redis_errors():
            ids: Any = await self.redis.zrangebyscore(
                self.keys.schedules_due, "-inf", now_ms, start=0, num=limit
            )
        return [_text(x) for x in ids]

    async def drop_due(self, schedule_id: str) -> None:
        """Stop looking at a schedule at each tick (one whose record cannot be read)."""
        with map_redis_errors():
            await self.redis.zrem(self.keys.schedules_due, schedule_id)

    async def list_page(self, *, workflow_id: str, limit: int, cursor: str) -> SchedulePage:
        """A page of schedules ordered by id, only `workflow_id`'s when it is given."""
        lower = "(" + decode_cursor(cursor) if cursor else "-"
        found: list[ScheduleRecord] = []
        with map_redis_errors():
            while True:
                ids: Any = await self.redis.zrange(
                    self.keys.schedules_all,
                    lower,
                    "+",
                    bylex=True,
                    offset=0,
                    num=LIST_SCAN_BATCH,
                )
                if not ids:
                    return SchedulePage(found, "")
                async with self.redis.pipeline(transaction=False) as pipe:
                    for raw_id in ids:
                        pipe.hmget(self.keys.schedule(_text(raw_id)), ["r", "rev"])
                    rows = await pipe.execute()
                for raw_id, (raw, rev) in zip(ids, rows, strict=True):
                    if raw is None or rev is None:
                        continue
                    try:
                        record = decode_record(_text(raw_id), raw, int(rev))
                    except FailedPreconditionError as exc:
                        # One unreadable record must not fail the listing for everyone.
                        logger.warning("ListSchedules leaves out %s", exc)
                        continue
                    if workflow_id and record.spec.workflow_id != workflow_id:
                        continue
                    found.append(record)
                    if len(found) == limit:
                        return SchedulePage(found, encode_cursor(_text(raw_id)))
                if len(ids) < LIST_SCAN_BATCH:
                    return SchedulePage(found, "")
                lower = "(" + _text(ids[-1])

    async def run_end(self, instance_id: str) -> PreviousRun | None:
        """Whether an instance has finished, and when; None when it does not exist."""
        with map_redis_errors():
            status, completed = await self.redis.hmget(
                self.keys.instance(instance_id), ["status", "completed"]
            )
        if status is None:
            return None
        finished = InstanceStatus(_text(status)).finished
        return PreviousRun(finished=finished, finished_ms=int(completed) if completed else None)

    async def collect_trigger_event(
        self, workflow_key: str, *, index: int, needed: int, event: dict[str, Any]
    ) -> list[dict[str, Any]] | None:
        """Add an event matching filter `index` of an `all` trigger; all events once complete."""
        with map_redis_errors():
            events: Any = await self._collect(
                keys=[self.keys.trigger_events(workflow_key)],
                args=[index, needed, json.dumps(event, separators=(",", ":"))],
            )
        return [json.loads(e) for e in events] if events else None
