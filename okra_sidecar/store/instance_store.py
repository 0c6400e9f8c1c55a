"""InstanceStore: creating, reading and cancelling instances."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from okra_sidecar.bulks import verb_event
from okra_sidecar.errors import Reason, ResourceExhaustedError, StoreUnavailableError
from okra_sidecar.instances import InstanceRecord, InstanceStatus, NewInstance
from okra_sidecar.store.base import CancelLinks
from okra_sidecar.store.connections import StoreConnections
from okra_sidecar.store.jsontext import dumps
from okra_sidecar.store.limit_store import Admission, RedisLimitStore
from okra_sidecar.store.multiplexed import Arg, MultiplexedScript
from okra_sidecar.store.records import (
    RECORD_FIELDS,
    decode_record,
    index_member,
    subscription_types,
)
from okra_sidecar.store.replies import map_redis_errors, text
from okra_sidecar.store.scripts import load_script

__all__ = ["InstanceStore"]

# create.lua's score for a reservation it hands to the outbox, for the relay to make.
OUTBOX_RESERVATION = ">"
# Workflow ids whose `namespace.name` is kept: every Run of one workflow asks again.
WORKFLOW_KEY_CACHE_SIZE = 1024


class InstanceStore(StoreConnections):
    """Instances' creation (with their admission limits), records and cancellation."""

    _create = MultiplexedScript(load_script("create"))
    _reserve_create = MultiplexedScript(load_script("reserve_create"))
    _cancel = MultiplexedScript(load_script("cancel"))
    _signal_start = MultiplexedScript(load_script("signal_start"))

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
        limits = _Limits(max_active, max_per_workflow, limit_policy, workflow_limit_policy)
        if self.one_node:
            return await self._reserve_and_create(new, limits)
        if not limits.max_active and not limits.max_per_workflow:
            return await self._create_reserving_through_outbox(new)
        admission = await self._admit(new, limits)
        if admission.refused:
            return False  # a retried Run whose instance finished and left its place
        return await self.create_admitted(new, admission)

    async def _reserve_and_create(self, new: NewInstance, limits: _Limits) -> bool:
        """create_instance on one node: the admission and the create in one script
        (reserve_create.lua), one round trip instead of two. A scope no limit has applied to
        yet counts nothing; the first Run a limit applies to counts it (`limits.track`) and
        calls again."""
        reserve_keys, reserve_args = self.limits.reserve_call(
            new.instance_id,
            _workflow_key(new.workflow_id),
            max_active=limits.max_active,
            max_per_workflow=limits.max_per_workflow,
        )
        create_keys, create_args = self._create_call(new, Admission())
        keys = [*reserve_keys, self.keys.limit_tracked(self.keys.scope), *create_keys]
        with map_redis_errors():
            reply, waited = await self._durable_write(
                self._reserve_create, keys=keys, args=[*reserve_args, *create_args]
            )
        admission = self.limits.admission(reply)
        if admission.refused == "untracked":
            await self.limits.track()
            with map_redis_errors():
                reply, waited = await self._durable_write(
                    self._reserve_create, keys=keys, args=[*reserve_args, *create_args]
                )
            admission = self.limits.admission(reply)
        if admission.refused:
            await self._refuse_unless_exists(new, admission.refused, limits)
            return False  # a retried Run whose instance finished and left its place
        created = int(reply[2])
        if created != 1:  # the usual outcome has nothing to settle
            await self._settle_admission(created, new, admission)
        if waited is not None:
            with map_redis_errors():
                self._check_durable(waited)
        return created == 1

    async def _create_reserving_through_outbox(self, new: NewInstance) -> bool:
        """create_instance on a Cluster when no limit applies: nothing can refuse the
        reservation, so create.lua hands it to the partition's outbox (score '>') and the
        relay makes it in the scope's slot, in a batch: one script on the Run's path instead
        of two. It is still made, so that a limit set later counts the instances already
        running (once the relay has applied it, a few milliseconds later)."""
        keys, args = self._create_call(new, Admission(score=OUTBOX_RESERVATION))
        with map_redis_errors():
            created, waited = await self._durable_write(self._create, keys=keys, args=args)
            self._check_durable(waited)
        return int(created) == 1

    async def _admit(self, new: NewInstance, limits: _Limits) -> Admission:
        """Reserve `new`'s place in the limit scope's slot, before it is created in its own;
        a refused admission (no score) when a limit refused it but the instance exists.

        Raises:
            ResourceExhaustedError: a limit refused it and there is no such instance.
        """
        if self.one_node and (limits.max_active or limits.max_per_workflow):
            # reserve.lua counts only what is reserved: the scope must count every Run first.
            await self.limits.track()
        admission = await self.limits.reserve(
            new.instance_id,
            _workflow_key(new.workflow_id),
            max_active=limits.max_active,
            max_per_workflow=limits.max_per_workflow,
        )
        if admission.refused:
            await self._refuse_unless_exists(new, admission.refused, limits)
        return admission

    async def _refuse_unless_exists(self, new: NewInstance, refused: str, limits: _Limits) -> None:
        """A limit refused `new`: raise its error, unless the instance exists (a retried Run).

        Raises:
            ResourceExhaustedError: there is no such instance.
        """
        if not await self._exists(new.instance_id):
            raise _limit_reached(refused, _workflow_key(new.workflow_id), limits)

    async def create_admitted(self, new: NewInstance, admission: Admission) -> bool:
        """create_instance's second step: create the instance `admission` (from
        `limits.reserve`) admitted; False if the id exists.

        Raises:
            StoreUnavailableError: the reconciler gave the admission up meanwhile (the step
                came seconds late); nothing was written, and a retried Run is admitted again.
        """
        keys, args = self._create_call(new, admission)
        with map_redis_errors():
            created, waited = await self._durable_write(self._create, keys=keys, args=args)
        await self._settle_admission(int(created), new, admission)
        with map_redis_errors():
            self._check_durable(waited)
        return int(created) == 1

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
    ) -> tuple[bool, bool]:
        """Create `new` unless it exists, then deliver the signal to it, in one step (after
        its admission, as for create_instance).

        Returns whether this call created it and whether `signal_id` was delivered before.

        Raises:
            ResourceExhaustedError: a limit refused the create; nothing was written.
            FailedPreconditionError: the instance exists and has finished.
            InstanceChangedError: the status is no longer `expect_status`; nothing was written.
        """
        iid = new.instance_id
        limits = _Limits(max_active, max_per_workflow, limit_policy, workflow_limit_policy)
        admission = await self._admit(new, limits)
        # Refused but existing: create.lua creates nothing without a score (-4), only the
        # signal is left to deliver.
        create_keys, create_args = self._create_call(new, admission)
        with map_redis_errors():
            result, waited = await self._durable_write(
                self._signal_start,
                keys=[self.keys.inbox(iid), self.keys.signal_ids(iid), *create_keys],
                args=[
                    len(create_args),
                    *create_args,
                    *(iid, signal_id, dumps(event), now_ms, expect_status or ""),
                ],
            )
        created = int(result[0])
        if created == -4:  # the instance went (purged) since it was found
            raise _limit_reached(admission.refused, _workflow_key(new.workflow_id), limits)
        await self._settle_admission(created, new, admission)
        with map_redis_errors():
            outcome = [text(x) for x in result[1:]]
            self._raise_for(iid, outcome, "signal")
            self._check_durable(waited)
        return created == 1, outcome[0] == "duplicate"

    def _create_call(self, new: NewInstance, admission: Admission) -> tuple[list[str], list[Arg]]:
        """create.lua's KEYS and ARGV for `new`, admitted by `admission`."""
        keys = self.keys
        member = index_member(new.created_us, new.instance_id)
        partition = keys.partition(new.instance_id)
        index_keys = [
            keys.index_all(partition),
            keys.index_workflow(partition, new.workflow_id),
            keys.index_status(partition, InstanceStatus.PENDING),
        ]
        if new.correlation_id:
            index_keys.append(keys.index_correlation(partition, new.correlation_id))
        index_keys.extend(keys.index_tag(partition, k, v) for k, v in new.tags.items())
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
        if new.step_timeout_source:
            fields += ["stsrc", new.step_timeout_source]
        if new.owner:
            fields += ["owner", dumps(new.owner)]
        if new.parent is None and new.ancestors:
            fields += ["anc", dumps(list(new.ancestors))]
        event = dumps({"type": "workflow.created", "time": new.created_ms})
        if new.parent is not None:
            parent = new.parent
            fields += ["parent", parent.instance_id, "peffect", parent.effect_id]
            fields += ["anc", dumps(list(parent.ancestors))]
            index_keys.append(keys.index_parent(partition, parent.instance_id))
        script_keys = [
            keys.instance(new.instance_id),
            keys.history(new.instance_id),
            keys.work(partition),
            keys.voided(new.instance_id),
            keys.outbox(partition),
            *index_keys,
        ]
        args: list[Arg] = [
            *(new.instance_id, member, admission.score, event),
            *(keys.scope, _workflow_key(new.workflow_id)),
            *fields,
        ]
        return script_keys, args

    async def _settle_admission(self, created: int, new: NewInstance, admission: Admission) -> None:
        """After create.lua: refuse a lapsed admission, give back one a finished instance
        made needless."""
        if created == -3:
            raise StoreUnavailableError(
                f"the admission of instance {new.instance_id} lapsed before it was created; "
                "retry the call",
                reason=Reason.REDIS_UNAVAILABLE,
            )
        if created == 2 and admission.fresh:
            # A retried Run of an instance that has finished and left its place: give back
            # the one this call took.
            await self.limits.release(
                new.instance_id,
                self.keys.scope,
                _workflow_key(new.workflow_id),
                score=admission.score,
            )

    @cached_property
    def limits(self) -> RedisLimitStore:
        """The limit sets, on the same connections."""
        return RedisLimitStore(redis=self.redis, keys=self.keys, hot=self.hot)

    async def _exists(self, instance_id: str) -> bool:
        with map_redis_errors():
            return int(await self.hot.execute("EXISTS", self.keys.instance(instance_id))) == 1

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        with map_redis_errors():
            values = await self.hot.execute(
                "HMGET", self.keys.instance(instance_id), *RECORD_FIELDS
            )
        return decode_record(instance_id, values)

    async def instance_workflow(self, instance_id: str) -> str | None:
        """The workflow id alone: one field, not the record's JSON (a Signal's schema)."""
        with map_redis_errors():
            workflow_id = await self.hot.execute("HGET", self.keys.instance(instance_id), "wf")
        return None if workflow_id is None else text(workflow_id)

    async def cancel_links(self, instance_id: str) -> CancelLinks:
        """What a cancel must untie: the listen subscriptions and the parent awaiting it."""
        with map_redis_errors():
            subs, parent, peffect = await self.hot.execute(
                "HMGET", self.keys.instance(instance_id), "subs", "parent", "peffect"
            )
        return CancelLinks(text(parent), text(peffect), text(subs))

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
    ) -> str | None:
        """Cancel one unfinished instance; its workflow id, or None if its `links` (read by
        `cancel_links`) moved meanwhile and nothing was written. `parent_event` goes to the
        parent's inbox in the same step; a bulk `operation` is named in the history event.

        Raises:
            InstanceChangedError: the status is no longer `expect_status`; nothing was written.
        """
        keys = self.keys
        event = dumps(verb_event("workflow.cancelled", now_ms, reason, operation))
        partition = keys.partition(instance_id)
        base = [
            keys.instance(instance_id),
            keys.history(instance_id),
            keys.timers(partition),
            keys.outbox(partition),
            *keys.status_indexes(partition),
            keys.index_finished(partition),
        ]
        extra_keys = [
            keys.subscribers(partition, t) for t in subscription_types(links.subscriptions)
        ]
        slot = len(base) + 1
        extras: dict[str, Any] = {
            "subs": {
                "record": links.subscriptions,
                "old": list(range(slot, slot + len(extra_keys))),
                "new": [],
            }
        }
        if links.parent_id and parent_event is not None:
            extras["parent"] = {
                "id": links.parent_id,
                "dedup": parent_event["id"],
                "event": dumps(parent_event),
            }
        with map_redis_errors():
            result, waited = await self._durable_write(
                self._cancel,
                keys=[*base, *extra_keys],
                args=[instance_id, reason, now_ms, event, expect_status or "", dumps(extras)],
            )
            outcome = [text(x) for x in result]
            if outcome[0] == "retry":
                return None
            self._raise_for(instance_id, outcome, "cancelled")
            self._check_durable(waited)
        if len(outcome) > 2:
            # The outbox releases it too; releasing now frees the place before Cancel returns.
            await self.limits.release(instance_id, outcome[2], outcome[3])
        return outcome[1]

    async def children(self, instance_id: str) -> list[str]:
        """The child runs an instance started, in id order (from every partition's index)."""
        keys = self.keys
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for partition in range(keys.partitions):
                    pipe.zrange(keys.index_parent(partition, instance_id), 0, -1)
                per_partition: list[list[bytes]] = await pipe.execute()
        return sorted(text(m).split(":", 1)[1] for members in per_partition for m in members)


@dataclass(frozen=True)
class _Limits:
    """The instance limits a create is admitted against, and the policies that set them."""

    max_active: int
    max_per_workflow: int
    policy: str
    workflow_policy: str


def _limit_reached(refused: str, workflow_key: str, limits: _Limits) -> ResourceExhaustedError:
    if refused == "active":
        source = f" ({limits.policy})" if limits.policy else ""
        return ResourceExhaustedError(
            f"the limit of {limits.max_active} concurrent instances{source} is reached; "
            "retry when some have finished",
            reason=Reason.INSTANCE_LIMIT_REACHED,
            policy=limits.policy,
        )
    source = f" ({limits.workflow_policy})" if limits.workflow_policy else ""
    return ResourceExhaustedError(
        f"the limit of {limits.max_per_workflow} concurrent instances of {workflow_key}"
        f"{source} is reached; retry when some have finished",
        reason=Reason.INSTANCE_LIMIT_REACHED,
        policy=limits.workflow_policy,
        metadata={"workflow": workflow_key},
    )


@lru_cache(maxsize=WORKFLOW_KEY_CACHE_SIZE)
def _workflow_key(workflow_id: str) -> str:
    """`namespace.name`: what maxInstancesPerWorkflow counts, every version together."""
    return ".".join(workflow_id.split(".")[:2])
