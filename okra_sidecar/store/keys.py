"""Every Redis key, stream and group name the sidecar uses, in one place."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property

from okra_sidecar.instances import InstanceStatus

# The store layout these names describe; see store/layout.py.
LAYOUT_VERSION = 4

ENGINE_GROUP = "engine"
# Effects are read by every sidecar's executors, events by every sidecar's router, worker
# tasks by the workers polling a service's stream: one consumer group each.
EXECUTOR_GROUP = "executors"
ROUTER_GROUP = "router"
WORKER_GROUP = "workers"
# A worker task's field for how many times it was handed out before `migrate` moved it to a
# new entry (whose own delivery count starts again at 1).
TASK_DELIVERED_FIELD = "n"
# Outbox entries are applied by every sidecar's relay: one consumer group.
RELAY_GROUP = "relay"


@dataclass(frozen=True)
class RedisKeys:
    """Key names under one prefix, in store layout LAYOUT_VERSION.

    The instances are spread over `partitions` partitions (`crc32(id) % partitions`), each with
    its own Redis Cluster hash tag (`okra:{p3}:...`). An instance's keys and its partition's
    work, timers, effects and indexes share that tag, so a script that touches one instance
    and its partition touches one slot. The prefix lets tests and tenants share one Redis.
    """

    prefix: str = "okra:"
    partitions: int = 8
    # The service namespace (serviceNamespace) whose instance limits this sidecar counts.
    scope: str = ""

    def partition(self, instance_id: str) -> int:
        return zlib.crc32(instance_id.encode()) % self.partitions

    def tag(self, partition: int) -> str:
        """The key prefix of one partition, its hash tag included."""
        return f"{self.prefix}{{p{partition}}}"

    def instance(self, instance_id: str) -> str:
        return self.instance_in(self.partition(instance_id), instance_id)

    def instance_in(self, partition: int, instance_id: str) -> str:
        """`instance`, its partition known: an engine turn works it out once, not per key."""
        return f"{self.prefix}{{p{partition}}}:{instance_id}"

    def history(self, instance_id: str) -> str:
        return history_of(self.instance(instance_id))

    def inbox(self, instance_id: str) -> str:
        return inbox_of(self.instance(instance_id))

    def signal_ids(self, instance_id: str) -> str:
        return f"{self.instance(instance_id)}:signal-ids"

    def delivered(self, instance_id: str) -> str:
        """Ids of effect results and routed events already put in the inbox (de-duplication)."""
        return f"{self.instance(instance_id)}:delivered"

    def reset_points(self, instance_id: str) -> str:
        """Top-level task pointer -> the data and `$context` the instance first reached it
        with (JSON), what Reset goes back to; field `bytes` counts what they take."""
        return reset_points_of(self.instance(instance_id))

    def changes(self, instance_id: str) -> str:
        """The pub/sub channel the scripts that change an instance announce it on (lib.lua's
        `announce` derives the same name from the instance key)."""
        return f"{self.instance(instance_id)}:changes"

    def deleted_by(self, instance_id: str) -> str:
        """The bulk operation that deleted the instance, written by the delete's own script
        and outliving the instance's keys: what a holder after a crash looks for
        (engine/runtime/bulk.py); it forgets it once the outcome is recorded."""
        return f"{self.instance(instance_id)}:deleted-by"

    def instance_keys(self, instance_id: str) -> list[str]:
        """Every key of one instance, as retention deletes them."""
        return [
            self.instance(instance_id),
            self.history(instance_id),
            self.inbox(instance_id),
            self.signal_ids(instance_id),
            self.delivered(instance_id),
            self.reset_points(instance_id),
        ]

    def delivery_keys(self, instance_id: str) -> list[str]:
        """The keys lib.lua's deliver() takes, in its order."""
        return [
            self.instance(instance_id),
            self.inbox(instance_id),
            self.delivered(instance_id),
            self.work(self.partition(instance_id)),
        ]

    def effects(self, partition: int) -> str:
        return f"{self.tag(partition)}:effects"

    def all_effects(self) -> list[str]:
        return [self.effects(p) for p in range(self.partitions)]

    def outbox(self, partition: int) -> str:
        """What a partition's scripts hand to other slots (store/outbox_store.py)."""
        return f"{self.tag(partition)}:outbox"

    def all_outboxes(self) -> list[str]:
        return [self.outbox(p) for p in range(self.partitions)]

    def consumer(self, name: str) -> str:
        """A stream consumer's heartbeat (store/liveness.py): present while it is alive."""
        return f"{self.prefix}consumer:{name}"

    def tasks(self, service: str, partition: int) -> str:
        """A service's worker tasks of one partition's instances, in the partition's slot:
        enqueue_task and complete_task then touch one slot."""
        return f"{self.tag(partition)}:tasks:{service}"

    def all_tasks(self, service: str) -> list[str]:
        return [self.tasks(service, p) for p in range(self.partitions)]

    @property
    def secret(self) -> str:
        """The signing key every sidecar of this Redis shares (leases, causation)."""
        return f"{self.prefix}secret"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    def subscribers(self, partition: int, event_type: str) -> str:
        """A partition's instances whose listen waits for events of this type ('' for filters
        without one)."""
        return f"{self.tag(partition)}:subs:{event_type}"

    def work(self, partition: int) -> str:
        return f"{self.tag(partition)}:work"

    def timers(self, partition: int) -> str:
        return f"{self.tag(partition)}:timers"

    def all_work(self) -> list[str]:
        return [self.work(p) for p in range(self.partitions)]

    def slow_work(self, partition: int) -> str:
        """A partition's slow lane: turns of instances whose expressions ran long, taken only
        by the engine process kept for them (engine/processes.py)."""
        return f"{self.tag(partition)}:slowwork"

    def all_slow_work(self) -> list[str]:
        return [self.slow_work(p) for p in range(self.partitions)]

    @property
    def slow_definitions(self) -> str:
        """Workflow ids whose instances all go to the slow lane, scored by when one was moved."""
        return f"{self.prefix}slowdefs"

    @property
    def proven_definitions(self) -> str:
        """Workflow ids whose turns proved fast in the slow lane (engine/runtime/probation.py):
        the regular engine processes take their turns; they forward every other workflow's."""
        return f"{self.prefix}fastdefs"

    def lane(self, partition: int, *, slow: bool) -> str:
        """The work stream of one partition, in the slow lane or the regular one."""
        return self.slow_work(partition) if slow else self.work(partition)

    def all_timers(self) -> list[str]:
        return [self.timers(p) for p in range(self.partitions)]

    @property
    def definitions(self) -> str:
        return f"{self.prefix}definitions"

    def definition_versions(self, workflow_key: str) -> str:
        return f"{self.prefix}definitions:versions:{workflow_key}"

    def limit_tag(self, scope: str) -> str:
        """The key prefix of one scope's limit sets, its own hash tag included: a Run's
        admission touches only this slot."""
        return f"{self.prefix}limits:{{ns:{scope}}}"

    def limit_active(self, scope: str) -> str:
        """The ids admitted and not yet released in one scope, scored by when they were
        reserved (µs), for `maxConcurrentInstances`."""
        return f"{self.limit_tag(scope)}:active"

    def limit_workflow(self, scope: str, workflow_key: str) -> str:
        """The same for one workflow (`namespace.name`, every version), for
        `maxInstancesPerWorkflow`."""
        return f"{self.limit_tag(scope)}:wf:{workflow_key}"

    def limit_held(self, scope: str) -> str:
        """Admitted id -> the workflow key whose set also holds it."""
        return f"{self.limit_tag(scope)}:held"

    def limit_tracked(self, scope: str) -> str:
        """Set once the scope counts its instances (a limit applied to one of its Runs); on a
        single Redis, until then, a Run no limit applies to is created uncounted."""
        return f"{self.limit_tag(scope)}:tracked"

    def voided(self, instance_id: str) -> str:
        """A lapsed reservation's time, in the instance's slot: a create that comes after the
        reconciler gave its reservation up is refused (store/limit_store.py)."""
        return f"{self.instance(instance_id)}:voided"

    @property
    def policies(self) -> str:
        return f"{self.prefix}policies"

    @property
    def policy_channel(self) -> str:
        return f"{self.prefix}policies:changed"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit"

    def rate_limit(self, name: str) -> str:
        return f"{self.prefix}ratelimit:{name}"

    def index_all(self, partition: int) -> str:
        return f"{self.tag(partition)}:idx:all"

    def index_workflow(self, partition: int, workflow_id: str) -> str:
        return f"{self.tag(partition)}:idx:wf:{workflow_id}"

    def index_status(self, partition: int, status: InstanceStatus) -> str:
        return f"{self.tag(partition)}:idx:status:{status.value}"

    def index_correlation(self, partition: int, correlation_id: str) -> str:
        return f"{self.tag(partition)}:idx:corr:{correlation_id}"

    def index_tag(self, partition: int, name: str, value: str) -> str:
        # The name's length keeps `a=b=c` unambiguous whichever side holds the `=`.
        return f"{self.tag(partition)}:idx:tag:{len(name)}:{name}={value}"

    def commit_keys(self, partition: int) -> tuple[str, ...]:
        """The partition's keys every engine commit passes after the instance's own (commit.lua
        KEYS[4..]): work, timers, outbox, each status index, finished. Built once per partition."""
        return self._commit_keys[partition]

    @cached_property
    def _commit_keys(self) -> tuple[tuple[str, ...], ...]:
        return tuple(
            (
                self.work(p),
                self.timers(p),
                self.outbox(p),
                *self.status_indexes(p),
                self.index_finished(p),
            )
            for p in range(self.partitions)
        )

    def status_indexes(self, partition: int) -> tuple[str, ...]:
        # Every engine commit passes all of them: built once per partition, not per turn.
        return self._status_indexes[partition]

    @cached_property
    def _status_indexes(self) -> tuple[tuple[str, ...], ...]:
        return tuple(
            tuple(self.index_status(p, s) for s in InstanceStatus) for p in range(self.partitions)
        )

    def index_parent(self, partition: int, parent_id: str) -> str:
        """A partition's child runs of one parent: what Cancel cascades to."""
        return f"{self.tag(partition)}:idx:parent:{parent_id}"

    def index_finished(self, partition: int) -> str:
        """Finished instances scored by when they finished: what retention purges from."""
        return f"{self.tag(partition)}:idx:finished"

    @property
    def layout(self) -> str:
        """The store's layout version and partition count, written when it is first used."""
        return f"{self.prefix}layout"

    # Schedules, and bulk operations, each share one hash tag: their scripts keep a record
    # and the sets listing it in step, in one slot. Neither is on a hot path.

    def schedule(self, schedule_id: str) -> str:
        return f"{self.prefix}{{schedules}}:s:{schedule_id}"

    @property
    def schedules_all(self) -> str:
        """Every schedule id (score 0, ordered by id) for ListSchedules."""
        return f"{self.prefix}{{schedules}}:all"

    @property
    def schedules_due(self) -> str:
        """Schedule ids scored by when a scheduler must next look at them."""
        return f"{self.prefix}{{schedules}}:due"

    def bulk(self, operation_id: str) -> str:
        """One bulk operation: its spec, state, counters, cursor and lease."""
        return f"{self.prefix}{{bulks}}:op:{operation_id}"

    def bulk_ids(self, operation_id: str) -> str:
        """The instance ids a bulk operation matched when it started, in the order it acts."""
        return f"{self.bulk(operation_id)}:ids"

    def bulk_items(self, operation_id: str) -> str:
        """Instance id -> what a bulk operation did to it (`pending` while it acts)."""
        return f"{self.bulk(operation_id)}:items"

    def bulk_workflows(self, operation_id: str) -> str:
        """Instance id -> the workflow it ran when a bulk SIGNAL matched it (its payload
        schema), handed out with each claim so that no instance is read for it."""
        return f"{self.bulk(operation_id)}:wf"

    @property
    def bulks(self) -> str:
        """Every bulk operation's id, scored by when it started."""
        return f"{self.prefix}{{bulks}}:all"

    @property
    def bulks_running(self) -> str:
        """The ids of the bulk operations still running: what every sidecar looks at."""
        return f"{self.prefix}{{bulks}}:running"

    def trigger_events(self, workflow_key: str) -> str:
        """Events collected so far for a definition's `schedule.on: all`, by filter index."""
        return f"{self.prefix}trigger:{{{workflow_key}}}"


# An instance's own keys, from its instance key: what a turn derives without hashing its id again.


def history_of(instance_key: str) -> str:
    return f"{instance_key}:history"


def inbox_of(instance_key: str) -> str:
    return f"{instance_key}:inbox"


def reset_points_of(instance_key: str) -> str:
    return f"{instance_key}:resets"
