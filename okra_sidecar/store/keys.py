"""Every Redis key, stream and group name the sidecar uses, in one place."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property

from okra_sidecar.instances import InstanceStatus

ENGINE_GROUP = "engine"
# Effects are read by every sidecar's executors, events by every sidecar's router, worker
# tasks by the workers polling a service's stream: one consumer group each.
EXECUTOR_GROUP = "executors"
ROUTER_GROUP = "router"
WORKER_GROUP = "workers"


@dataclass(frozen=True)
class RedisKeys:
    """Key names under one prefix.

    Every key of one instance carries its id as a hash tag (`okra:{id}:...`) so an instance
    lives in one Redis Cluster slot. The prefix lets tests and tenants share one Redis.
    """

    prefix: str = "okra:"
    partitions: int = 8

    def partition(self, instance_id: str) -> int:
        return zlib.crc32(instance_id.encode()) % self.partitions

    def instance(self, instance_id: str) -> str:
        return f"{self.prefix}{{{instance_id}}}"

    def history(self, instance_id: str) -> str:
        return f"{self.prefix}{{{instance_id}}}:history"

    def inbox(self, instance_id: str) -> str:
        return f"{self.prefix}{{{instance_id}}}:inbox"

    def signal_ids(self, instance_id: str) -> str:
        return f"{self.prefix}{{{instance_id}}}:signal-ids"

    def delivered(self, instance_id: str) -> str:
        """Ids of effect results and routed events already put in the inbox (de-duplication)."""
        return f"{self.prefix}{{{instance_id}}}:delivered"

    def instance_keys(self, instance_id: str) -> list[str]:
        """Every key of one instance, as retention deletes them."""
        return [
            self.instance(instance_id),
            self.history(instance_id),
            self.inbox(instance_id),
            self.signal_ids(instance_id),
            self.delivered(instance_id),
            self.children(instance_id),
        ]

    def delivery_keys(self, instance_id: str) -> list[str]:
        """The keys lib.lua's deliver() takes, in its order."""
        return [
            self.instance(instance_id),
            self.inbox(instance_id),
            self.delivered(instance_id),
            self.work(self.partition(instance_id)),
        ]

    def children(self, instance_id: str) -> str:
        return f"{self.prefix}{{{instance_id}}}:children"

    def effects(self, partition: int) -> str:
        return f"{self.prefix}effects:{partition}"

    def all_effects(self) -> list[str]:
        return [self.effects(p) for p in range(self.partitions)]

    def tasks(self, service: str) -> str:
        return f"{self.prefix}tasks:{service}"

    @property
    def secret(self) -> str:
        """The signing key every sidecar of this Redis shares (leases, causation)."""
        return f"{self.prefix}secret"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    def subscribers(self, event_type: str) -> str:
        """Instances whose listen waits for events of this type ('' for filters without one)."""
        return f"{self.prefix}subs:{event_type}"

    def work(self, partition: int) -> str:
        return f"{self.prefix}work:{partition}"

    def timers(self, partition: int) -> str:
        return f"{self.prefix}timers:{partition}"

    def all_work(self) -> list[str]:
        return [self.work(p) for p in range(self.partitions)]

    def all_timers(self) -> list[str]:
        return [self.timers(p) for p in range(self.partitions)]

    @property
    def definitions(self) -> str:
        return f"{self.prefix}definitions"

    @property
    def active_count(self) -> str:
        return f"{self.prefix}active"

    def active_workflow(self, workflow_key: str) -> str:
        """Unfinished instances of one workflow (`namespace.name`, every version together)."""
        return f"{self.prefix}active:wf:{workflow_key}"

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

    @property
    def index_all(self) -> str:
        return f"{self.prefix}idx:all"

    def index_workflow(self, workflow_id: str) -> str:
        return f"{self.prefix}idx:wf:{workflow_id}"

    def index_status(self, status: InstanceStatus) -> str:
        return f"{self.prefix}idx:status:{status.value}"

    def index_correlation(self, correlation_id: str) -> str:
        return f"{self.prefix}idx:corr:{correlation_id}"

    def index_tag(self, name: str, value: str) -> str:
        # The name's length keeps `a=b=c` unambiguous whichever side holds the `=`.
        return f"{self.prefix}idx:tag:{len(name)}:{name}={value}"

    @cached_property
    def status_indexes(self) -> tuple[str, ...]:
        # Every engine commit passes all of them: built once, not per turn.
        return tuple(self.index_status(s) for s in InstanceStatus)

    @property
    def index_finished(self) -> str:
        """Finished instances scored by when they finished: what retention purges from."""
        return f"{self.prefix}idx:finished"

    def schedule(self, schedule_id: str) -> str:
        return f"{self.prefix}schedule:{{{schedule_id}}}"

    @property
    def schedules_all(self) -> str:
        """Every schedule id (score 0, ordered by id) for ListSchedules."""
        return f"{self.prefix}schedules"

    @property
    def schedules_due(self) -> str:
        """Schedule ids scored by when a scheduler must next look at them."""
        return f"{self.prefix}schedules:due"

    def trigger_events(self, workflow_key: str) -> str:
        """Events collected so far for a definition's `schedule.on: all`, by filter index."""
        return f"{self.prefix}trigger:{{{workflow_key}}}"
