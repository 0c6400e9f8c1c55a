"""Conversions between protobuf messages and the sidecar's plain records."""

from __future__ import annotations

from collections.abc import Iterable
from math import inf, isfinite, nan
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.bulks import BulkAction, BulkRecord, BulkState
from okra_sidecar.errors import InvalidInputError
from okra_sidecar.instances import InstanceRecord, InstanceStatus
from okra_sidecar.schedules import CatchUpPolicy, OverlapPolicy, ScheduleRecord, ScheduleSource

STATUS_TO_PB = {
    InstanceStatus.PENDING: pb.WORKFLOW_STATUS_PENDING,
    InstanceStatus.RUNNING: pb.WORKFLOW_STATUS_RUNNING,
    InstanceStatus.WAITING: pb.WORKFLOW_STATUS_WAITING,
    InstanceStatus.COMPLETED: pb.WORKFLOW_STATUS_COMPLETED,
    InstanceStatus.FAILED: pb.WORKFLOW_STATUS_FAILED,
    InstanceStatus.CANCELLED: pb.WORKFLOW_STATUS_CANCELLED,
    InstanceStatus.SUSPENDED: pb.WORKFLOW_STATUS_SUSPENDED,
}
STATUS_FROM_PB = {v: k for k, v in STATUS_TO_PB.items()}


def value_to_python(value: struct_pb2.Value, field: str) -> Any:
    """A google.protobuf.Value as plain JSON data (an unset Value is null); `field` names it
    in the request (`input`, `payload`), for the error.

    A Value carries every number as a double; whole numbers come back as ints, as they were
    written in the caller's JSON, so that `{petId}` in a URI becomes `1`, not `1.0`. Walks the
    message directly: json_format.MessageToDict is pure Python per field and costs several
    times more on Run's path.

    Raises:
        InvalidInputError: the value holds NaN or an infinity, which JSON cannot write (stored,
            it would become null); the violation names the number's place (`input.amount`).
    """
    try:
        return _to_python(value)
    except _NonFiniteNumberError:
        place, number = _non_finite_at(value, field) or (field, nan)
        raise InvalidInputError.for_field(
            place, f"{_JSON_NAMES.get(number, 'NaN')} is not a JSON number; send a finite number"
        ) from None


class _NonFiniteNumberError(Exception):
    """Raised inside the walk, which keeps no path: the caller looks for the place again."""


_JSON_NAMES = {inf: "Infinity", -inf: "-Infinity"}


def _to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {key: _to_python(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_to_python(item) for item in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) < 2**53:
            return int(number)
        # NaN and the infinities are not whole numbers, so only fractions pay for the check.
        if isfinite(number):
            return number
        raise _NonFiniteNumberError
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None  # null_value, or no kind at all


def _non_finite_at(value: struct_pb2.Value, place: str) -> tuple[str, float] | None:
    """The place (`input.items[2].price`) and value of the first NaN or infinity in `value`."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return None if isfinite(value.number_value) else (place, value.number_value)
    items: Iterable[tuple[str, struct_pb2.Value]] = ()
    if kind == "struct_value":
        items = ((f"{place}.{key}", item) for key, item in value.struct_value.fields.items())
    elif kind == "list_value":
        items = ((f"{place}[{i}]", item) for i, item in enumerate(value.list_value.values))
    for inner, item in items:
        found = _non_finite_at(item, inner)
        if found is not None:
            return found
    return None


def python_to_value(data: Any, target: struct_pb2.Value) -> None:
    """Fill a Value field in place from plain JSON data.

    Objects and arrays go through Struct.update / ListValue.extend, which build nested values
    natively; json_format.ParseDict costs several times more on GetStatus's path.
    """
    if data is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        target.bool_value = data
    elif isinstance(data, int | float):
        target.number_value = data
    elif isinstance(data, str):
        target.string_value = data
    elif isinstance(data, dict):
        target.struct_value.SetInParent()  # so {} is an empty object, not an unset value
        target.struct_value.update(data)
    elif isinstance(data, list):
        target.list_value.SetInParent()
        target.list_value.extend(data)
    else:
        json_format.ParseDict(data, target)


# A day inside google.protobuf.Timestamp's range (years 1 to 9999), so that the time exists in
# every time zone: Python's datetime, croniter and Timestamp itself refuse anything further out.
EARLIEST_REQUEST_TIME_S = -62135596800 + 86400
LATEST_REQUEST_TIME_S = 253402300799 - 86400


def timestamp_ms(ts: timestamp_pb2.Timestamp, field: str = "time") -> int:
    """A request's Timestamp in milliseconds.

    Raises:
        InvalidInputError: `field` lies outside years 1 to 9999 or has invalid nanos.
    """
    if not EARLIEST_REQUEST_TIME_S <= ts.seconds <= LATEST_REQUEST_TIME_S:
        raise InvalidInputError.for_field(
            field, "must be between 0001-01-02 and 9999-12-30 (UTC), as an RFC 3339 time"
        )
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidInputError.for_field(field, "nanos must be from 0 to 999999999")
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def optional_time_ms(request: Any, field: str) -> int | None:
    """The request's Timestamp `field` in milliseconds (checked as above), None when unset."""
    return timestamp_ms(getattr(request, field), field) if request.HasField(field) else None


def _set_time(target: timestamp_pb2.Timestamp, ms: int) -> None:
    if ms:
        target.FromMilliseconds(ms)


def record_to_pb(record: InstanceRecord) -> pb.WorkflowInstance:
    message = pb.WorkflowInstance(
        instance_id=record.instance_id,
        workflow_id=record.workflow_id,
        version=record.workflow_id.split(".", 2)[2] if record.workflow_id.count(".") >= 2 else "",
        status=STATUS_TO_PB[record.status],
        correlation_id=record.correlation_id,
        tags=record.tags,
        current_step=record.current_step,
        cancel_reason=record.cancel_reason,
        revision=record.revision,
    )
    python_to_value(record.input, message.input)
    if record.output is not None:
        python_to_value(record.output, message.output)
    if record.error:
        error = record.error
        message.error.type = str(error.get("type", ""))
        message.error.status = int(error.get("status") or 0)
        message.error.title = str(error.get("title") or "")
        message.error.detail = str(error.get("detail") or "")
        message.error.instance = str(error.get("instance") or "")
    if record.context:
        message.variables.update(record.context)
    _set_time(message.start_time, record.started_ms)
    _set_time(message.end_time, record.completed_ms)
    _set_time(message.updated_at, record.updated_ms)
    return message


# -- schedules --------------------------------------------------------------------------------

OVERLAP_FROM_PB = {
    spb.OVERLAP_POLICY_UNSPECIFIED: OverlapPolicy.ALLOW,
    spb.OVERLAP_POLICY_ALLOW: OverlapPolicy.ALLOW,
    spb.OVERLAP_POLICY_SKIP: OverlapPolicy.SKIP,
    spb.OVERLAP_POLICY_BUFFER_ONE: OverlapPolicy.BUFFER_ONE,
}
OVERLAP_TO_PB = {
    OverlapPolicy.ALLOW: spb.OVERLAP_POLICY_ALLOW,
    OverlapPolicy.SKIP: spb.OVERLAP_POLICY_SKIP,
    OverlapPolicy.BUFFER_ONE: spb.OVERLAP_POLICY_BUFFER_ONE,
}
CATCH_UP_FROM_PB = {
    spb.CATCH_UP_POLICY_UNSPECIFIED: CatchUpPolicy.FIRE_ONCE,
    spb.CATCH_UP_POLICY_SKIP_MISSED: CatchUpPolicy.SKIP_MISSED,
    spb.CATCH_UP_POLICY_FIRE_ONCE: CatchUpPolicy.FIRE_ONCE,
}
CATCH_UP_TO_PB = {
    CatchUpPolicy.SKIP_MISSED: spb.CATCH_UP_POLICY_SKIP_MISSED,
    CatchUpPolicy.FIRE_ONCE: spb.CATCH_UP_POLICY_FIRE_ONCE,
}
SOURCE_TO_PB = {
    ScheduleSource.API: spb.SCHEDULE_SOURCE_API,
    ScheduleSource.DEFINITION: spb.SCHEDULE_SOURCE_DEFINITION,
}


def schedule_to_pb(record: ScheduleRecord, next_fire_times: list[int]) -> spb.Schedule:
    spec = record.spec
    message = spb.Schedule(
        schedule_id=record.schedule_id,
        workflow_id=spec.workflow_id,
        cron_expression=spec.cron,
        time_zone=spec.time_zone or ("UTC" if spec.cron else ""),
        overlap_policy=OVERLAP_TO_PB[spec.overlap],
        catch_up_policy=CATCH_UP_TO_PB[spec.catch_up],
        tags=spec.tags,
        source=SOURCE_TO_PB[record.source],
        paused=record.paused,
        last_instance_id=record.last_instance_id,
        fired_count=record.fired,
        skipped_count=record.skipped,
        last_error=record.last_error,
        definition_version=record.definition_version,
    )
    python_to_value(spec.input, message.input)
    if spec.start_ms is not None:
        message.start_time.FromMilliseconds(spec.start_ms)
    if spec.end_ms is not None:
        message.end_time.FromMilliseconds(spec.end_ms)
    for fire_ms in next_fire_times:
        message.next_fire_times.add().FromMilliseconds(fire_ms)
    if record.last_fire_ms is not None:
        message.last_fire_time.FromMilliseconds(record.last_fire_ms)
    if spec.every_ms is not None:
        message.every.FromMilliseconds(spec.every_ms)
    if spec.after_ms is not None:
        message.after.FromMilliseconds(spec.after_ms)
    message.create_time.FromMilliseconds(record.created_ms)
    message.update_time.FromMilliseconds(record.updated_ms)
    return message


def history_event_to_pb(entry_id: str, event: dict[str, Any]) -> pb.HistoryEvent:
    """One history stream entry as a HistoryEvent; fields beyond type, task, time go in details."""
    message = pb.HistoryEvent(
        id=entry_id, type=str(event.get("type", "")), task=str(event.get("task") or "")
    )
    when = event.get("time")
    if isinstance(when, int):
        message.time.FromMilliseconds(when)
    details = {k: v for k, v in event.items() if k not in ("type", "task", "time")}
    if details:
        message.details.update(details)
    return message


def check_statuses(
    values: Iterable[pb.WorkflowStatus.ValueType], field: str
) -> frozenset[InstanceStatus]:
    """WorkflowStatus values as statuses; UNSPECIFIED and unknown numbers are refused."""
    statuses = set()
    for index, status in enumerate(values):
        if status not in STATUS_FROM_PB:
            raise InvalidInputError.for_field(
                f"{field}[{index}]",
                "must be a WorkflowStatus other than WORKFLOW_STATUS_UNSPECIFIED",
            )
        statuses.add(STATUS_FROM_PB[status])
    return frozenset(statuses)


BULK_ACTION_FROM_PB = {
    opb.BULK_ACTION_CANCEL: BulkAction.CANCEL,
    opb.BULK_ACTION_SUSPEND: BulkAction.SUSPEND,
    opb.BULK_ACTION_RESUME: BulkAction.RESUME,
    opb.BULK_ACTION_RETRY: BulkAction.RETRY,
    opb.BULK_ACTION_DELETE: BulkAction.DELETE,
    opb.BULK_ACTION_SIGNAL: BulkAction.SIGNAL,
}
BULK_ACTION_TO_PB = {action: number for number, action in BULK_ACTION_FROM_PB.items()}


def bulk_action_from_pb(number: int) -> BulkAction:
    """A StartBulkOperation's action.

    Raises:
        InvalidInputError: unspecified, or a number the enum does not name.
    """
    for known, action in BULK_ACTION_FROM_PB.items():
        if known == number:
            return action
    names = ", ".join(opb.BulkAction.Name(n) for n in BULK_ACTION_FROM_PB)
    raise InvalidInputError.for_field("action", f"must be one of {names}")


BULK_STATE_TO_PB = {
    BulkState.RUNNING: opb.BULK_OPERATION_STATE_RUNNING,
    BulkState.COMPLETED: opb.BULK_OPERATION_STATE_COMPLETED,
    BulkState.CANCELLED: opb.BULK_OPERATION_STATE_CANCELLED,
}


def bulk_to_pb(record: BulkRecord) -> opb.BulkOperation:
    message = opb.BulkOperation(
        operation_id=record.operation_id,
        action=BULK_ACTION_TO_PB[record.spec.action],
        state=BULK_STATE_TO_PB[record.state],
        matched=record.matched,
        done=record.done,
        skipped=record.skipped,
        failed=record.failed,
        reasons=record.reasons,
        reason=record.spec.reason,
    )
    _set_time(message.created_at, record.created_ms)
    _set_time(message.updated_at, record.updated_ms)
    return message
