"""The store seam: what the engine and the api need from durable storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from okra_sidecar.instances import (
    InstanceRecord,
    InstanceStatus,
    NewInstance,
    QueryFilter,
    QueryPage,
)
from okra_sidecar.schedules import PreviousRun, SchedulePage, ScheduleRecord


class WorkflowMismatchError(Exception):
    """A signal named the workflow its payload was checked against, and the instance (deleted
    and started again under the same id) now runs another one; nothing was written."""


@dataclass(frozen=True)
class InboxEntry:
    """A signal waiting in an instance's inbox."""

    entry_id: str
    event: dict[str, Any]


@dataclass(frozen=True)
class TurnSnapshot:
    """What an engine turn loads: engine state, revision and unconsumed signals."""

    instance_id: str
    workflow_id: str
    status: InstanceStatus
    revision: str
    state: dict[str, Any]
    index_member: str
    inbox: list[InboxEntry]
    trace_context: str = ""  # stored at creation; see NewInstance.trace_context
    # A child run's link to the parent awaiting it ('' for top-level instances).
    parent_id: str = ""
    parent_effect: str = ""
    # The listen subscriptions registered by the previous turn (the stored JSON record, or '').
    subscriptions: str = ""

    # Policy timeouts (see NewInstance) and when the instance entered its current step.
    deadline_ms: int | None = None
    step_timeout_ms: int | None = None
    timeout_action: str = ""
    deadline_source: str = ""
    step_timeout_source: str = ""
    current_step: str = ""
    step_started_ms: int = 0
    # Its turns go to the slow lane: an expression of it ran long in a regular engine process.
    slow: bool = False
    # The limit scope ('' is one) and workflow key its admission is held under; None: none.
    limit_scope: str | None = None
    limit_workflow: str = ""


@dataclass(frozen=True)
class TurnCommit:
    """What an engine turn writes, applied only if the revision is unchanged."""

    status: InstanceStatus
    state: dict[str, Any]
    current_step: str
    context: dict[str, Any]
    output: Any
    error: dict[str, Any] | None
    consumed: list[str]
    wake_at_ms: int | None
    requeue: bool
    history: list[dict[str, Any]]
    now_ms: int
    cancel_reason: str = ""
    step_started_ms: int | None = None  # set when the instance enters a new step
    clear_deadline: bool = False  # a passed deadline that timeoutAction `continue` let go
    extras: TurnExtras | None = None  # None for the common turn with nothing more to write
    # Work entries (of the instance's partition) this turn answers, acknowledged by the commit
    # itself so a turn costs one round trip less.
    acks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Subscriptions:
    """What a turn waiting in a listen wants routed to it: filters, by the event types they name
    ('' stands for filters without a type, which see every event)."""

    types: tuple[str, ...]
    filters: list[dict[str, Any]]


@dataclass(frozen=True)
class TurnExtras:
    """What a turn writes beyond state and history, in the same atomic step.

    `effects` go to the executors (Effect.to_json()), `events` are published, `inbox` events go
    straight back to the instance itself (with a turn to read them), `subscriptions` replace the
    registered ones (None: unchanged; empty filters: none), `parent_event` is the outcome a
    finished child hands to the parent awaiting it and `reset_points` the data and `$context`
    at each top-level task the turn started (kept only the first time, within a budget).
    """

    effects: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    inbox: list[dict[str, Any]] = field(default_factory=list)
    subscriptions: Subscriptions | None = None
    parent_event: dict[str, Any] | None = None
    reset_points: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class CancelLinks:
    """What a cancel must untie, read before it: the parent awaiting the instance (a child
    run) and the stored listen subscription record ('' when none)."""

    parent_id: str
    parent_effect: str
    subscriptions: str


@dataclass(frozen=True)
class HistoryPage:
    """A page of an instance's history: (stream id, event) pairs, and where the next starts."""

    events: list[tuple[str, dict[str, Any]]]
    cursor: str


@dataclass(frozen=True)
class WorkItem:
    """One "instance X needs a turn" entry read from a work stream."""

    partition: int
    entry_id: str
    instance_id: str
    due_ms: int | None = None  # set when a due timer asked for this turn
    slow: bool = False  # read from the slow lane (keys.slow_work)


@dataclass(frozen=True)
class StoreStats:
    """Cluster-wide numbers for the gauges: instances by status and work not yet done."""

    running: int
    waiting: int
    backlog: dict[int, int]  # partition -> work entries not yet acknowledged
    oldest_ms: dict[int, int]  # partition -> when its oldest such entry was written


class Store(Protocol):
    """Durable instance storage; RedisStore is the one implementation."""

    async def ping(self) -> None: ...

    async def ensure_groups(self) -> None: ...

    async def create_instance(
        self,
        new: NewInstance,
        *,
        max_active: int,
        max_per_workflow: int = 0,
        limit_policy: str = "",
        workflow_limit_policy: str = "",
    ) -> bool: ...

    async def signal_with_start(
        self,
        new: NewInstance,
        *,
        signal_id: str,
        event: dict[str, Any],
        now_ms: int,
        max_active: int,
        max_per_workflow: int = 0,
        limit_policy: str = "",
        workflow_limit_policy: str = "",
        expect_status: str | None = None,
    ) -> tuple[bool, bool]: ...

    async def get_instance(self, instance_id: str) -> InstanceRecord | None: ...

    async def instance_workflow(self, instance_id: str) -> str | None:
        """The workflow id of an instance (it never changes); None when there is none."""
        ...

    async def signal(
        self,
        instance_id: str,
        *,
        signal_id: str,
        event: dict[str, Any],
        now_ms: int,
        expect_status: str | None = None,
        expect_workflow: str | None = None,
    ) -> bool: ...

    async def signal_delivered(self, instance_id: str, signal_id: str) -> bool: ...

    async def cancel_links(self, instance_id: str) -> CancelLinks: ...

    async def cancel(
        self,
        instance_id: str,
        *,
        reason: str,
        now_ms: int,
        links: CancelLinks,
        parent_event: dict[str, Any] | None = None,
        expect_status: str | None = None,
        operation: str = "",
    ) -> str | None: ...

    async def children(self, instance_id: str) -> list[str]: ...

    async def suspend(
        self,
        instance_id: str,
        *,
        reason: str,
        now_ms: int,
        expect_status: str | None = None,
        operation: str = "",
    ) -> str: ...

    async def resume(
        self,
        instance_id: str,
        *,
        reason: str,
        now_ms: int,
        expect_status: str | None = None,
        operation: str = "",
    ) -> str: ...

    async def delete(self, instance_id: str, *, operation: str = "") -> None: ...

    async def deleted_by(self, instance_id: str) -> str | None: ...

    async def forget_deleted_by(self, instance_id: str) -> None: ...

    async def retry(
        self,
        instance_id: str,
        *,
        revision: str,
        state: dict[str, Any],
        reason: str,
        task: str,
        now_ms: int,
        operation: str = "",
    ) -> str | None: ...

    async def reset_point(self, instance_id: str, task: str) -> dict[str, Any] | None: ...

    async def reset(
        self,
        instance_id: str,
        *,
        revision: str,
        state: dict[str, Any],
        reason: str,
        task: str,
        previous: str,
        now_ms: int,
    ) -> str | None: ...

    async def query(self, query: QueryFilter) -> QueryPage: ...

    async def count(self, query: QueryFilter) -> int: ...

    async def history(self, instance_id: str, *, after: str, limit: int) -> HistoryPage: ...

    async def load_turn(self, instance_id: str) -> TurnSnapshot | None: ...

    async def commit_turn(self, snapshot: TurnSnapshot, commit: TurnCommit) -> bool: ...

    async def read_work(
        self, consumer: str, *, count: int, block_ms: int, slow: bool = False
    ) -> list[WorkItem]: ...

    async def claim_stale_work(
        self, consumer: str, *, min_idle_ms: int, count: int, slow: bool = False
    ) -> list[WorkItem]: ...

    async def ack_work(self, items: list[WorkItem]) -> None: ...

    async def forward_to_slow_lane(self, items: list[WorkItem]) -> None: ...

    async def mark_slow(self, instance_id: str, now_ms: int) -> None: ...

    async def slow_definitions(self, now_ms: int) -> frozenset[str]: ...

    async def mark_proven(self, workflow_id: str) -> None: ...

    async def proven_definitions(self) -> frozenset[str]: ...

    async def fire_timers(self, now_ms: int, *, limit: int) -> int: ...

    async def stats(self) -> StoreStats: ...

    async def register_definition(
        self, workflow_id: str, content: str, *, workflow_key: str
    ) -> bool: ...

    async def get_definition(self, workflow_id: str) -> str | None: ...

    async def definition_versions(self, workflow_key: str) -> list[str]: ...

    async def list_definition_ids(self) -> list[str]: ...


class ScheduleStore(Protocol):
    """Durable schedules; RedisScheduleStore is the one implementation."""

    async def get(self, schedule_id: str) -> ScheduleRecord | None: ...

    async def save(
        self, record: ScheduleRecord, *, new: bool = False, check_at_ms: int | None
    ) -> int: ...

    async def delete(self, schedule_id: str, *, revision: int) -> int: ...

    async def stored_revision(self, schedule_id: str) -> int | None: ...

    async def drop_due(self, schedule_id: str) -> None: ...

    async def due(self, now_ms: int, *, limit: int) -> list[str]: ...

    async def list_page(self, *, workflow_id: str, limit: int, cursor: str) -> SchedulePage: ...

    async def run_end(self, instance_id: str) -> PreviousRun | None: ...

    async def collect_trigger_event(
        self, workflow_key: str, *, index: int, needed: int, event: dict[str, Any]
    ) -> list[dict[str, Any]] | None: ...


class RetentionStore(Protocol):
    """Purges finished instances; RedisRetentionStore is the one implementation."""

    async def purge_finished(self, *, finished_before_ms: int, limit: int) -> int: ...
