"""RedisStore: instances, signals, work streams, timers and indexes in Redis."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from okra_sidecar.engine.effects import cancelled_result_event
from okra_sidecar.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InstanceChangedError,
    InvalidInputError,
    NotFoundError,
    ResourceExhaustedError,
    StoreUnavailableError,
)
from okra_sidecar.instances import (
    FINISHED_STATUSES,
    InstanceRecord,
    InstanceStatus,
    NewInstance,
    QueryFilter,
    QueryPage,
)
from okra_sidecar.store.base import (
    HistoryPage,
    InboxEntry,
    StoreStats,
    TurnCommit,
    TurnExtras,
    TurnSnapshot,
    WorkItem,
)
from okra_sidecar.store.commands import HotCommands, PooledCommands
from okra_sidecar.store.jsontext import dumps, loads
from okra_sidecar.store.keys import ENGINE_GROUP, RedisKeys
from okra_sidecar.store.multiplexed import Arg, MultiplexedScript, evalsha_with
from okra_sidecar.store.scripts import load_script

logger = logging.getLogger(__name__)

RECORD_FIELDS = (
    "wf",
    "status",
    "input",
    "output",
    "error",
    "corr",
    "tags",
    "step",
    "ctx",
    "created",
    "updated",
    "completed",
    "reason",
)
DURABILITY_LEVELS = ("memory", "aof", "replicas")
# Index members sort by creation time as text: fixed-width microseconds, then the id.
MEMBER_TIME_WIDTH = 17
QUERY_SCAN_BATCH = 200
QUERY_SCAN_BUDGET = 5000
STREAM_ID_RE = re.compile(r"^\d+-\d+$")


def index_member(created_us: int, instance_id: str) -> str:
    return f"{created_us:0{MEMBER_TIME_WIDTH}d}:{instance_id}"


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A raw stream entry's [field, value, ...] as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


@contextmanager
def map_redis_errors() -> Iterator[None]:
    """Turn a lost connection into StoreUnavailableError, the one error the api maps to it."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise StoreUnavailableError(f"Redis is unreachable ({exc}); retry shortly") from exc
    except redis_errors.BusyLoadingError as exc:
        raise StoreUnavailableError("Redis is loading its data; retry shortly") from exc


# A stream entry of a partitioned stream: its partition, entry id and fields.
PartitionEntry = tuple[int, Any, dict[bytes, bytes]]


async def read_partitions(
    commands: HotCommands,
    group: str,
    consumer: str,
    streams: Sequence[str],
    partition_of: Mapping[bytes, int],
    *,
    count: int,
    block_ms: int,
    recreate_groups: Callable[[], Awaitable[None]],
) -> list[PartitionEntry]:
    """New entries of one stream per partition for `consumer` of `group`.

    `partition_of` maps each stream's encoded name to its partition. Without the group (Redis
    lost its data: restarted without persistence) this awaits `recreate_groups` and reads none.
    """
    with map_redis_errors():
        try:
            reply: Any = await commands.execute(
                *("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "BLOCK", block_ms),
                *("STREAMS", *streams, *(">" for _ in streams)),
            )
        except redis_errors.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await recreate_groups()
            return []
    # The raw reply: [[stream, [[id, [field, value, ...]], ...]], ...] in RESP2, a map of
    # stream to entries in RESP3 (redis-py's pool); a deleted entry has no fields.
    streams_read = reply.items() if isinstance(reply, dict) else reply or []
    return [
        (partition_of[stream], eid, _pairs(fields))
        for stream, entries in streams_read
        for eid, fields in entries
        if fields
    ]


async def claim_partitions(
    redis: aioredis.Redis,
    group: str,
    consumer: str,
    streams: Sequence[str],
    *,
    min_idle_ms: int,
    count: int,
) -> list[PartitionEntry]:
    """Entries of one stream per partition (the index) that another consumer of `group` read
    but left unacknowledged for `min_idle_ms` (it stopped); they go to `consumer`."""
    found: list[PartitionEntry] = []
    with map_redis_errors():
        for partition, stream in enumerate(streams):
            reply = await redis.xautoclaim(
                stream, group, consumer, min_idle_ms, start_id="0-0", count=count
            )
            found.extend((partition, eid, fields) for eid, fields in reply[1] if fields)
    return found


def encode_cursor(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        member = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        member = ""
    prefix, _, rest = member.partition(":")
    if len(prefix) != MEMBER_TIME_WIDTH or not prefix.isdigit() or not rest:
        raise InvalidInputError.for_field("cursor", "is not a cursor returned by Query")
    return member


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _json(value: bytes | str | None, default: Any = None) -> Any:
    return loads(value) if value else default


def decode_record(instance_id: str, values: Sequence[bytes | str | None]) -> InstanceRecord | None:
    """Build a record from HMGET of RECORD_FIELDS; None when the instance does not exist."""
    (wf, status, inp, out, err, corr, tags, step, ctx, created, updated, completed, reason) = values
    if wf is None or status is None:
        return None
    return InstanceRecord(
        instance_id=instance_id,
        workflow_id=_text(wf),
        status=InstanceStatus(_text(status)),
        input=_json(inp),
        output=_json(out),
        error=_json(err),
        correlation_id=_text(corr),
        tags=_json(tags, {}),
        current_step=_text(step),
        context=_json(ctx, {}),
        created_ms=int(created or 0),
        started_ms=int(created or 0),
        updated_ms=int(updated or 0),
        completed_ms=int(completed or 0),
        cancel_reason=_text(reason),
    )


class RedisStore:
    """The one Store implementation, on Redis clients it does not own.

    `hot` carries the commands of every rpc and turn (see store/commands.py); `reader`, a
    connection of its own, the engine's blocking read of the work streams (one at a time);
    `redis`, the pooled client, everything else (pipelines, administration).
    """

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        keys: RedisKeys,
        hot: HotCommands | None = None,
        reader: HotCommands | None = None,
        durability: str = "memory",
        replicas: int = 1,
        durability_timeout_ms: int = 1000,
    ) -> None:
        if durability not in DURABILITY_LEVELS:
            raise ValueError(f"durability must be one of {DURABILITY_LEVELS}, not {durability!r}")
        self.redis = redis
        # The pool, replies raw: writes that wait for durability (each with its WAIT on one
        # connection), and hot commands and reads when no connection of their own is given.
        self._pooled = PooledCommands(redis)
        self.hot = hot if hot is not None else self._pooled
        self._reader = reader if reader is not None else self._pooled
        self.keys = keys
        self._durability = durability
        self._replicas = replicas
        self._durability_timeout_ms = durability_timeout_ms
        self._waitaof: bool | None = None
        self._create = MultiplexedScript(load_script("create"))
        self._commit = MultiplexedScript(load_script("commit"))
        self._cancel = MultiplexedScript(load_script("cancel"))
        self._signal = MultiplexedScript(load_script("signal"))
        self._timers = MultiplexedScript(load_script("timers"))
        self._stream_partition = {k.encode(): p for p, k in enumerate(keys.all_work())}

    async def aclose(self) -> None:
        """Close the store's own connections (not `redis`, which its owner closes)."""
        await self.hot.aclose()
        await self._reader.aclose()

    async def ping(self) -> None:
        with map_redis_errors():
            await self.redis.ping()

    async def ensure_groups(self) -> None:
        """Create the engine consumer group on every work stream (from the start, so no
        entry written before the group existed is skipped)."""
        with map_redis_errors():
            for stream in self.keys.all_work():
                try:
                    await self.redis.xgroup_create(stream, ENGINE_GROUP, id="0", mkstream=True)
                except redis_errors.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    async def _durable_write(
        self, script: MultiplexedScript, keys: Sequence[str], args: Sequence[Arg]
    ) -> tuple[Any, Any]:
        """Run a write script and then, at durability `aof` or `replicas`, the wait for it.

        Returns the script's reply and the wait's (None when nothing waits). WAIT and WAITAOF
        wait for the writes of their own connection, so the two go in one pipeline on one pool
        connection: on the shared multiplexed one a WAIT would hold every caller behind it.
        """
        wait = await self._wait_command()
        if wait is None:
            return await self.hot.evalsha(script, keys, args), None

        async def then_wait(*command: Arg) -> Any:
            return await self._pooled.pipeline([command, wait])

        reply, waited = await evalsha_with(then_wait, script, keys, args)
        return reply, waited

    async def _wait_command(self) -> tuple[Arg, ...] | None:
        if self._durability == "memory":
            return None
        timeout = self._durability_timeout_ms
        if self._durability == "replicas":
            return ("WAIT", self._replicas, timeout)
        if self._waitaof is None:
            info = await self.redis.info("server")
            major, minor = (int(x) for x in str(info["redis_version"]).split(".")[:2])
            self._waitaof = (major, minor) >= (7, 2)
        # Below 7.2, `aof` relies on `appendfsync always`, which the embedded server sets.
        return ("WAITAOF", 1, 0, timeout) if self._waitaof else None

    def _check_durable(self, waited: Any) -> None:
        """Refuse a write that too few replicas acknowledged (durability `replicas`)."""
        if waited is None or self._durability != "replicas":
            return
        if int(waited) < self._replicas:
            raise StoreUnavailableError(
                f"only {waited} of {self._replicas} Redis replicas acknowledged the write "
                f"within {self._durability_timeout_ms} ms"
            )

    # -- instances ------------------------------------------------------------------------

    async def create_instance(
        self,
        new: NewInstance,
        *,
        max_active: int,
        max_per_workflow: int = 0,
        limit_policy: str = "",
        workflow_limit_policy: str = "",
    ) -> bool:
        """Persist a new instance and ask for its first turn; False if the id exists.

        Raises:
            ResourceExhaustedError: `max_active` unfinished instances exist, or
                `max_per_workflow` of this workflow (every version); `*_policy` name the limits.
        """
        keys = self.keys
        member = index_member(new.created_us, new.instance_id)
        index_keys = [
            keys.index_all,
            keys.index_workflow(new.workflow_id),
            keys.index_status(InstanceStatus.PENDING),
        ]
        if new.correlation_id:
            index_keys.append(keys.index_correlation(new.correlation_id))
        index_keys.extend(keys.index_tag(k, v) for k, v in new.tags.items())
        fields = [
            *("wf", new.workflow_id, "status", InstanceStatus.PENDING.value),
            *("input", dumps(new.input), "corr", new.correlation_id, "tags", dumps(new.tags)),
            *("state", dumps(new.state), "rev", "0", "ikey", member, "step", ""),
            *("created", str(new.created_ms), "updated", str(new.created_ms)),
        ]
        if new.trace_context:
            fields += ["otel", new.trace_context]
        if new.deadline_ms is not None:
            fields += ["deadline", str(new.deadline_ms)]
        if new.step_timeout_ms is not None:
            fields += ["steptmo", str(new.step_timeout_ms)]
        if new.timeout_action:
            fields += ["tmoact", new.timeout_action]
        if new.deadline_source:
            fields += ["dlsrc", new.deadline_source]
        workflow_key = ".".join(new.workflow_id.split(".")[:2])
        event = dumps({"type": "workflow.created", "time": new.created_ms})
        child = "0"
        if new.parent is not None:
            parent = new.parent
            fields += ["parent", parent.instance_id, "peffect", parent.effect_id]
            fields += ["anc", dumps(list(parent.ancestors))]
            index_keys += [keys.instance(parent.instance_id), keys.children(parent.instance_id)]
            child = "1"
        with map_redis_errors():
            created, waited = await self._durable_write(
                self._create,
                keys=[
                    keys.instance(new.instance_id),
                    keys.history(new.instance_id),
                    keys.work(keys.partition(new.instance_id)),
                    keys.active_count,
                    *index_keys,
                ],
                args=[
                    *(new.instance_id, member, max_active, event),
                    *(keys.active_workflow(workflow_key), max_per_workflow, child),
                    *fields,
                ],
            )
            if int(created) == -3:
                raise FailedPreconditionError(
                    f"the parent of child run {new.instance_id} has already finished"
                )
            if int(created) == -1:
                source = f" ({limit_policy})" if limit_policy else ""
                raise ResourceExhaustedError(
                    f"the limit of {max_active} concurrent instances{source} is reached; "
                    "retry when some have finished",
                    policy=limit_policy,
                )
            if int(created) == -2:
                source = f" ({workflow_limit_policy})" if workflow_limit_policy else ""
                raise ResourceExhaustedError(
                    f"the limit of {max_per_workflow} concurrent instances of {workflow_key}"
                    f"{source} is reached; retry when some have finished",
                    policy=workflow_limit_policy,
                )
            self._check_durable(waited)
        return int(created) == 1

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        with map_redis_errors():
            values = await self.hot.execute(
                "HMGET", self.keys.instance(instance_id), *RECORD_FIELDS
            )
        return decode_record(instance_id, values)

    async def signal(
        self,
        instance_id: str,
        *,
        signal_id: str,
        event: dict[str, Any],
        now_ms: int,
        expect_status: str | None = None,
    ) -> bool:
        """Deliver a signal; returns True when signal_id was delivered before.

        Raises:
            InstanceChangedError: the status is no longer `expect_status`; nothing was written.
        """
        keys = self.keys
        with map_redis_errors():
            result, waited = await self._durable_write(
                self._signal,
                keys=[
                    keys.instance(instance_id),
                    keys.inbox(instance_id),
                    keys.signal_ids(instance_id),
                    keys.work(keys.partition(instance_id)),
                ],
                args=[instance_id, signal_id, dumps(event), now_ms, expect_status or ""],
            )
            outcome = [_text(x) for x in result]
            self._raise_for(instance_id, outcome, "signal")
            if outcome[0] == "ok":
                self._check_durable(waited)
        return outcome[0] == "duplicate"

    async def cancel(
        self, instance_id: str, *, reason: str, now_ms: int, expect_status: str | None = None
    ) -> str:
        """Cancel an unfinished instance, then its child runs (whose parent then can start no
        more); returns its workflow id.

        Raises:
            InstanceChangedError: the status is no longer `expect_status`; nothing was written.
        """
        keys = self.keys
        event = dumps({"type": "workflow.cancelled", "time": now_ms, "reason": reason})
        with map_redis_errors():
            for _ in range(8):
                base = [
                    keys.instance(instance_id),
                    keys.history(instance_id),
                    keys.timers(keys.partition(instance_id)),
                    keys.active_count,
                    *keys.status_indexes,
                    keys.index_finished,
                ]
                extra_keys, extras = await self._cancel_extras(instance_id, reason, now_ms, base)
                result, waited = await self._durable_write(
                    self._cancel,
                    keys=[*base, *extra_keys],
                    args=[instance_id, reason, now_ms, event, expect_status or "", extras],
                )
                outcome = [_text(x) for x in result]
                if outcome[0] != "retry":  # 'retry': a turn changed the subscriptions meanwhile
                    break
            self._raise_for(instance_id, outcome, "cancel")
            self._check_durable(waited)
            children = await self.redis.smembers(keys.children(instance_id))
        for child in sorted(_text(c) for c in children):
            try:
                await self.cancel(child, reason=f"parent {instance_id} cancelled", now_ms=now_ms)
            except (NotFoundError, FailedPreconditionError):
                pass  # finished on its own already
        return outcome[1]

    async def _cancel_extras(
        self, instance_id: str, reason: str, now_ms: int, base: list[str]
    ) -> tuple[list[str], str]:
        """cancel.lua's extras: subscriptions to drop and, for a child, the parent to tell."""
        keys = self.keys
        subs, parent, peffect = await self.hot.execute(
            "HMGET", keys.instance(instance_id), "subs", "parent", "peffect"
        )
        extra_keys = [keys.subscribers(t) for t in subscription_types(_text(subs))]
        slot = len(base) + 1
        extras: dict[str, Any] = {
            "subs": {
                "record": _text(subs),
                "old": list(range(slot, slot + len(extra_keys))),
                "new": [],
            }
        }
        if parent:
            parent_id = _text(parent)
            first = slot + len(extra_keys)
            extra_keys += self._inbox_keys(parent_id)
            result = cancelled_result_event(_text(peffect), instance_id, reason, now_ms)
            extras["parent"] = {
                "k": list(range(first, first + 4)),
                "id": parent_id,
                "dedup": result["id"],
                "event": dumps(result),
            }
        return extra_keys, dumps(extras)

    def _inbox_keys(self, instance_id: str) -> list[str]:
        """The keys lib.lua's deliver() takes, in its order."""
        keys = self.keys
        return [
            keys.instance(instance_id),
            keys.inbox(instance_id),
            keys.delivered(instance_id),
            keys.work(keys.partition(instance_id)),
        ]

    @staticmethod
    def _raise_for(instance_id: str, outcome: list[str], verb: str) -> None:
        if outcome[0] == "missing":
            raise NotFoundError(f"instance {instance_id} does not exist")
        if outcome[0] == "changed":
            raise InstanceChangedError(instance_id, outcome[1])
        if outcome[0] == "finished":
            raise FailedPreconditionError(
                f"instance {instance_id} is already {outcome[1]}; only a pending, running "
                f"or waiting instance can be sent a {verb}"
                if verb == "signal"
                else f"instance {instance_id} is already {outcome[1]} and cannot be cancelled"
            )

    # -- query ------------------------------------------------------------------------------

    def _query_index(self, query: QueryFilter) -> str:
        """The most selective index for the filters; the rest are checked per record."""
        keys = self.keys
        if query.correlation_id:
            return keys.index_correlation(query.correlation_id)
        if query.tags:
            name, value = next(iter(sorted(query.tags.items())))
            return keys.index_tag(name, value)
        if query.workflow_id:
            return keys.index_workflow(query.workflow_id)
        if len(query.statuses) == 1:
            return keys.index_status(next(iter(query.statuses)))
        return keys.index_all

    async def query(self, query: QueryFilter) -> QueryPage:
        """Newest first. The index may lag a status change, so each record is re-checked."""
        index = self._query_index(query)
        upper = "+"
        if query.cursor:
            upper = "(" + decode_cursor(query.cursor)
        if query.started_before_ms is not None:
            bound = "(" + f"{query.started_before_ms * 1000:0{MEMBER_TIME_WIDTH}d}"
            upper = bound if upper == "+" else min(upper, bound)
        lower = "-"
        if query.started_after_ms is not None:
            lower = "[" + f"{(query.started_after_ms + 1) * 1000:0{MEMBER_TIME_WIDTH}d}"
        found: list[InstanceRecord] = []
        scanned = 0
        with map_redis_errors():
            while True:
                batch = min(QUERY_SCAN_BATCH, max(query.limit - len(found), 1) * 2)
                members: Any = await self.redis.zrange(
                    index, upper, lower, desc=True, bylex=True, offset=0, num=batch
                )
                if not members:
                    return QueryPage(found, "")
                async with self.redis.pipeline(transaction=False) as pipe:
                    for raw in members:
                        pipe.hmget(self.keys.instance(_text(raw).split(":", 1)[1]), RECORD_FIELDS)
                    rows = await pipe.execute()
                for raw, values in zip(members, rows, strict=True):
                    member = _text(raw)
                    record = decode_record(member.split(":", 1)[1], values)
                    if record is not None and _matches(record, query):
                        found.append(record)
                        if len(found) == query.limit:
                            return QueryPage(found, encode_cursor(member))
                scanned += len(members)
                upper = "(" + _text(members[-1])
                if len(members) < batch:
                    return QueryPage(found, "")
                if scanned >= QUERY_SCAN_BUDGET:
                    # A sparse filter: return what we have and let the caller continue.
                    return QueryPage(found, encode_cursor(_text(members[-1])))

    # -- engine turns ---------------------------------------------------------------------

    async def load_turn(self, instance_id: str) -> TurnSnapshot | None:
        keys = self.keys
        with map_redis_errors():
            (wf, status, rev, state, ikey, otel, *more), inbox = await self.hot.pipeline(
                [
                    (
                        *("HMGET", keys.instance(instance_id)),
                        *("wf", "status", "rev", "state", "ikey", "otel"),
                        *("deadline", "steptmo", "tmoact", "step", "stepat"),
                        *("parent", "peffect", "subs", "dlsrc"),
                    ),
                    ("XRANGE", keys.inbox(instance_id), "-", "+", "COUNT", 1000),
                ]
            )
        deadline, step_timeout, action, step, step_at, parent, peffect, subs, source = more
        if wf is None or status is None:
            return None
        return TurnSnapshot(
            instance_id=instance_id,
            workflow_id=_text(wf),
            status=InstanceStatus(_text(status)),
            revision=_text(rev),
            state=_json(state, {}),
            index_member=_text(ikey),
            inbox=[InboxEntry(_text(eid), loads(_pairs(fields)[b"e"])) for eid, fields in inbox],
            trace_context=_text(otel),
            deadline_ms=int(deadline) if deadline else None,
            step_timeout_ms=int(step_timeout) if step_timeout else None,
            timeout_action=_text(action),
            deadline_source=_text(source),
            current_step=_text(step),
            step_started_ms=int(step_at or 0),
            parent_id=_text(parent),
            parent_effect=_text(peffect),
            subscriptions=_text(subs),
        )

    async def commit_turn(self, snapshot: TurnSnapshot, commit: TurnCommit) -> bool:
        """Apply a turn atomically; False if the instance changed since it was loaded."""
        keys = self.keys
        iid = snapshot.instance_id
        now = str(commit.now_ms)
        fields = [
            *("status", commit.status.value, "state", dumps(commit.state)),
            *("step", commit.current_step, "ctx", dumps(commit.context), "updated", now),
            # The script applies the turn only at the loaded revision: this is the next one.
            *("rev", str(int(snapshot.revision or 0) + 1)),
        ]
        if commit.status in FINISHED_STATUSES:
            fields += ["completed", now, "output", dumps(commit.output)]
            if commit.error is not None:
                fields += ["error", dumps(commit.error)]
        if commit.cancel_reason:
            fields += ["reason", commit.cancel_reason]
        if commit.step_started_ms is not None:
            fields += ["stepat", str(commit.step_started_ms)]
        if commit.clear_deadline:
            fields += ["deadline", ""]
        partition = keys.partition(iid)
        commit_keys = [
            keys.instance(iid),
            keys.inbox(iid),
            keys.history(iid),
            keys.work(partition),
            keys.timers(partition),
            keys.active_count,
            *keys.status_indexes,
            keys.index_finished,
        ]
        extras = ""
        if commit.extras is not None:
            extras = self._commit_extras(snapshot, commit.extras, commit_keys)
        with map_redis_errors():
            applied = await self.hot.evalsha(
                self._commit,
                keys=commit_keys,
                args=[
                    iid,
                    snapshot.revision,
                    len(fields),
                    commit.status.value,
                    dumps(commit.consumed),
                    "" if commit.wake_at_ms is None else str(commit.wake_at_ms),
                    "1" if commit.requeue else "0",
                    len(commit.history),
                    snapshot.index_member,
                    extras,
                    dumps(list(commit.acks)) if commit.acks else "",
                    ENGINE_GROUP,
                    *fields,
                    *(dumps(event) for event in commit.history),
                ],
            )
        return int(applied) == 1

    def _commit_extras(self, snapshot: TurnSnapshot, extras: TurnExtras, keys: list[str]) -> str:
        """commit.lua's extras (JSON), appending the keys they need to `keys`."""
        iid = snapshot.instance_id

        def slot(key: str) -> int:
            keys.append(key)
            return len(keys)

        out: dict[str, Any] = {}
        if extras.effects:
            out["effects"] = [dumps(effect) for effect in extras.effects]
            out["effectSlot"] = slot(self.keys.effects(self.keys.partition(iid)))
        if extras.events:
            out["events"] = [dumps(event) for event in extras.events]
            out["eventSlot"] = slot(self.keys.events)
        if extras.inbox:
            out["inbox"] = [dumps(event) for event in extras.inbox]
        subs = extras.subscriptions
        if subs is not None:
            old = subscription_types(snapshot.subscriptions)
            record = dumps({"types": list(subs.types), "filters": subs.filters})
            if not subs.filters:
                record = ""
            if record != snapshot.subscriptions:
                new = sorted(set(subs.types)) if record else []
                out["subs"] = {
                    "old": [slot(self.keys.subscribers(t)) for t in old if t not in new],
                    "new": [slot(self.keys.subscribers(t)) for t in new if t not in old],
                    "record": record,
                }
        if extras.parent_event is not None and snapshot.parent_id:
            parent_keys = [slot(k) for k in self._inbox_keys(snapshot.parent_id)]
            out["parent"] = {
                "k": parent_keys,
                "id": snapshot.parent_id,
                "dedup": extras.parent_event["id"],
                "event": dumps(extras.parent_event),
            }
        return dumps(out) if out else ""

    async def history(self, instance_id: str, *, after: str, limit: int) -> HistoryPage:
        """Up to `limit` history events after stream id `after` ('' from the start).

        Raises:
            InvalidInputError: `after` is not a stream id returned as a cursor.
            NotFoundError: the instance does not exist.
        """
        if after and not STREAM_ID_RE.match(after):
            raise InvalidInputError.for_field("cursor", "is not a cursor returned by GetHistory")
        keys = self.keys
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.exists(keys.instance(instance_id))
                pipe.xrange(keys.history(instance_id), f"({after}" if after else "-", count=limit)
                exists, entries = await pipe.execute()
        if not exists:
            raise NotFoundError(f"instance {instance_id} does not exist")
        events = [(_text(eid), loads(fields[b"e"])) for eid, fields in entries]
        cursor = events[-1][0] if len(events) == limit else ""
        return HistoryPage(events, cursor)

    async def read_work(self, consumer: str, *, count: int, block_ms: int) -> list[WorkItem]:
        entries = await read_partitions(
            self._reader,
            ENGINE_GROUP,
            consumer,
            self.keys.all_work(),
            self._stream_partition,
            count=count,
            block_ms=block_ms,
            recreate_groups=self.ensure_groups,
        )
        return [_work_item(partition, eid, fields) for partition, eid, fields in entries]

    async def claim_stale_work(
        self, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[WorkItem]:
        """Take over entries another worker read but never acknowledged (it died)."""
        entries = await claim_partitions(
            self.redis,
            ENGINE_GROUP,
            consumer,
            self.keys.all_work(),
            min_idle_ms=min_idle_ms,
            count=count,
        )
        return [_work_item(partition, eid, fields) for partition, eid, fields in entries]

    async def ack_work(self, items: list[WorkItem]) -> None:
        if not items:
            return
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for item in items:
                    stream = self.keys.work(item.partition)
                    pipe.xack(stream, ENGINE_GROUP, item.entry_id)
                    pipe.xdel(stream, item.entry_id)
                await pipe.execute()

    async def fire_timers(self, now_ms: int, *, limit: int) -> int:
        keys = self.keys
        with map_redis_errors():
            moved = await self.hot.evalsha(
                self._timers,
                keys=[*keys.all_timers(), *keys.all_work()],
                args=[keys.partitions, now_ms, limit],
            )
        return int(moved)

    async def stats(self) -> StoreStats:
        """Instances running and waiting, and each work stream's unfinished entries.

        Acknowledged work entries are deleted, so a stream's length is its backlog and its
        first entry, whose id starts with the time it was written, is the oldest one.
        """
        keys = self.keys
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zcard(keys.index_status(InstanceStatus.RUNNING))
                pipe.zcard(keys.index_status(InstanceStatus.WAITING))
                for stream in keys.all_work():
                    pipe.xlen(stream)
                    pipe.xrange(stream, count=1)
                replies = await pipe.execute()
        backlog: dict[int, int] = {}
        oldest: dict[int, int] = {}
        for partition in range(keys.partitions):
            length, first = replies[2 + 2 * partition : 4 + 2 * partition]
            backlog[partition] = int(length)
            if first:
                oldest[partition] = int(_text(first[0][0]).partition("-")[0])
        return StoreStats(
            running=int(replies[0]), waiting=int(replies[1]), backlog=backlog, oldest_ms=oldest
        )

    # -- definitions ----------------------------------------------------------------------

    async def register_definition(self, workflow_id: str, content: str) -> bool:
        """Register immutable content under an id; True if new, False if identical.

        Raises:
            AlreadyExistsError: other content is registered under this id.
        """
        with map_redis_errors():
            if await self.redis.hsetnx(self.keys.definitions, workflow_id, content):
                return True
            existing = await self.redis.hget(self.keys.definitions, workflow_id)
        if _text(existing) != content:
            raise AlreadyExistsError(
                f"workflow {workflow_id} is already registered with different content; "
                "a registered version is immutable, so bump document.version"
            )
        return False

    async def get_definition(self, workflow_id: str) -> str | None:
        with map_redis_errors():
            content = await self.redis.hget(self.keys.definitions, workflow_id)
        return None if content is None else _text(content)

    async def list_definitions(self) -> dict[str, str]:
        with map_redis_errors():
            entries = await self.redis.hgetall(self.keys.definitions)
        return {_text(k): _text(v) for k, v in entries.items()}


def _work_item(partition: int, entry_id: bytes | str, fields: dict[bytes, bytes]) -> WorkItem:
    due = fields.get(b"d")
    return WorkItem(
        partition, _text(entry_id), _text(fields[b"i"]), None if due is None else int(due)
    )


def subscription_types(record: str) -> list[str]:
    """The event types a stored subscription record is indexed under."""
    if not record:
        return []
    return [str(t) for t in loads(record).get("types", [])]


def _matches(record: InstanceRecord, query: QueryFilter) -> bool:
    if query.workflow_id and record.workflow_id != query.workflow_id:
        return False
    if query.statuses and record.status not in query.statuses:
        return False
    if query.correlation_id and record.correlation_id != query.correlation_id:
        return False
    if any(record.tags.get(k) != v for k, v in query.tags.items()):
        return False
    if query.started_after_ms is not None and record.started_ms <= query.started_after_ms:
        return False
    return query.started_before_ms is None or record.started_ms < query.started_before_ms
