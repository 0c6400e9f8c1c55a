"""The code-level checks of request fields that several rpcs share: text lengths, tags,
Query's filters, the fields of nested messages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.api.convert import check_statuses, optional_time_ms
from okra_sidecar.errors import FieldViolation, InvalidInputError
from okra_sidecar.instances import QueryFilter
from okra_sidecar.policy import rules

__all__ = [
    "MAX_REASON",
    "MAX_TAGS",
    "MAX_TEXT",
    "check_request_id",
    "check_tags",
    "check_text",
    "fields_under",
    "query_filter",
]

MAX_TAGS = 64
MAX_TEXT = 256
MAX_REASON = 1024


def check_text(value: str, field: str, limit: int = MAX_TEXT) -> None:
    if len(value) > limit:
        raise InvalidInputError.for_field(field, f"is {len(value)} characters; at most {limit}")


def check_tags(tags: dict[str, str], field: str = "tags") -> None:
    if len(tags) > MAX_TAGS:
        raise InvalidInputError.for_field(field, f"has {len(tags)} tags; at most {MAX_TAGS}")
    for name, value in tags.items():
        if not name:
            raise InvalidInputError.for_field(field, "a tag name may not be empty")
        check_text(name, f"{field}.{name}")
        check_text(value, f"{field}.{name}")


@contextlib.contextmanager
def fields_under(prefix: str) -> Iterator[None]:
    """Name the fields of a nested message's violations from the request (`run.input`)."""
    try:
        yield
    except InvalidInputError as exc:
        if not exc.violations:
            raise
        violations = [FieldViolation(prefix + v.field, v.description) for v in exc.violations]
        raise InvalidInputError(f"{prefix}{exc}", violations, reason=exc.reason) from None


def query_filter(
    request: pb.QueryRequest | pb.CountRequest,
    *,
    limit: int = 0,
    cursor: str = "",
    field: str = "",
) -> QueryFilter:
    """Query's and Count's filters (a bulk operation's too), checked by the code-level rules;
    `field` prefixes the names of bad fields (`filter.`).

    Raises:
        InvalidInputError: a filter breaks a rule.
    """
    if request.workflow_id:
        rules.check_workflow_id(request.workflow_id)
    statuses = check_statuses(request.status, f"{field}status")
    tags = dict(request.tags)
    check_tags(tags, f"{field}tags")
    check_text(request.correlation_id, f"{field}correlation_id")
    after = optional_time_ms(request, "started_after")
    before = optional_time_ms(request, "started_before")
    if after is not None and before is not None and after >= before:
        raise InvalidInputError.for_field(
            f"{field}started_after", "must be earlier than started_before"
        )
    return QueryFilter(
        workflow_id=request.workflow_id,
        statuses=statuses,
        tags=tags,
        correlation_id=request.correlation_id,
        started_after_ms=after,
        started_before_ms=before,
        limit=limit,
        cursor=cursor,
    )


def check_request_id(request_id: str) -> None:
    """SignalWithStart's Run needs a request_id: it names the instance to signal or start."""
    if not request_id:
        raise InvalidInputError.for_field(
            "request_id", "is required: it names the instance to signal or start"
        )
