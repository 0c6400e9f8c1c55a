"""QueryStore: Query over the instance indexes, newest first, and an instance's history."""

from __future__ import annotations

import base64
import binascii
import heapq
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import cast

from okra_sidecar.errors import InvalidInputError, instance_not_found
from okra_sidecar.instances import InstanceRecord, QueryFilter, QueryPage
from okra_sidecar.store.base import HistoryPage
from okra_sidecar.store.connections import StoreConnections
from okra_sidecar.store.jsontext import loads
from okra_sidecar.store.records import MEMBER_TIME_WIDTH, RECORD_FIELDS, decode_record
from okra_sidecar.store.replies import map_redis_errors, text
from okra_sidecar.store.stream_ids import LAST, parse_stream_id

__all__ = ["QueryStore", "decode_cursor", "encode_cursor"]

QUERY_SCAN_BATCH = 200
QUERY_SCAN_BUDGET = 5000
# Count walks the smallest index of a multi-filter count this many members at a time.
COUNT_PAGE = 1000


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


class QueryStore(StoreConnections):
    """Reads across instances (Query) and along one instance's history (GetHistory)."""

    def _candidate_indexes(self, query: QueryFilter) -> list[list[str]]:
        """Each index the filters could be read from, as its keys over the partitions (a
        status filter's: every wanted status's, an instance being in one status index)."""
        keys = self.keys
        partitions = range(keys.partitions)
        candidates = []
        if query.correlation_id:
            candidates.append([keys.index_correlation(p, query.correlation_id) for p in partitions])
        candidates.extend(
            [keys.index_tag(p, name, value) for p in partitions]
            for name, value in sorted(query.tags.items())
        )
        if query.workflow_id:
            candidates.append([keys.index_workflow(p, query.workflow_id) for p in partitions])
        if query.statuses:
            candidates.append(
                [
                    keys.index_status(p, status)
                    for p in partitions
                    for status in sorted(query.statuses, key=lambda status: status.value)
                ]
            )
        return candidates or [[keys.index_all(p) for p in partitions]]

    async def _query_indexes(self, query: QueryFilter, lower: str, upper: str) -> list[str]:
        """The index with the fewest members in the query's range, as its keys; the other
        filters are checked per record. "The RUNNING instances of a workflow" that has run a
        million times reads the few running ones, not the million: one round trip more when
        there is a choice."""
        candidates = self._candidate_indexes(query)
        if len(candidates) == 1:
            return candidates[0]
        sizes = iter(
            await self.hot.pipeline(
                [("ZLEXCOUNT", key, lower, upper) for keys in candidates for key in keys]
            )
        )
        counts = [sum(int(next(sizes)) for _ in keys) for keys in candidates]
        return candidates[counts.index(min(counts))]

    def _lex_bounds(self, query: QueryFilter, *, cursor: str = "") -> tuple[str, str]:
        """The index range (lower, upper) of the time filters and a cursor, as ZRANGE BYLEX
        takes them; members sort by creation time."""
        upper = "+"
        if cursor:
            upper = "(" + decode_cursor(cursor)
        if query.started_before_ms is not None:
            bound = "(" + f"{query.started_before_ms * 1000:0{MEMBER_TIME_WIDTH}d}"
            upper = bound if upper == "+" else min(upper, bound)
        lower = "-"
        if query.started_after_ms is not None:
            lower = "[" + f"{(query.started_after_ms + 1) * 1000:0{MEMBER_TIME_WIDTH}d}"
        return lower, upper

    def _count_groups(self, query: QueryFilter, partition: int) -> list[list[str]]:
        """The index sets whose intersection a count needs, one group per wanted status (an
        instance is in exactly one status index, so the groups' counts add up)."""
        keys = self.keys
        common = []
        if query.workflow_id:
            common.append(keys.index_workflow(partition, query.workflow_id))
        if query.correlation_id:
            common.append(keys.index_correlation(partition, query.correlation_id))
        common.extend(keys.index_tag(partition, k, v) for k, v in sorted(query.tags.items()))
        if query.statuses:
            return [
                [keys.index_status(partition, s), *common]
                for s in sorted(query.statuses, key=lambda status: status.value)
            ]
        return [common or [keys.index_all(partition)]]

    async def count(self, query: QueryFilter) -> int:
        """How many instances match, from the indexes alone (each filter is an index set and
        the time filters a range of it), over every partition.

        A group of one set is one ZLEXCOUNT. Several sets are intersected by walking the one
        with the fewest members in range a page at a time and asking the others for those
        members (ZMSCORE); ZINTERCARD would do it in one command but needs Redis 7.
        """
        lower, upper = self._lex_bounds(query)
        groups = [g for p in range(self.keys.partitions) for g in self._count_groups(query, p)]
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for group in groups:
                    for key in group:
                        pipe.zlexcount(key, lower, upper)
                sizes = iter(await pipe.execute())
            total = 0
            for group in groups:
                in_range = [int(next(sizes)) for _ in group]
                if len(group) == 1:
                    total += in_range[0]
                    continue
                if min(in_range) == 0:
                    continue
                driver = group[in_range.index(min(in_range))]
                others = [key for key in group if key != driver]
                total += await self._count_intersection(driver, others, lower, upper)
        return total

    async def _count_intersection(
        self, driver: str, others: list[str], lower: str, upper: str
    ) -> int:
        found = 0
        start = lower
        while True:
            members = cast(
                list[bytes],
                await self.redis.zrange(driver, start, upper, bylex=True, offset=0, num=COUNT_PAGE),
            )
            if not members:
                return found
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in others:
                    pipe.zmscore(key, members)  # type: ignore[arg-type]  # bytes are members too
                scores: list[list[float | None]] = await pipe.execute()
            found += sum(
                all(column[i] is not None for column in scores) for i in range(len(members))
            )
            if len(members) < COUNT_PAGE:
                return found
            start = "(" + text(members[-1])

    async def query(self, query: QueryFilter) -> QueryPage:
        """Newest first. The index may lag a status change, so each record is re-checked.

        Each round reads the next members of every partition's index in one pipeline, merges
        them (members sort by creation time across partitions too) and reads the newest
        `batch` records in a second: two round trips per round, whatever the partitions.
        """
        lower, upper = self._lex_bounds(query, cursor=query.cursor)
        found: list[InstanceRecord] = []
        scanned = batch = 0
        with map_redis_errors():
            indexes = await self._query_indexes(query, lower, upper)
            while True:
                # Twice what is still wanted, and twice the last round's at least: a sparse
                # filter (most records re-checked out) takes a few rounds, not one per record.
                wanted = max(query.limit - len(found), 1) * 2
                batch = min(QUERY_SCAN_BATCH, max(wanted, batch * 2))
                # On the hot commands: on a Cluster each slot's commands go to its master side
                # by side, without redis-py's cluster pipeline (several times the CPU).
                per_partition: list[list[bytes]] = await self.hot.pipeline(
                    [
                        ("ZRANGE", i, upper, lower, "BYLEX", "REV", "LIMIT", 0, batch)
                        for i in indexes
                    ]
                )
                # An instance moving between two wanted statuses may be met in both indexes
                # of a round, side by side in the merge.
                members = list(islice(_distinct(heapq.merge(*per_partition, reverse=True)), batch))
                # Nothing beyond this round: no partition may hold more, and all was taken.
                exhausted = all(len(part) < batch for part in per_partition) and sum(
                    len(part) for part in per_partition
                ) == len(members)
                if not members:
                    return QueryPage(found, "")
                rows = await self.hot.pipeline(
                    [
                        ("HMGET", self.keys.instance(text(raw).split(":", 1)[1]), *RECORD_FIELDS)
                        for raw in members
                    ]
                )
                for raw, values in zip(members, rows, strict=True):
                    member = text(raw)
                    record = decode_record(member.split(":", 1)[1], values)
                    if record is not None and _matches(record, query):
                        found.append(record)
                        if len(found) == query.limit:
                            return QueryPage(found, encode_cursor(member))
                scanned += len(members)
                upper = "(" + text(members[-1])
                if exhausted:
                    return QueryPage(found, "")
                if scanned >= QUERY_SCAN_BUDGET:
                    # A sparse filter: return what we have and let the caller continue.
                    return QueryPage(found, encode_cursor(text(members[-1])))

    async def history(self, instance_id: str, *, after: str, limit: int) -> HistoryPage:
        """Up to `limit` history events after stream id `after` ('' from the start).

        Raises:
            InvalidInputError: `after` is not a stream id returned as a cursor.
            NotFoundError: the instance does not exist.
        """
        # "(" makes the bound exclusive; Redis refuses an exclusive start at the last id.
        if after and parse_stream_id(after) in (None, LAST):
            raise InvalidInputError.for_field("cursor", "is not a cursor returned by GetHistory")
        keys = self.keys
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.exists(keys.instance(instance_id))
                pipe.xrange(keys.history(instance_id), f"({after}" if after else "-", count=limit)
                exists, entries = await pipe.execute()
        if not exists:
            raise instance_not_found(instance_id)
        events = [(text(eid), loads(fields[b"e"])) for eid, fields in entries]
        cursor = events[-1][0] if len(events) == limit else ""
        return HistoryPage(events, cursor)


def _distinct(members: Iterable[bytes]) -> Iterator[bytes]:
    """Sorted members without repeats."""
    last = None
    for member in members:
        if member != last:
            yield member
        last = member


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
