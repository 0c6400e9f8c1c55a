"""TaskWorkerServicer: hands a service's worker tasks to its workers, and takes their outcomes.

A worker task is an entry of the service's task stream in its instance's partition (one stream
per partition, so that enqueueing and completing it touch one Redis Cluster slot). PollTasks
reads every partition's stream for the worker in one blocking read (one per slot on a Cluster:
a command names keys of one slot only), through the streams' consumer group under the worker's
id, which leases the task: the entry stays
pending until CompleteTask or FailTask removes it, and Heartbeat re-claims it to reset its
idle time. Pollers also claim entries idle longer than the lease (their worker stopped) and
hand them out again, so every task is done at least once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc

from okra_sidecar.api.convert import python_to_value, value_to_python
from okra_sidecar.api.resource_gates import TaskGate
from okra_sidecar.clock import now_ms
from okra_sidecar.engine.interpreter.effects import iso_time, result_event
from okra_sidecar.errors import (
    ERROR_TYPE_PREFIX,
    FailedPreconditionError,
    InvalidInputError,
    OkraError,
    PolicyDeniedError,
    PreconditionViolation,
    Reason,
)
from okra_sidecar.policy import rules
from okra_sidecar.policy.signing import Signer
from okra_sidecar.store.effect_store import RedisEffectStore, TaskEntry
from okra_sidecar.store.stream_ids import parse_stream_id

__all__ = ["TaskWorkerServicer", "check_problem", "parse_task_id"]

logger = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
PARTITION_RE = re.compile(r"0|[1-9][0-9]{0,4}")
WORKER_ID_RE = re.compile(r"[A-Za-z0-9._:@/-]{1,128}")
MAX_IN_FLIGHT = 1000
MAX_PROBLEM_TYPE = 256
# An absolute URI (RFC 3986: a scheme, then no spaces), as RFC 7807 asks of a problem type.
PROBLEM_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def task_id_of(task: TaskEntry) -> str:
    """`service/partition/entry id`: where the task's entry is, opaque to workers."""
    return f"{task.service}/{task.partition}/{task.entry_id}"


def parse_task_id(
    task_id: str, *, field: str = "task_id", partitions: int | None = None
) -> tuple[str, int, str]:
    """(service, partition, stream entry id) from a task id; with `partitions`, the
    partition must be one of the store's.

    Raises:
        FailedPreconditionError: a task id of store layout 2 (`service/entry id`), whose task
            `okra-sidecar migrate` moved to a new entry.
        InvalidInputError: not a task id PollTasks handed out.
    """
    service, _, rest = task_id.partition("/")
    if SERVICE_RE.fullmatch(service) and parse_stream_id(rest) is not None:
        raise _moved(task_id)
    partition, _, entry = rest.partition("/")
    if (
        not SERVICE_RE.fullmatch(service)
        or not PARTITION_RE.fullmatch(partition)
        or (partitions is not None and int(partition) >= partitions)
        or parse_stream_id(entry) is None
    ):
        raise InvalidInputError.for_field(field, "is not a task id PollTasks handed out")
    return service, int(partition), entry


def _moved(task_id: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"task {task_id} was handed out before the store was migrated to its current layout "
        "(okra-sidecar migrate), which put it back in its queue; drop it: PollTasks hands it "
        "out again under a new id, its attempt counting on",
        reason=Reason.TASK_MOVED,
        violation=PreconditionViolation(
            "TASK_LAYOUT",
            f"task/{task_id}",
            "the task id must be one handed out since the migration",
        ),
        metadata={"task": task_id},
    )


def check_problem(request: wpb.FailTaskRequest) -> None:
    """FailTask's type and status, which become the error a workflow's `catch` matches on.

    Raises:
        InvalidInputError: the type is not an absolute URI or the status not an HTTP status.
    """
    if request.type and (
        len(request.type) > MAX_PROBLEM_TYPE or not PROBLEM_TYPE_RE.fullmatch(request.type)
    ):
        raise InvalidInputError.for_field(
            "type",
            f"{request.type[:80]!r} is not an absolute URI of at most {MAX_PROBLEM_TYPE} "
            f"characters; send a problem type such as {ERROR_TYPE_PREFIX}runtime, or none",
        )
    if request.status and not 100 <= request.status <= 599:
        raise InvalidInputError.for_field(
            "status", f"{request.status} is not an HTTP status code (100 to 599; 0 means 500)"
        )


class _Poller:
    """One PollTasks stream: the tasks it handed out and not yet finished, by lease end."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held: dict[str, int] = {}
        self.freed = asyncio.Event()

    def release(self, task_id: str) -> None:
        if self.held.pop(task_id, None) is not None:
            self.freed.set()

    def prune(self, now_ms: int) -> None:
        """Forget tasks whose lease ran out: another worker may have them now."""
        for task_id, until in list(self.held.items()):
            if until <= now_ms:
                self.release(task_id)


class TaskWorkerServicer(wpb_grpc.TaskWorkerServicer):
    def __init__(
        self,
        *,
        effects: RedisEffectStore,
        gate: TaskGate,
        lease_ms: int,
        read_block_ms: int = 1000,
        max_input_depth: int = 32,
    ) -> None:
        self._max_input_depth = max_input_depth
        self._gate = gate
        self._effects = effects
        self._lease_ms = lease_ms
        self._read_block_ms = read_block_ms
        self._pollers: dict[str, list[_Poller]] = {}
        self._signer: Signer | None = None

    async def _leases(self, *, create: bool = True) -> Signer | None:
        """The lease signer; without `create`, None while no lease was ever handed out.

        Only handing out a lease creates the key: checking one writes nothing, so a refused
        CompleteTask or FailTask leaves Redis as it was.
        """
        if self._signer is None:
            effects = self._effects
            secret = await (effects.shared_secret() if create else effects.existing_secret())
            if secret is not None:
                self._signer = Signer(secret)
        return self._signer

    async def _lease(self, task_id: str, worker: str) -> str:
        """`worker.tag`: to whom the task was handed, signed so that no caller can make one."""
        signer = await self._leases()
        assert signer is not None  # created when missing
        return f"{worker}.{signer.sign(f'{task_id}|{worker}')}"

    async def _lease_holder(self, task_id: str, lease: str) -> str:
        """The worker a lease names.

        Raises:
            InvalidInputError: no lease was given.
            PolicyDeniedError: the lease was not handed out with this task.
        """
        if not lease:
            raise InvalidInputError.for_field(
                "lease", "is required: echo the Task.lease that PollTasks handed out"
            )
        worker, _, tag = lease.rpartition(".")
        signer = await self._leases(create=False)
        if not worker or signer is None or not signer.verify(f"{task_id}|{worker}", tag):
            raise PolicyDeniedError(
                f"the lease does not belong to task {task_id}: only the worker PollTasks "
                "handed the task to can finish it or extend its lease, with the lease it came with",
                policy="lease",
            )
        return worker

    async def _to_pb(
        self, task: TaskEntry, worker: str, attempt: int, lease_until: int
    ) -> wpb.PollTasksResponse:
        task_id = task_id_of(task)
        message = wpb.Task(
            task_id=task_id,
            lease=await self._lease(task_id, worker),
            function=task.function,
            instance_id=task.instance_id,
            effect_id=task.effect_id,
            lease_expires_at=_timestamp(lease_until),
            attempt=attempt,
            traceparent=task.fields.get("t", ""),
        )
        python_to_value(task.arguments, message.arguments)
        if task.deadline_ms:
            message.deadline.CopyFrom(_timestamp(task.deadline_ms))
        return wpb.PollTasksResponse(task=message)

    async def PollTasks(  # noqa: N802 - the rpc's name
        self, request: wpb.PollTasksRequest, context: Context
    ) -> AsyncIterator[wpb.PollTasksResponse]:
        # Decided before the request is checked, and again before each task goes out, so a
        # policy changed while the stream is open applies to the next task.
        await self._gate.queue(context, "PollTasks", request.service)
        if not SERVICE_RE.fullmatch(request.service):
            raise InvalidInputError.for_field(
                "service", "must be a lowercase label (letters, digits, dashes)"
            )
        if not WORKER_ID_RE.fullmatch(request.worker_id):
            raise InvalidInputError.for_field(
                "worker_id", "must be 1 to 128 letters, digits or ._:@/-"
            )
        if not 0 <= request.max_in_flight <= MAX_IN_FLIGHT:
            raise InvalidInputError.for_field("max_in_flight", f"must be from 0 to {MAX_IN_FLIGHT}")
        poller = _Poller(max(1, request.max_in_flight))
        pollers = self._pollers.setdefault(request.worker_id, [])
        pollers.append(poller)
        service, worker = request.service, request.worker_id
        next_claim = 0.0
        # Tasks read for this worker beyond its free capacity (a read takes up to `free` per
        # partition): handed out first when capacity frees, if their lease is still ours.
        backlog: list[tuple[TaskEntry, int]] = []
        try:
            while True:
                poller.prune(now_ms())
                if len(poller.held) >= poller.capacity:
                    poller.freed.clear()
                    try:
                        await asyncio.wait_for(poller.freed.wait(), self._lease_ms / 2000)
                    except TimeoutError:
                        pass
                    continue
                free = poller.capacity - len(poller.held)
                batch: list[tuple[TaskEntry, int]] = []
                if backlog:
                    batch = await self._still_held(worker, backlog[:free])
                    backlog = backlog[free:]
                if not batch and time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + self._lease_ms / 2000
                    claimed = await self._effects.claim_expired_tasks(
                        service, worker, lease_ms=self._lease_ms, count=free
                    )
                    for task in claimed:
                        batch.append((task, await self._effects.task_attempt(task)))
                if not batch:
                    fresh = await self._effects.read_tasks(
                        service, worker, count=free, block_ms=self._read_block_ms
                    )
                    batch = [(task, 1 + task.delivered_before) for task in fresh]
                backlog += batch[free:]
                batch = batch[:free]
                for index, (task, attempt) in enumerate(batch):
                    unsent = [*batch[index:], *backlog]
                    await self._check_before_handing_out(context, service, worker, unsent)
                    lease_until = now_ms() + self._lease_ms
                    poller.held[task_id_of(task)] = lease_until
                    yield await self._to_pb(task, worker, attempt, lease_until)
        finally:
            # Redis gone mid-stream ends the call through ErrorInterceptor: UNAVAILABLE with
            # its RetryInfo, not UNKNOWN.
            pollers.remove(poller)
            if not pollers:
                self._pollers.pop(request.worker_id, None)

    async def _still_held(
        self, worker: str, tasks: list[tuple[TaskEntry, int]]
    ) -> list[tuple[TaskEntry, int]]:
        """The tasks whose lease `worker` still holds, each lease started afresh (the others
        ran out while they waited, and went to another poller)."""
        by_service: dict[str, list[tuple[int, str]]] = {}
        for task, _ in tasks:
            by_service.setdefault(task.service, []).append((task.partition, task.entry_id))
        held: set[tuple[str, int, str]] = set()
        for service, refs in by_service.items():
            kept = await self._effects.heartbeat(service, worker, refs, lease_ms=self._lease_ms)
            held.update((service, partition, entry) for partition, entry in kept)
        return [
            (task, attempt)
            for task, attempt in tasks
            if (task.service, task.partition, task.entry_id) in held
        ]

    async def _check_before_handing_out(
        self,
        context: Context,
        service: str,
        worker: str,
        unsent: list[tuple[TaskEntry, int]],
    ) -> None:
        """Run the policy check; when it refuses, give the unsent tasks back first.

        Raises:
            OkraError: the policy now refuses the caller (the stream ends with it).
        """
        try:
            await self._gate.queue(context, "PollTasks", service)
        except OkraError:
            tasks = [task for task, _ in unsent]
            await self._effects.release_tasks(worker, tasks, lease_ms=self._lease_ms)
            raise

    def _release(self, task_id: str) -> None:
        for pollers in self._pollers.values():
            for poller in pollers:
                poller.release(task_id)

    async def _finish(
        self,
        task_id: str,
        entry: tuple[str, int, str],
        lease: str,
        value: Any,
        error: dict[str, Any] | None,
    ) -> bool:
        service, partition, entry_id = entry
        worker = await self._lease_holder(task_id, lease)
        task = await self._effects.get_task(service, partition, entry_id)
        if task is None:
            self._release(task_id)
            return False
        event = result_event(task.effect_id, time_iso=iso_time(now_ms()), value=value, error=error)
        outcome = await self._effects.complete_task(task, event, worker=worker)
        # 'moved': the lease ran out and the task went out again; that delivery decides, and
        # the poller now holding it keeps its slot.
        if outcome == "moved":
            return False
        self._release(task_id)
        return outcome != "gone"

    async def CompleteTask(  # noqa: N802 - the rpc's name
        self, request: wpb.CompleteTaskRequest, context: Context
    ) -> wpb.CompleteTaskResponse:
        entry = parse_task_id(request.task_id, partitions=self._effects.keys.partitions)
        await self._gate.queue(context, "CompleteTask", entry[0])
        result = value_to_python(request.result, "result") if request.HasField("result") else None
        rules.check_input_depth(result, self._max_input_depth, field="result")
        accepted = await self._finish(request.task_id, entry, request.lease, result, None)
        return wpb.CompleteTaskResponse(accepted=accepted)

    async def FailTask(  # noqa: N802 - the rpc's name
        self, request: wpb.FailTaskRequest, context: Context
    ) -> wpb.FailTaskResponse:
        entry = parse_task_id(request.task_id, partitions=self._effects.keys.partitions)
        await self._gate.queue(context, "FailTask", entry[0])
        check_problem(request)
        error = {
            "type": request.type or ERROR_TYPE_PREFIX + "runtime",
            "status": request.status or 500,
            "title": request.title or "Worker task failed",
            "detail": request.detail,
        }
        accepted = await self._finish(request.task_id, entry, request.lease, None, error)
        return wpb.FailTaskResponse(accepted=accepted)

    async def Heartbeat(  # noqa: N802 - the rpc's name
        self, request: wpb.HeartbeatRequest, context: Context
    ) -> wpb.HeartbeatResponse:
        by_service: dict[str, list[tuple[int, str]]] = {}
        partitions = self._effects.keys.partitions
        for index, task_id in enumerate(request.task_ids):
            service, partition, entry_id = parse_task_id(
                task_id, field=f"task_ids[{index}]", partitions=partitions
            )
            by_service.setdefault(service, []).append((partition, entry_id))
        await self._gate.heartbeat(context, sorted(by_service))
        if not WORKER_ID_RE.fullmatch(request.worker_id):
            raise InvalidInputError.for_field("worker_id", "must be the id given to PollTasks")
        if len(request.leases) != len(request.task_ids):
            raise InvalidInputError.for_field(
                "leases", "must hold the Task.lease of each task in task_ids, in the same order"
            )
        # Every lease is checked before any is extended: a refused call changes nothing.
        for task_id, lease in zip(request.task_ids, request.leases, strict=True):
            if await self._lease_holder(task_id, lease) != request.worker_id:
                raise PolicyDeniedError(
                    f"the lease of task {task_id} was handed to another worker than "
                    f"{request.worker_id}: a worker extends only its own leases",
                    policy="lease",
                )
        held: list[str] = []
        for service, entries in by_service.items():
            kept = await self._effects.heartbeat(
                service, request.worker_id, entries, lease_ms=self._lease_ms
            )
            held += [f"{service}/{partition}/{entry}" for partition, entry in kept]
        until = now_ms() + self._lease_ms
        for poller in self._pollers.get(request.worker_id, []):
            for task_id in held:
                if task_id in poller.held:
                    poller.held[task_id] = until
        return wpb.HeartbeatResponse(held_task_ids=held, lease_expires_at=_timestamp(until))
