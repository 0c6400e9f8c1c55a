"""Every script keeps to one Redis Cluster slot: the instance store's, and every other one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis
from redis.crc import key_slot

import okra_sidecar.store.scripts
from okra_sidecar.engine.interpreter.effects import Effect, EffectKind
from okra_sidecar.engine.runtime.cancelling import cancel_instance
from okra_sidecar.instances import InstanceStatus, ParentLink
from okra_sidecar.server import Sidecar
from okra_sidecar.store.base import Subscriptions, TurnExtras
from okra_sidecar.store.cluster_client import pooled_commands
from okra_sidecar.store.effect_store import RedisEffectStore
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.multiplexed import Arg, MultiplexedScript, ScriptLike, evalsha_with
from okra_sidecar.store.policy_store import RedisPolicyStore
from okra_sidecar.store.redis_store import RedisStore
from okra_sidecar.store.schedule_store import RedisScheduleStore
from okra_sidecar.store.scripts import load_script
from okra_sidecar.tasks import cancel_and_wait
from tests.executors.test_runtime import commit_extras, effect, read_task
from tests.helpers import (
    Stub,
    eventually,
    expect_rpc_error,
    make_settings,
    running_sidecar,
    value,
    wait_for_status,
)
from tests.store.test_redis_store import IDS, commit, new

SCRIPTS = tuple("create signal commit cancel timers reserve admit release void".split())


class RecordingCommands:
    """HotCommands on the pool that records the KEYS of every script it sends."""

    def __init__(self, redis: Redis) -> None:
        self._pool = pooled_commands(redis)
        self.calls: list[tuple[str, list[str]]] = []

    def _record(self, command: Sequence[Arg]) -> None:
        if command and command[0] == "EVALSHA":
            count = int(command[2])
            self.calls.append((str(command[1]), [str(k) for k in command[3 : 3 + count]]))

    async def execute(self, *args: Arg) -> Any:
        self._record(args)
        return await self._pool.execute(*args)

    async def evalsha(
        self, script: ScriptLike, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        return await evalsha_with(self.execute, script, keys, args)

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        for command in commands:
            self._record(command)
        return await self._pool.pipeline(commands)

    async def aclose(self) -> None:
        await self._pool.aclose()


async def test_every_instance_script_touches_one_slot(redis: Redis) -> None:
    keys = RedisKeys(partitions=4, scope="shop")
    hot = RecordingCommands(redis)
    store = RedisStore(redis=redis, keys=keys, hot=hot)
    # As on a Cluster: admission and create in two scripts, each in its own slot (on one node
    # they go in one script, reserve_create.lua).
    store.one_node = False
    await store.ensure_groups()
    parent = IDS[0]
    # A child in another partition than its parent: what crosses partitions is in the test.
    child = next(i for i in IDS if keys.partition(i) != keys.partition(parent))
    await store.create_instance(new(parent, team="a"), max_active=10, max_per_workflow=10)
    link = ParentLink(parent, "c#1", ("t.w.1.0.0",))
    await store.create_instance(replace(new(child), parent=link), max_active=10)
    await store.signal(parent, signal_id="s1", event={"id": "s1"}, now_ms=2)
    effect = Effect("e#1", EffectKind.HTTP, "/do/0/call", {"endpoint": "http://x"}).to_json()
    listen = Subscriptions(types=("paid",), filters=[{"with": {"type": "paid"}}])
    snapshot = await store.load_turn(parent)
    assert snapshot is not None
    extras = TurnExtras(effects=[effect], events=[{"id": "ev1"}], subscriptions=listen)
    assert await store.commit_turn(
        snapshot, commit(InstanceStatus.WAITING, extras=extras, wake_at_ms=1)
    )
    snapshot = await store.load_turn(child)
    assert snapshot is not None
    outcome = TurnExtras(parent_event={"id": "r#1", "type": "io.okra.effect.result"})
    assert await store.commit_turn(snapshot, commit(InstanceStatus.COMPLETED, extras=outcome))
    await store.fire_timers(10, limit=10)
    await cancel_instance(store, parent, reason="done", now_ms=20)
    # A Run without limits, whose reservation the relay makes; the relay's release of the
    # child's place, and a reservation the reconciler voids.
    await store.create_instance(new(IDS[4]), max_active=0)
    await store.limits.admit_many("shop", [(IDS[4], "t.w")])
    await store.limits.release(child, "shop", "t.w")
    await store.limits.reserve(IDS[3], "t.w", max_active=0, max_per_workflow=0)
    await redis.zadd(keys.limit_active("shop"), {IDS[3]: 1})
    await store.limits.repair()

    names = {MultiplexedScript(load_script(name)).sha: name for name in SCRIPTS}
    seen: set[str] = set()
    for sha, call_keys in hot.calls:
        slots = {key_slot(key.encode()) for key in call_keys}
        assert len(slots) == 1, (names[sha], call_keys)
        seen.add(names[sha])
    assert seen == set(SCRIPTS)


if TYPE_CHECKING:
    from okra_client.gen.schedule.v1.schedule_pb2_grpc import (
        ScheduleHostAPIAsyncStub as ScheduleStub,
    )
    from okra_client.gen.worker.v1.worker_pb2_grpc import TaskWorkerAsyncStub as WorkerStub
    from okra_client.gen.workflow.v1.operator_pb2_grpc import (
        WorkflowOperatorAPIAsyncStub as OperatorStub,
    )
else:
    OperatorStub = opb_grpc.WorkflowOperatorAPIStub
    ScheduleStub = spb_grpc.ScheduleHostAPIStub
    WorkerStub = wpb_grpc.TaskWorkerStub

FOREVER = "tests.forever.1.0.0"
SCRIPTS_DIR = Path(okra_sidecar.store.scripts.__file__).parent
# lib.lua is prepended to the scripts that use it, never run on its own.
EVERY_SCRIPT = sorted(p.stem for p in SCRIPTS_DIR.glob("*.lua") if p.stem != "lib")
# Scripts run only where every key is on one node, a single Redis (never on a Cluster, where
# the store runs their parts one by one): reserve_create is reserve and create in one call,
# track counts a scope's instances of every partition.
SINGLE_REDIS_ONLY = frozenset({"reserve_create", "track"})
# Keys a script names besides its own slot's only on a single Redis: a finishing commit gives
# its instance's place back in the limit scope's keys itself (on a Cluster, via its outbox).
SINGLE_REDIS_EXTRA_KEYS = {"commit": "limits:{ns:"}
# Scripts that on a single Redis serve every partition in one call, their KEYS a group of this
# many keys per partition, each group in its partition's slot (on a Cluster, a call per group).
SINGLE_REDIS_GROUPS = {"timers": 2, "orphan_owners": 1}


@asynccontextmanager
async def monitored(redis_url: str) -> AsyncIterator[list[tuple[str, list[str]]]]:
    """Every script run on the Redis meanwhile, by anyone: its sha and its KEYS (MONITOR)."""
    calls: list[tuple[str, list[str]]] = []
    client = Redis.from_url(redis_url)
    ready = asyncio.Event()

    async def listen() -> None:
        async with client.monitor() as monitor:
            ready.set()
            while True:
                info = await monitor.next_command()
                words = info["command"].split(" ")
                # Commands a script runs are reported too, as the client "lua".
                if info["client_type"] != "lua" and words[0].upper() == "EVALSHA":
                    count = int(words[2])
                    calls.append((words[1], words[3 : 3 + count]))

    task = asyncio.create_task(listen())
    await asyncio.wait_for(ready.wait(), timeout=10)
    try:
        yield calls
    finally:
        await asyncio.sleep(0.2)  # the last commands' reports
        await cancel_and_wait([task])
        await client.aclose()


# MONITOR reports one node's commands; the slots are computed here, so one Redis shows them all.
@pytest.mark.single_store
async def test_every_script_of_a_running_sidecar_touches_one_slot(
    redis: Redis, redis_url: str
) -> None:
    """Each script in store/scripts runs below, and each run names keys of one slot: a new
    script fails here until it is run below and keeps to one slot."""
    async with monitored(redis_url) as calls:
        await run_every_script(redis, redis_url)
    names = {MultiplexedScript(load_script(name)).sha: name for name in EVERY_SCRIPT}
    seen: set[str] = set()
    for sha, call_keys in calls:
        name = names.get(sha, sha)
        group = SINGLE_REDIS_GROUPS.get(name)
        if group is not None:
            for i in range(0, len(call_keys), group):
                part = call_keys[i : i + group]
                assert len({key_slot(key.encode()) for key in part}) == 1, (name, call_keys)
        elif name not in SINGLE_REDIS_ONLY:
            extra = SINGLE_REDIS_EXTRA_KEYS.get(name)
            own = [key for key in call_keys if extra is None or extra not in key]
            assert len({key_slot(key.encode()) for key in own}) == 1, (name, call_keys)
        seen.add(name)
    # A sidecar on a single Redis runs create.lua within reserve_create.lua; the store test
    # above runs each of SCRIPTS on its own, as on a Cluster.
    assert sorted((seen | set(SCRIPTS)) & set(EVERY_SCRIPT)) == EVERY_SCRIPT


async def run_every_script(redis: Redis, redis_url: str) -> None:
    """What a sidecar does over a day, in a few seconds: every script runs at least once."""
    async with running_sidecar(make_settings(redis_url)) as (running, stub):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            operator = opb_grpc.WorkflowOperatorAPIStub(channel)
            await run_instance_scripts(stub, operator)
            waiting = await run_worker_scripts(running, stub, wpb_grpc.TaskWorkerStub(channel))
            await run_bulk_scripts(operator)
            await run_schedule_scripts(spb_grpc.ScheduleHostAPIStub(channel))
        # What no rpc of the test workflows reaches: an `all` trigger's collection, the slow
        # lane, a rate limit, a policy set, a reservation that never became an instance, the
        # first count of a limit scope and a routed event refused by a payload schema
        # (trigger_collect, mark_slow, gcra, policy_set, void, track, refuse_event).
        keys, store = running.store.keys, running.store
        triggers = RedisScheduleStore(redis=redis, keys=keys)
        await triggers.collect_trigger_event("tests.steps", index=0, needed=1, event={"id": "e"})
        await store.mark_slow(waiting, now_ms=1)
        policies = RedisPolicyStore(redis=redis, keys=keys, audit_max_length=100)
        await policies.acquire_rate("tests", interval_ms=1.0, period_ms=1000)
        await policies.publish_policies("{}", source="tests", digest="d")
        await redis.zadd(keys.limit_active(keys.scope), {IDS[9]: 1})
        await store.limits.repair()
        await store.limits.track()
        refused = {"type": "event.refused", "event": {"type": "approve"}}
        await RedisEffectStore(redis=redis, keys=keys).refuse(waiting, "event:tests\ne", refused)


async def run_instance_scripts(stub: Stub, operator: OperatorStub) -> None:
    """Run, Signal, SignalWithStart, Emit to a listener, Reset, Suspend, Resume, Retry, Cancel
    and Delete (reserve, create, signal, signal_start, commit, timers, deliver, reset, suspend,
    resume, retry, cancel, release, purge)."""
    approval = pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": 1}))
    first = (await stub.Run(approval)).instance_id
    second = (await stub.Run(approval)).instance_id
    for instance_id in (first, second):
        await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
    await stub.Signal(
        pb.SignalRequest(instance_id=first, signal="approve", payload=value({"by": "a"}))
    )
    started = pb.RunRequest(
        workflow_id="tests.approval.1.0.0", input=value({"amount": 2}), request_id="r1"
    )
    await stub.SignalWithStart(
        pb.SignalWithStartRequest(
            run=started, signal="approve", payload=value({"by": "b"}), signal_id="s1"
        )
    )
    await stub.Emit(pb.EmitRequest(type="approve", source="tests", data=value({"by": "c"})))
    await wait_for_status(stub, second, {pb.WORKFLOW_STATUS_COMPLETED})
    await operator.Reset(opb.ResetRequest(instance_id=second, task="/do/1/decide"))
    forever = (await stub.Run(pb.RunRequest(workflow_id=FOREVER))).instance_id
    await wait_for_status(stub, forever, {pb.WORKFLOW_STATUS_WAITING})
    await operator.Suspend(opb.SuspendRequest(instance_id=forever))
    await operator.Resume(opb.ResumeRequest(instance_id=forever))
    failing = pb.RunRequest(workflow_id="tests.order.1.0.0", input=value({"kind": "x"}))
    failed = (await stub.Run(failing)).instance_id
    await wait_for_status(stub, failed, {pb.WORKFLOW_STATUS_FAILED})
    await operator.Retry(opb.RetryRequest(instance_id=failed, reason="again"))
    await stub.Cancel(pb.CancelRequest(instance_id=forever, reason="done"))
    await operator.Delete(opb.DeleteRequest(instance_id=forever))


async def run_worker_scripts(running: Sidecar, stub: Stub, worker: WorkerStub) -> str:
    """A worker task (enqueue_task, heartbeat, complete_task); its instance."""
    waiting: str = (await stub.Run(pb.RunRequest(workflow_id=FOREVER))).instance_id
    await wait_for_status(stub, waiting, {pb.WORKFLOW_STATUS_WAITING})
    work = {"function": "charge", "arguments": {}, "service": "payments"}
    await commit_extras(
        running, waiting, TurnExtras(effects=[effect("c#1", EffectKind.WORKER, work)])
    )
    poll = worker.PollTasks(wpb.PollTasksRequest(service="payments", worker_id="w1"))
    task = await asyncio.wait_for(read_task(poll), timeout=20)
    poll.cancel()
    await worker.Heartbeat(
        wpb.HeartbeatRequest(worker_id="w1", task_ids=[task.task_id], leases=[task.lease])
    )
    await worker.CompleteTask(wpb.CompleteTaskRequest(task_id=task.task_id, lease=task.lease))
    return waiting


async def run_bulk_scripts(operator: OperatorStub) -> None:
    """A bulk operation run to its end, then cancelled (bulk_lease, bulk_claim, bulk_record,
    bulk_cancel)."""
    started = await operator.StartBulkOperation(
        opb.StartBulkOperationRequest(
            filter=pb.QueryRequest(workflow_id="tests.approval.1.0.0"),
            action=opb.BULK_ACTION_CANCEL,
            reason="tidy",
        )
    )
    get = opb.GetBulkOperationRequest(operation_id=started.operation_id)

    async def bulk_done() -> bool:
        reply = await operator.GetBulkOperation(get)
        return bool(reply.operation.state == opb.BULK_OPERATION_STATE_COMPLETED)

    await eventually(bulk_done, what="the bulk operation")
    # Finished already: bulk_cancel.lua says so.
    await expect_rpc_error(
        operator.CancelBulkOperation(
            opb.CancelBulkOperationRequest(operation_id=started.operation_id)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


async def run_schedule_scripts(schedules: ScheduleStub) -> None:
    """A schedule saved and deleted (schedule_save, schedule_delete)."""
    created = await schedules.TriggerWorkflow(
        spb.TriggerWorkflowRequest(
            workflow_id="tests.steps.1.0.0", input=value({"n": 0}), cron_expression="0 0 1 1 *"
        )
    )
    await schedules.DeleteSchedule(spb.DeleteScheduleRequest(schedule_id=created.schedule_id))
