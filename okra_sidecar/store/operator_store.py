"""OperatorStore: suspending, resuming and deleting instances for the WorkflowOperatorAPI."""

from __future__ import annotations

from typing import Any

from okra_sidecar.bulks import verb_event
from okra_sidecar.errors import (
    FailedPreconditionError,
    Reason,
    instance_not_failed,
    instance_not_found,
    instance_status_violation,
)
from okra_sidecar.instances import InstanceStatus
from okra_sidecar.store.connections import StoreConnections
from okra_sidecar.store.jsontext import dumps, loads
from okra_sidecar.store.multiplexed import MultiplexedScript
from okra_sidecar.store.records import INDEX_FIELDS, instance_indexes
from okra_sidecar.store.replies import map_redis_errors, text
from okra_sidecar.store.scripts import load_script

__all__ = ["OperatorStore"]

# purge.lua deletes what finished before its cutoff; Delete takes any finished instance.
ANY_TIME_MS = 2**62
# How long a bulk DELETE's record of an instance it deleted outlives the instance when no
# holder records its outcome (one stopped in between): a holder taking over later than this
# finds the instance gone and skips it, "not found".
DELETED_BY_TTL_MS = 7 * 24 * 3600 * 1000


class OperatorStore(StoreConnections):
    """The operator's writes on one instance, each one script in the instance's slot."""

    _suspend = MultiplexedScript(load_script("suspend"))
    _resume = MultiplexedScript(load_script("resume"))
    _purge = MultiplexedScript(load_script("purge"))
    _retry = MultiplexedScript(load_script("retry"))
    _reset = MultiplexedScript(load_script("reset"))

    async def suspend(
        self,
        instance_id: str,
        *,
        reason: str,
        now_ms: int,
        expect_status: str | None = None,
        operation: str = "",
    ) -> str:
        """Suspend an unfinished instance; its workflow id.

        Raises:
            NotFoundError: no such instance.
            FailedPreconditionError: it has finished, or is suspended already.
            InstanceChangedError: the status is no longer `expect_status`; nothing was written.
        """
        outcome = await self._change_status(
            self._suspend,
            instance_id,
            verb_event("workflow.suspended", now_ms, reason, operation),
            expect_status,
        )
        if outcome[0] == "suspended":
            raise FailedPreconditionError(
                f"instance {instance_id} is suspended already; Resume it to let it go on",
                reason=Reason.INSTANCE_ALREADY_SUSPENDED,
                violation=instance_status_violation(
                    instance_id, "the instance must be pending, running or waiting"
                ),
                metadata={"instance": instance_id},
            )
        self._raise_for(instance_id, outcome, "suspended")
        return outcome[1]

    async def resume(
        self,
        instance_id: str,
        *,
        reason: str,
        now_ms: int,
        expect_status: str | None = None,
        operation: str = "",
    ) -> str:
        """Resume a suspended instance and queue its turn; its workflow id.

        Raises:
            NotFoundError: no such instance.
            FailedPreconditionError: it is not suspended.
            InstanceChangedError: the status is no longer `expect_status`; nothing was written.
        """
        outcome = await self._change_status(
            self._resume,
            instance_id,
            verb_event("workflow.resumed", now_ms, reason, operation),
            expect_status,
        )
        if outcome[0] == "not-suspended":
            raise FailedPreconditionError(
                f"instance {instance_id} is {outcome[1]}, not suspended; only a suspended "
                "instance can be resumed",
                reason=Reason.INSTANCE_NOT_SUSPENDED,
                violation=instance_status_violation(instance_id, "the instance must be suspended"),
                metadata={"instance": instance_id, "status": outcome[1]},
            )
        self._raise_for(instance_id, outcome, "resumed")
        return outcome[1]

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
    ) -> str | None:
        """Run a failed instance again from `state` (built from the state at `revision`); its
        workflow id, or None when the instance changed since that revision (build it again).

        Raises:
            NotFoundError: no such instance.
            FailedPreconditionError: it is not failed (any more).
        """
        event = {**verb_event("workflow.retried", now_ms, reason, operation), "task": task}
        outcome = await self._rewind(self._retry, instance_id, revision, state, event)
        if outcome[0] == "not-failed":
            raise instance_not_failed(instance_id, outcome[1])
        return outcome[1] if outcome[0] == "ok" else None

    async def reset_point(self, instance_id: str, task: str) -> dict[str, Any] | None:
        """The data and `$context` the instance first reached top-level `task` with; None if it
        never reached it, {} if that point outgrew the instance's reset budget (not kept)."""
        with map_redis_errors():
            point = await self.hot.execute("HGET", self.keys.reset_points(instance_id), task)
        if point is None:
            return None
        kept: dict[str, Any] = loads(point) if point else {}
        return kept

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
    ) -> str | None:
        """Take an ended or waiting instance back to `task` with `state` (built from the state
        at `revision`, when its status was `previous`); its workflow id, or None when the
        instance changed since that revision (build it again).

        Raises:
            NotFoundError: no such instance.
            FailedPreconditionError: it is running, pending or suspended (now).
        """
        event = {
            **verb_event("workflow.reset", now_ms, reason, ""),
            "task": task,
            "from": previous,
            # Said in the history itself: a reset runs tasks again, it takes nothing back.
            "note": "what the tasks run since did (calls, events, child runs, signals "
            "consumed) is not undone",
        }
        outcome = await self._rewind(self._reset, instance_id, revision, state, event)
        if outcome[0] == "busy":
            raise _not_resettable(instance_id, outcome[1])
        return outcome[1] if outcome[0] == "ok" else None

    async def _rewind(
        self,
        script: MultiplexedScript,
        instance_id: str,
        revision: str,
        state: dict[str, Any],
        event: dict[str, Any],
    ) -> list[str]:
        """Run retry.lua or reset.lua (same KEYS and ARGV, see their headers): the reply, with
        'moved' when the revision moved and their own refusals left to the caller; a missing
        instance raises, and 'ok' waits for durability."""
        keys = self.keys
        partition = keys.partition(instance_id)
        with map_redis_errors():
            result, waited = await self._durable_write(
                script,
                keys=[
                    keys.instance(instance_id),
                    keys.history(instance_id),
                    keys.work(partition),
                    *keys.status_indexes(partition),
                    keys.index_finished(partition),
                ],
                args=[
                    *(instance_id, event["time"], dumps(event), revision),
                    *(dumps(state), dumps(state.get("context") or {})),
                ],
            )
            outcome = [text(x) for x in result]
            if outcome[0] == "missing":
                raise instance_not_found(instance_id)
            if outcome[0] == "ok":
                self._check_durable(waited)
        return outcome

    async def _change_status(
        self,
        script: MultiplexedScript,
        instance_id: str,
        event: dict[str, Any],
        expect_status: str | None,
    ) -> list[str]:
        """Run suspend.lua or resume.lua (same KEYS and ARGV, see their headers); its reply.

        The instance's work stream is passed to both, so the status indexes start at slot 4.
        """
        keys = self.keys
        partition = keys.partition(instance_id)
        with map_redis_errors():
            result, waited = await self._durable_write(
                script,
                keys=[
                    keys.instance(instance_id),
                    keys.history(instance_id),
                    keys.work(partition),
                    *keys.status_indexes(partition),
                ],
                args=[instance_id, event["time"], dumps(event), expect_status or ""],
            )
            outcome = [text(x) for x in result]
            if outcome[0] == "ok":
                self._check_durable(waited)
        return outcome

    async def delete(self, instance_id: str, *, operation: str = "") -> None:
        """Delete a finished instance: its keys and its member in every index. A bulk
        `operation`'s delete leaves its id under `deleted_by` in the same script, so that a
        holder after a crash can tell the instance it deleted from one someone else did.

        Raises:
            NotFoundError: no such instance.
            FailedPreconditionError: it has not finished (or came back to life meanwhile).
        """
        keys = self.keys
        partition = keys.partition(instance_id)
        with map_redis_errors():
            row = await self.hot.execute("HMGET", keys.instance(instance_id), "ikey", *INDEX_FIELDS)
            member, fields = row[0], row[1:]
            if member is None or fields[1] is None:
                raise instance_not_found(instance_id)
            status = text(fields[1])
            if not InstanceStatus(status).finished:
                raise _not_finished(instance_id, status)
            instance_keys = keys.instance_keys(instance_id)
            script_keys = [
                keys.index_finished(partition),
                *instance_keys,
                *instance_indexes(keys, partition, fields),
            ]
            args: list[Any] = [text(member), ANY_TIME_MS, len(instance_keys)]
            if operation:
                script_keys.append(keys.deleted_by(instance_id))
                args += [operation, DELETED_BY_TTL_MS]
            # purge.lua checks again that it finished: a Retry may have run it meanwhile.
            deleted, waited = await self._durable_write(self._purge, keys=script_keys, args=args)
            if int(deleted) != 1:
                current = await self.hot.execute("HGET", keys.instance(instance_id), "status")
                if current is not None:
                    raise _not_finished(instance_id, text(current))
                # A repeat of a script whose reply was lost finds the instance gone.
                if not operation or await self.deleted_by(instance_id) != operation:
                    raise instance_not_found(instance_id)
            self._check_durable(waited)

    async def deleted_by(self, instance_id: str) -> str | None:
        """The bulk operation that deleted the instance, while its record of it is kept."""
        with map_redis_errors():
            found = await self.hot.execute("GET", self.keys.deleted_by(instance_id))
        return None if found is None else text(found)

    async def forget_deleted_by(self, instance_id: str) -> None:
        """Drop a bulk operation's record of the delete, once its outcome is recorded."""
        with map_redis_errors():
            await self.hot.execute("DEL", self.keys.deleted_by(instance_id))


def _not_finished(instance_id: str, status: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"instance {instance_id} is {status}; only a completed, failed or cancelled instance "
        "can be deleted: cancel it first",
        reason=Reason.INSTANCE_NOT_FINISHED,
        violation=instance_status_violation(
            instance_id, "the instance must be completed, failed or cancelled"
        ),
        metadata={"instance": instance_id, "status": status},
    )


def _not_resettable(instance_id: str, status: str) -> FailedPreconditionError:
    """The error for a Reset of an instance that is neither ended nor waiting."""
    then = "Resume it first" if status == "suspended" else "wait until it waits or ends"
    return FailedPreconditionError(
        f"instance {instance_id} is {status}; only a completed, failed, cancelled or waiting "
        f"instance can be reset: {then}",
        reason=Reason.INSTANCE_NOT_RESETTABLE,
        violation=instance_status_violation(
            instance_id, "the instance must be completed, failed, cancelled or waiting"
        ),
        metadata={"instance": instance_id, "status": status},
    )
