"""BulkRunner: carries bulk operations on in the background, on whichever sidecar holds the lease.

Every sidecar looks at the running operations every `poll_s`; one takes an operation's lease
and acts on its instances in the order they matched, renewing the lease with each claim. An
instance is claimed (`pending`) before it is acted on and recorded after, in the operation's
own keys, so that each is acted on once: when a holder stops between the two, the next holder
acts on its pending instance again, and every action takes effect once however often it is
applied (a signal is sent under an id derived from the operation, so a repeat is a duplicate;
a cancel, suspend, resume, retry or delete that already happened is refused by the instance's
status, and a pending instance found that way counts as done when it shows that this
operation did it, below).

Each instance is decided by the policies before it is acted on, as the action's own rpc by the
operation's caller would be (policy/bulk_items.py); one they refuse is skipped, "denied by
policy", and not touched. The action is applied only while the instance has the status the
policies decided on; when it moved, they decide again.

An operation an earlier version started kept no caller. While a policy set is in force, its
instances cannot be decided as its caller's own calls, so the rest are skipped, "caller
unknown", and not touched (start it again to go on); with no policy set, no decision depends
on the caller and it goes on.

A bulk SIGNAL's payload is checked against the schema each instance's own workflow declares
for the signal (versions may declare different ones); an instance whose schema refuses it is
skipped, "input_schema_mismatch: <workflow id>". The workflow comes with the instance's claim,
kept when the operation matched it, so no instance is read for it; the signal is written only
while the instance runs that workflow (signal.lua), and one that runs another is read and
checked afresh.

After a crash, a pending instance is counted once, by what it shows: a cancel, suspend, resume
or retry names the operation in the history event it writes, a signal's id is among those the
instance was given, a delete leaves the operation's id under the instance's `deleted_by` (the
instance has no history left; the holder forgets it once the outcome is recorded); one that
shows nothing is decided and acted on as a new one (one that someone else cancelled or deleted
meanwhile is then skipped, as it would have been without the crash).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from okra_sidecar.bulks import (
    BULK_OPERATION_FIELD,
    BulkAction,
    BulkRecord,
    BulkSpec,
    BulkState,
    ItemOutcome,
)
from okra_sidecar.engine.interpreter.effects import signal_event
from okra_sidecar.engine.runtime.cancelling import cancel_instance
from okra_sidecar.engine.runtime.registry import WorkflowRegistry
from okra_sidecar.engine.runtime.retrying import retry_instance
from okra_sidecar.errors import (
    FailedPreconditionError,
    InstanceChangedError,
    NotFoundError,
    OkraError,
    PolicyDeniedError,
    Reason,
    ResourceExhaustedError,
    StoreUnavailableError,
    instance_not_found,
)
from okra_sidecar.instances import InstanceRecord
from okra_sidecar.store.base import Store, WorkflowMismatchError
from okra_sidecar.store.bulk_store import Claim, ClaimResult, RedisBulkStore
from okra_sidecar.tasks import cancel_and_wait

__all__ = [
    "CALLER_UNKNOWN",
    "DENIED_BY_POLICY",
    "BulkItemAuthorizer",
    "BulkRunner",
    "bulk_signal_id",
]

logger = logging.getLogger(__name__)

# Instance ids read from the operation's list at a time.
PAGE = 100
# The history event an action writes, naming the operation (BULK_OPERATION_FIELD).
ACTED_EVENT = {
    BulkAction.CANCEL: "workflow.cancelled",
    BulkAction.SUSPEND: "workflow.suspended",
    BulkAction.RESUME: "workflow.resumed",
    BulkAction.RETRY: "workflow.retried",
}
# History events read at a time, and at most, looking for that event after a crash.
HISTORY_PAGE = 500
MAX_HISTORY_PAGES = 200


# GetBulkOperation's reason for an instance the policies refused.
DENIED_BY_POLICY = "denied by policy"
# ... and for every instance of an operation that kept no caller, while policies are in force.
CALLER_UNKNOWN = (
    "caller unknown: an earlier version started this operation and kept no caller; start it again"
)
# A status the policies decided on may move under a signal or a commit; decide again this often.
MAX_DECISIONS = 3
# Waits for a shared rate limit (a bulk SIGNAL spends the signal rate) before an instance fails.
MAX_RATE_WAITS = 5


class BulkItemAuthorizer(Protocol):
    """Decides one instance of a bulk operation as the action's own rpc (policy/bulk_items.py).

    Raises PolicyDeniedError to refuse it, ResourceExhaustedError when a rate limit holds it.
    """

    def needs_instance(self, spec: BulkSpec) -> bool: ...

    def knows_caller(self, spec: BulkSpec) -> bool:
        """Whether the instances can be decided as the operation's caller's own calls."""
        ...

    async def __call__(
        self,
        *,
        operation_id: str,
        spec: BulkSpec,
        instance_id: str,
        instance: InstanceRecord | None,
    ) -> None: ...


def bulk_signal_id(operation_id: str, instance_id: str) -> str:
    """The signal id a bulk SIGNAL uses: the same on every try, so the inbox takes it once."""
    return f"bulk:{operation_id}:{instance_id}"


class BulkRunner:
    """One per sidecar; `owner` names it in the leases it takes."""

    def __init__(
        self,
        *,
        store: Store,
        bulks: RedisBulkStore,
        owner: str = "",
        poll_s: float = 0.5,
        lease_ms: int = 3000,
        clock: Callable[[], int] | None = None,
        authorize: BulkItemAuthorizer | None = None,
        registry: WorkflowRegistry | None = None,
    ) -> None:
        self._store = store
        self._registry = registry or WorkflowRegistry(store=store)
        self._authorize = authorize
        self._bulks = bulks
        self.owner = owner or f"bulk-{uuid.uuid4().hex[:12]}"
        self._poll_s = poll_s
        self._lease_ms = lease_ms
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="bulk-runner")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                for operation_id in await self._bulks.running():
                    await self.run_once(operation_id)
            except StoreUnavailableError as exc:
                logger.warning("bulk operations wait for Redis: %s", exc)
            except Exception:
                logger.exception("bulk runner failed; it tries again")
            await asyncio.sleep(self._poll_s)

    async def run_once(self, operation_id: str) -> bool:
        """Take the operation's lease if it is free and work on it until it ends or the lease
        is lost; False when another sidecar holds it."""
        now = self._clock()
        if not await self._bulks.take_lease(
            operation_id, self.owner, now_ms=now, lease_ms=self._lease_ms
        ):
            return False
        record = await self._bulks.get(operation_id)
        if record is None or record.state is not BulkState.RUNNING:
            return True
        await self._work(record)
        return True

    async def _work(self, record: BulkRecord) -> None:
        operation_id = record.operation_id
        interval_s = 1 / record.spec.max_per_second if record.spec.max_per_second else 0.0
        cursor = record.cursor
        while cursor < record.matched:
            page = await self._bulks.instance_ids(operation_id, cursor, PAGE)
            if not page:
                return
            for instance_id in page:
                started = time.monotonic()
                claim = await self._bulks.claim(
                    operation_id,
                    self.owner,
                    instance_id,
                    now_ms=self._clock(),
                    lease_ms=self._lease_ms,
                )
                if claim.result in (ClaimResult.LOST, ClaimResult.STOPPED):
                    return
                outcome, why = ItemOutcome.DONE, ""
                if claim.result != ClaimResult.ACTED:
                    outcome, why = await self._act(record, instance_id, claim)
                cursor += 1
                if not await self._bulks.record(
                    operation_id,
                    self.owner,
                    instance_id,
                    outcome=outcome,
                    why=why,
                    next_cursor=cursor,
                    now_ms=self._clock(),
                ):
                    return
                if record.spec.action is BulkAction.DELETE and outcome is ItemOutcome.DONE:
                    await self._store.forget_deleted_by(instance_id)
                if interval_s:
                    await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))

    async def _act(
        self, record: BulkRecord, instance_id: str, claim: Claim
    ) -> tuple[ItemOutcome, str]:
        """Apply the action to one instance: its outcome and, unless done, why."""
        if claim.result == ClaimResult.AGAIN and await self._acted_already(record, instance_id):
            return ItemOutcome.DONE, ""
        if self._authorize is not None and not self._authorize.knows_caller(record.spec):
            return ItemOutcome.SKIPPED, CALLER_UNKNOWN
        try:
            try:
                refused = await self._checked_and_decided(record, instance_id, claim.workflow)
            except WorkflowMismatchError:
                # It runs another workflow than the one kept: check that one's schema.
                refused = await self._checked_and_decided(record, instance_id, "")
            if refused:
                return ItemOutcome.SKIPPED, refused
        except StoreUnavailableError:
            raise  # the instance stays pending; whoever holds the lease next acts again
        except PolicyDeniedError:
            return ItemOutcome.SKIPPED, DENIED_BY_POLICY
        except NotFoundError:
            return ItemOutcome.SKIPPED, "not found"
        except FailedPreconditionError as exc:
            return ItemOutcome.SKIPPED, _skip_reason(exc)
        except OkraError as exc:
            logger.warning("bulk %s on %s failed: %s", record.spec.action, instance_id, exc)
            return ItemOutcome.FAILED, exc.reason.value
        return ItemOutcome.DONE, ""

    async def _checked_and_decided(
        self, record: BulkRecord, instance_id: str, workflow_id: str
    ) -> str:
        """Check a bulk SIGNAL's payload against `workflow_id` (read from the instance when
        '') and, if it fits, decide and act on the instance; why its schema refused it, or ''.

        Raises:
            WorkflowMismatchError: the instance does not run `workflow_id`; nothing written.
        """
        spec = record.spec
        if spec.action is BulkAction.SIGNAL:
            workflow_id = workflow_id or await self._workflow_of(instance_id)
            definition = (await self._registry.get(workflow_id)).definition
            schema = definition.signal_payloads.get(spec.signal)
            if schema is not None and schema.problem(spec.payload) is not None:
                return f"{Reason.INPUT_SCHEMA_MISMATCH.value.lower()}: {workflow_id}"
        await self._decided(record, instance_id, workflow_id or None)
        return ""

    async def _workflow_of(self, instance_id: str) -> str:
        workflow_id = await self._store.instance_workflow(instance_id)
        if workflow_id is None:
            raise instance_not_found(instance_id)
        return workflow_id

    async def _decided(self, record: BulkRecord, instance_id: str, workflow_id: str | None) -> Any:
        """Decide the instance, then apply the action while it still has the status decided on
        (and, for a signal, runs `workflow_id`, whose schema took the payload)."""
        for attempt in range(1, MAX_DECISIONS + 1):
            expected = await self._authorized(record, instance_id)
            try:
                return await self._apply(record, instance_id, expected, workflow_id)
            except InstanceChangedError:
                if attempt == MAX_DECISIONS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _authorized(self, record: BulkRecord, instance_id: str) -> str | None:
        """The status the policies allowed the action on (None: they did not read it)."""
        authorize = self._authorize
        if authorize is None:
            return None
        instance = None
        if authorize.needs_instance(record.spec):
            instance = await self._store.get_instance(instance_id)
            if instance is None:
                raise instance_not_found(instance_id)
        # A rate limit is waited out while the lease lasts; then the instance fails.
        longest_wait_s = self._lease_ms / 2000
        for attempt in range(1, MAX_RATE_WAITS + 1):
            try:
                await authorize(
                    operation_id=record.operation_id,
                    spec=record.spec,
                    instance_id=instance_id,
                    instance=instance,
                )
            except ResourceExhaustedError as exc:
                wait_s = exc.retry_after_s
                if attempt == MAX_RATE_WAITS or wait_s is None or wait_s > longest_wait_s:
                    raise
                await asyncio.sleep(wait_s)
                continue
            return instance.status.value if instance is not None else None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _acted_already(self, record: BulkRecord, instance_id: str) -> bool:
        """Whether a pending instance shows the action taken by the holder before a crash."""
        action = record.spec.action
        event_type = ACTED_EVENT.get(action)
        if event_type is not None:
            return await self._history_names(instance_id, event_type, record.operation_id)
        if action is BulkAction.SIGNAL:
            signal_id = bulk_signal_id(record.operation_id, instance_id)
            return await self._store.signal_delivered(instance_id, signal_id)
        if action is BulkAction.DELETE:
            return await self._store.deleted_by(instance_id) == record.operation_id
        return False

    async def _history_names(self, instance_id: str, event_type: str, operation_id: str) -> bool:
        """Whether the instance's history holds `event_type` written by the operation."""
        cursor = ""
        for _ in range(MAX_HISTORY_PAGES):
            try:
                page = await self._store.history(instance_id, after=cursor, limit=HISTORY_PAGE)
            except NotFoundError:
                return False
            for _, event in page.events:
                if (
                    event.get("type") == event_type
                    and event.get(BULK_OPERATION_FIELD) == operation_id
                ):
                    return True
            if not page.cursor:
                return False
            cursor = page.cursor
        return False

    async def _apply(
        self,
        record: BulkRecord,
        instance_id: str,
        expected: str | None,
        workflow_id: str | None = None,
    ) -> Any:
        spec = record.spec
        now = self._clock()
        store = self._store
        action = spec.action
        operation = record.operation_id
        if action is BulkAction.CANCEL:
            return await cancel_instance(
                store,
                instance_id,
                reason=spec.reason,
                now_ms=now,
                expect_status=expected,
                operation=operation,
            )
        if action is BulkAction.SUSPEND:
            return await store.suspend(
                instance_id,
                reason=spec.reason,
                now_ms=now,
                expect_status=expected,
                operation=operation,
            )
        if action is BulkAction.RESUME:
            return await store.resume(
                instance_id,
                reason=spec.reason,
                now_ms=now,
                expect_status=expected,
                operation=operation,
            )
        if action is BulkAction.RETRY:
            return await retry_instance(
                store, instance_id, reason=spec.reason, now_ms=now, operation=operation
            )
        if action is BulkAction.DELETE:
            return await store.delete(instance_id, operation=operation)
        signal_id = bulk_signal_id(record.operation_id, instance_id)
        return await store.signal(
            instance_id,
            signal_id=signal_id,
            event=signal_event(spec.signal, spec.payload, signal_id=signal_id, sent_ms=now),
            now_ms=now,
            expect_status=expected,
            expect_workflow=workflow_id,
        )


def _skip_reason(exc: OkraError) -> str:
    """A short reason for GetBulkOperation's tally: the status that refused the action."""
    status = exc.metadata.get("status")
    if status:
        return f"{exc.reason.value.lower()}: {status}"
    return exc.reason.value.lower()
