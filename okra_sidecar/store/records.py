"""An instance hash as a record, and the index member that places it in time order."""

from __future__ import annotations

from collections.abc import Sequence

from okra_sidecar.instances import InstanceRecord, InstanceStatus
from okra_sidecar.store.jsontext import loads
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.replies import json_or, text

__all__ = [
    "MEMBER_TIME_WIDTH",
    "RECORD_FIELDS",
    "INDEX_FIELDS",
    "decode_record",
    "index_member",
    "instance_indexes",
    "subscription_types",
]

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
    "rev",
)
# The hash fields that say which index sets hold an instance's member (instance_indexes).
INDEX_FIELDS = ("wf", "status", "corr", "tags", "parent")
# Index members sort by creation time as text: fixed-width microseconds, then the id.
MEMBER_TIME_WIDTH = 17


def index_member(created_us: int, instance_id: str) -> str:
    return f"{created_us:0{MEMBER_TIME_WIDTH}d}:{instance_id}"


def decode_record(instance_id: str, values: Sequence[bytes | str | None]) -> InstanceRecord | None:
    """Build a record from HMGET of RECORD_FIELDS; None when the instance does not exist."""
    (wf, status, inp, out, err, corr, tags, step, ctx, created, updated, completed, reason, rev) = (
        values
    )
    if wf is None or status is None:
        return None
    return InstanceRecord(
        instance_id=instance_id,
        workflow_id=text(wf),
        status=InstanceStatus(text(status)),
        input=json_or(inp),
        output=json_or(out),
        error=json_or(err),
        correlation_id=text(corr),
        tags=json_or(tags, {}),
        current_step=text(step),
        context=json_or(ctx, {}),
        created_ms=int(created or 0),
        started_ms=int(created or 0),
        updated_ms=int(updated or 0),
        completed_ms=int(completed or 0),
        cancel_reason=text(reason),
        revision=int(rev or 0),
    )


def subscription_types(record: str) -> list[str]:
    """The event types a stored subscription record is indexed under."""
    if not record:
        return []
    return [str(t) for t in loads(record).get("types", [])]


def instance_indexes(
    keys: RedisKeys, partition: int, row: Sequence[bytes | str | None]
) -> list[str]:
    """The index sets that hold an instance's member, from HMGET of INDEX_FIELDS."""
    workflow_id, status, correlation_id, tags, parent = row
    if workflow_id is None or status is None:
        return []
    indexes = [
        keys.index_all(partition),
        keys.index_workflow(partition, text(workflow_id)),
        keys.index_status(partition, InstanceStatus(text(status))),
    ]
    if correlation_id:
        indexes.append(keys.index_correlation(partition, text(correlation_id)))
    if parent:
        indexes.append(keys.index_parent(partition, text(parent)))
    tag_map: dict[str, str] = json_or(tags, {})
    indexes.extend(keys.index_tag(partition, name, value) for name, value in tag_map.items())
    return indexes
