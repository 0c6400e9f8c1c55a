"""The reasons a client can see: google.rpc.ErrorInfo.reason, and what each one means.

`REASONS` is the one list of them, with their status code, whether a retry can succeed, and
what a client should do; docs/errors.md is generated from it. okra_sidecar.errors, whose
error classes carry these reasons, re-exports both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["REASONS", "Reason", "ReasonSpec"]


class Reason(StrEnum):
    """The stable cause of an error, sent as google.rpc.ErrorInfo.reason."""

    WORKFLOW_NOT_FOUND = "WORKFLOW_NOT_FOUND"
    INSTANCE_NOT_FOUND = "INSTANCE_NOT_FOUND"
    SCHEDULE_NOT_FOUND = "SCHEDULE_NOT_FOUND"
    WORKFLOW_VERSION_EXISTS = "WORKFLOW_VERSION_EXISTS"
    INVALID_FIELD = "INVALID_FIELD"
    INPUT_SCHEMA_MISMATCH = "INPUT_SCHEMA_MISMATCH"
    INVALID_POLICY_SET = "INVALID_POLICY_SET"
    INVALID_DEFINITION = "INVALID_DEFINITION"
    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_INVALID = "TOKEN_INVALID"
    POLICY_DENIED = "POLICY_DENIED"
    INSTANCE_ALREADY_FINISHED = "INSTANCE_ALREADY_FINISHED"
    CHANGED_CONCURRENTLY = "CHANGED_CONCURRENTLY"
    INSTANCE_ALREADY_SUSPENDED = "INSTANCE_ALREADY_SUSPENDED"
    INSTANCE_NOT_SUSPENDED = "INSTANCE_NOT_SUSPENDED"
    INSTANCE_NOT_FINISHED = "INSTANCE_NOT_FINISHED"
    INSTANCE_NOT_FAILED = "INSTANCE_NOT_FAILED"
    NOTHING_TO_RETRY = "NOTHING_TO_RETRY"
    UNKNOWN_TASK = "UNKNOWN_TASK"
    INSTANCE_NOT_RESETTABLE = "INSTANCE_NOT_RESETTABLE"
    TASK_NOT_REACHED = "TASK_NOT_REACHED"
    RESET_POINT_NOT_KEPT = "RESET_POINT_NOT_KEPT"
    TASK_MOVED = "TASK_MOVED"
    BULK_OPERATION_NOT_FOUND = "BULK_OPERATION_NOT_FOUND"
    BULK_OPERATION_FINISHED = "BULK_OPERATION_FINISHED"
    BULK_TOO_MANY_INSTANCES = "BULK_TOO_MANY_INSTANCES"
    MANUAL_RUNS_DISABLED = "MANUAL_RUNS_DISABLED"
    EVENTS_NOT_ROUTED = "EVENTS_NOT_ROUTED"
    SCHEDULE_DECLARED_BY_WORKFLOW = "SCHEDULE_DECLARED_BY_WORKFLOW"
    SCHEDULE_INPUT_MISMATCH = "SCHEDULE_INPUT_MISMATCH"
    SCHEDULE_UNREADABLE = "SCHEDULE_UNREADABLE"
    DURABILITY_NOT_POSSIBLE = "DURABILITY_NOT_POSSIBLE"
    RATE_LIMITED = "RATE_LIMITED"
    INSTANCE_LIMIT_REACHED = "INSTANCE_LIMIT_REACHED"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    REDIS_UNAVAILABLE = "REDIS_UNAVAILABLE"
    REPLICAS_NOT_ACKNOWLEDGED = "REPLICAS_NOT_ACKNOWLEDGED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class ReasonSpec:
    """What a reason means to a client.

    Attributes:
        code: The gRPC status code name the reason comes with.
        retryable: Whether the same call, repeated unchanged, can succeed (after the
            RetryInfo delay when one is sent); clients retry only these.
        action: What a client should do, for docs/errors.md.
        sent: False for reasons the sidecar logs or records but never returns to a caller.
    """

    code: str
    retryable: bool
    action: str
    sent: bool = True


REASONS: Mapping[Reason, ReasonSpec] = {
    Reason.WORKFLOW_NOT_FOUND: ReasonSpec(
        "NOT_FOUND",
        retryable=False,
        action="Check the workflow id (`workflow`); ListWorkflows shows the registered ones.",
    ),
    Reason.INSTANCE_NOT_FOUND: ReasonSpec(
        "NOT_FOUND",
        retryable=False,
        action=(
            "Check the instance id (`instance`); it may never have existed or was purged by "
            "retention."
        ),
    ),
    Reason.SCHEDULE_NOT_FOUND: ReasonSpec(
        "NOT_FOUND",
        retryable=False,
        action="Check the schedule id (`schedule`); ListSchedules shows the existing ones.",
    ),
    Reason.WORKFLOW_VERSION_EXISTS: ReasonSpec(
        "ALREADY_EXISTS",
        retryable=False,
        action=(
            "A registered version is immutable: bump `document.version` of the changed "
            "definition (refused when the sidecar starts)."
        ),
        sent=False,
    ),
    Reason.INVALID_FIELD: ReasonSpec(
        "INVALID_ARGUMENT",
        retryable=False,
        action=(
            "Fix the request fields named in the BadRequest field violations (`field` names "
            "the first)."
        ),
    ),
    Reason.INPUT_SCHEMA_MISMATCH: ReasonSpec(
        "INVALID_ARGUMENT",
        retryable=False,
        action=(
            "Make the input match the workflow's `input.schema` (a signal's payload: the "
            "schema its listen task declares in `metadata.signals`); the BadRequest lists "
            "each violation."
        ),
    ),
    Reason.INVALID_POLICY_SET: ReasonSpec(
        "INVALID_ARGUMENT",
        retryable=False,
        action="Fix the policy keys named in the BadRequest; nothing was changed.",
    ),
    Reason.INVALID_DEFINITION: ReasonSpec(
        "INVALID_ARGUMENT",
        retryable=False,
        action="Fix the workflow file at the JSON pointer in the message (start-up only).",
        sent=False,
    ),
    Reason.TOKEN_MISSING: ReasonSpec(
        "UNAUTHENTICATED",
        retryable=False,
        action="Send `authorization: Bearer <JWT>` metadata.",
    ),
    Reason.TOKEN_INVALID: ReasonSpec(
        "UNAUTHENTICATED",
        retryable=False,
        action=(
            "Get a new token: this one is malformed, expired, for another audience or signed "
            "with an unknown key."
        ),
    ),
    Reason.POLICY_DENIED: ReasonSpec(
        "PERMISSION_DENIED",
        retryable=False,
        action=(
            "The policy named in `policy` refuses this call for this caller; change the call "
            "or the policy."
        ),
    ),
    Reason.INSTANCE_ALREADY_FINISHED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "The instance (`instance`, now `status`) has ended; read its result with "
            "GetStatus instead."
        ),
    ),
    Reason.CHANGED_CONCURRENTLY: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=True,
        action=(
            "The instance or schedule changed while the call was checked; nothing was "
            "written, retry the call."
        ),
    ),
    Reason.INSTANCE_ALREADY_SUSPENDED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="The instance (`instance`) is suspended already; Resume it when it may go on.",
    ),
    Reason.INSTANCE_NOT_SUSPENDED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "Only a suspended instance can be resumed; `status` says what the instance "
            "(`instance`) is now."
        ),
    ),
    Reason.INSTANCE_NOT_FINISHED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "The instance (`instance`, now `status`) has not ended; Cancel it first, or wait "
            "for it to end."
        ),
    ),
    Reason.INSTANCE_NOT_FAILED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "Only a failed instance can be retried; `status` says what the instance "
            "(`instance`) is now."
        ),
    ),
    Reason.NOTHING_TO_RETRY: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "The instance (`instance`) failed outside any task (its workflow's timeout or "
            "input), so no task can run again; start a new instance."
        ),
    ),
    Reason.UNKNOWN_TASK: ReasonSpec(
        "INVALID_ARGUMENT",
        retryable=False,
        action="`task` must be a top-level task of the workflow; `tasks` lists them.",
    ),
    Reason.INSTANCE_NOT_RESETTABLE: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="Wait until the instance (`status`) ends or waits; Resume a suspended one.",
    ),
    Reason.TASK_NOT_REACHED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="The instance never reached `task`; pick a task its history shows started.",
    ),
    Reason.RESET_POINT_NOT_KEPT: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="The state at `task` outgrew the budget (`limit` bytes); reset to an earlier task.",
    ),
    Reason.TASK_MOVED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="`okra-sidecar migrate` requeued the task (`task`): drop it and keep polling.",
    ),
    Reason.BULK_OPERATION_NOT_FOUND: ReasonSpec(
        "NOT_FOUND",
        retryable=False,
        action="Check the bulk operation id (`operation`); ListBulkOperations shows them.",
    ),
    Reason.BULK_OPERATION_FINISHED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "The bulk operation (`operation`, now `state`) has ended; there is nothing left "
            "to cancel."
        ),
    ),
    Reason.BULK_TOO_MANY_INSTANCES: ReasonSpec(
        "RESOURCE_EXHAUSTED",
        retryable=False,
        action=(
            "The filter matches more instances than one bulk operation may act on (`limit`, "
            "`policy` when a policy set it); narrow the filter or split the work. A dry run "
            "answers over the limit, with `matched` and `max_instances`, to preview it."
        ),
    ),
    Reason.MANUAL_RUNS_DISABLED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "This sidecar starts the workflow (`workflow`) only from its schedule; do not "
            "call Run for it."
        ),
    ),
    Reason.EVENTS_NOT_ROUTED: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="Emit through a sidecar that routes events; every sidecar the CLI starts does.",
        sent=False,
    ),
    Reason.SCHEDULE_DECLARED_BY_WORKFLOW: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action="Pause the schedule, or remove `schedule` from the definition and bump its version.",
    ),
    Reason.SCHEDULE_UNREADABLE: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "The stored schedule cannot be read (written outside the sidecar, or damaged): "
            "DeleteSchedule removes it; ListSchedules leaves it out."
        ),
    ),
    Reason.SCHEDULE_INPUT_MISMATCH: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "A schedule firing whose input no longer fits the schema is skipped (recorded on "
            "the schedule)."
        ),
        sent=False,
    ),
    Reason.DURABILITY_NOT_POSSIBLE: ReasonSpec(
        "FAILED_PRECONDITION",
        retryable=False,
        action=(
            "Configure Redis' persistence (or replicas) for the `durability` setting (refused "
            "when the sidecar starts)."
        ),
        sent=False,
    ),
    Reason.RATE_LIMITED: ReasonSpec(
        "RESOURCE_EXHAUSTED",
        retryable=True,
        action="Retry after the RetryInfo delay; `policy` names the rate limit.",
    ),
    Reason.INSTANCE_LIMIT_REACHED: ReasonSpec(
        "RESOURCE_EXHAUSTED",
        retryable=False,
        action=(
            "Too many unfinished instances (`policy` names the limit); start again once some "
            "have finished."
        ),
    ),
    Reason.MESSAGE_TOO_LARGE: ReasonSpec(
        "RESOURCE_EXHAUSTED",
        retryable=False,
        action=(
            "The request message is over the sidecar's 8 MiB limit (`size` and `limit` in "
            "bytes): send less in one call."
        ),
    ),
    Reason.REDIS_UNAVAILABLE: ReasonSpec(
        "UNAVAILABLE",
        retryable=True,
        action="Retry after the RetryInfo delay; a Run is safe to retry with a `request_id`.",
    ),
    Reason.REPLICAS_NOT_ACKNOWLEDGED: ReasonSpec(
        "UNAVAILABLE",
        retryable=True,
        action=(
            "The write was made but too few replicas confirmed it; retry (a Run with its "
            "`request_id`)."
        ),
    ),
    Reason.UNIMPLEMENTED: ReasonSpec(
        "UNIMPLEMENTED",
        retryable=False,
        action="This sidecar does not serve the rpc.",
    ),
    Reason.INTERNAL: ReasonSpec(
        "INTERNAL",
        retryable=False,
        action=(
            "A sidecar bug: report it with the time of the call; the sidecar log has the details."
        ),
    ),
}
