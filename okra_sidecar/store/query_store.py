"""QueryStore: Query over the instance indexes, newest first, and an instance's history."""

from __future__ import annotations

import base64
import binascii
import heapq
from itertools import islice

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

    def _query_indexes(self, query: QueryFilter) -> list[str]:
        """The most selective index for the filters, one per partition; the rest are checked
        per record."""
        keys = self.keys
        partitions = range(keys.partitions)
        if query.correlation_id:
            return [keys.index_correlation(p, query.correlation_id) for p in partitions]
        if query.tags:
            name, value = next(iter(sorted(query.tags.items())))
            return [keys.index_tag(p, name, value) for p in partitions]
        if query.workflow_id:
            return [keys.index_workflow(p, query.workflow_id) for p in partitions]
        if len(query.statuses) == 1:
            status = next(iter(query.statuses))
            return [keys.index_status(p, status) for p in partitions]
        return [keys.index_all(p) for p in partitions]

    async def query(self, query: QueryFilter) -> QueryPage:
        """Newest first. The index may lag a status change, so each record is re-checked.

        Each round reads the next members of every partition's index in one pipeline, merges
        them (members sort by creation time across partitions too) and reads the newest
        `batch` records in a second: two round trips per round, whatever the partitions.
        """
        indexes = self._query_indexes(query)
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
                async with self.redis.pipeline(transaction=False) as pipe:
                    for index in indexes:
                        pipe.zrange(index, upper, lower, desc=True, bylex=True, offset=0, num=batch)
                    per_partition: list[list[bytes]] = await pipe.execute()
                members = list(islice(heapq.merge(*per_partition, reverse=True), batch))
                # Nothing beyond this round: no partition may hold more, and all was taken.
                exhausted = all(len(part) < batch for part in per_partition) and sum(
                    len(part) for part in per_partition
                ) == len(members)
                if not members:
                    return QueryPage(found, "")
                async with self.redis.pipeline(transaction=False) as pipe:
                    for raw in members:
                        pipe.hmget(self.keys.instance(text(raw).split(":", 1)[1]), RECORD_FIELDS)
                    rows = await pipe.execute()
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
