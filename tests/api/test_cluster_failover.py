"""A Redis Cluster master SIGKILLed while two sidecars acknowledge Runs at durability replicas:
no acknowledged instance is lost, callers see UNAVAILABLE with RetryInfo (never INTERNAL), and
a retried Run makes no second instance."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.store.local_cluster import ClusterNode, LocalCluster
from tests.api.test_process import channel_to, free_port, keep_output, start_process
from tests.helpers import Stub, detail_types, eventually, to_python, value, wait_for_status

pytestmark = [
    pytest.mark.slow,
]

CALLERS = 4
RUNS_PER_CALLER = 20
# Acknowledged Runs before the kill, so the failover lands in the middle of the calls.
KILL_AFTER = 12
# Bounds every wait of the test; none stands for a latency target.
DEADLINE_S = 120.0
APPROVAL = "tests.approval.1.0.0"


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(
        data_dir=tmp_path / "cluster", masters=3, replicas=1, node_timeout_ms=1000
    ) as running:
        yield running


@pytest_asyncio.fixture
async def stubs(cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[list[Stub]]:
    """Two sidecar processes on the Cluster, waiting for one replica on every write.

    Their logs go to the test's tmp_path and to its captured output, which pytest shows when
    the test fails.
    """
    ports = [free_port(), free_port()]
    outputs = [bytearray() for _ in ports]
    processes: list[asyncio.subprocess.Process] = []
    try:
        for port, output in zip(ports, outputs, strict=True):
            env = {"OKRA_DURABILITY": "replicas"}
            processes.append(await start_process(cluster.url, port, env=env, output=output))
        async with channel_to(ports[0]) as first, channel_to(ports[1]) as second:
            yield [first, second]
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
            await process.wait()
        for n, output in enumerate(outputs):
            keep_output(tmp_path / f"sidecar-{n}.log", output)


class Callers:
    """Run callers that retry UNAVAILABLE with the same request_id, noting what they saw."""

    def __init__(self) -> None:
        self.acknowledged: dict[str, str] = {}  # request_id -> instance_id
        self.unavailable = 0
        self.enough = asyncio.Event()

    async def call(self, stub: Stub, caller: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        for n in range(RUNS_PER_CALLER):
            request_id = f"caller-{caller}-run-{n}"
            request = pb.RunRequest(
                workflow_id=APPROVAL, input=value({"amount": n}), request_id=request_id
            )
            while True:
                try:
                    reply = await stub.Run(request, timeout=10)
                    break
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, (
                        f"{request_id}: {error.code().name}: {error.details()}"
                    )
                    assert "google.rpc.RetryInfo" in detail_types(error), error.details()
                    self.unavailable += 1
                    assert loop.time() < deadline, f"{request_id} unavailable until the deadline"
                    await asyncio.sleep(0.1)
            self.acknowledged[request_id] = reply.instance_id
            if len(self.acknowledged) >= KILL_AFTER:
                self.enough.set()


async def _is(cluster: LocalCluster, node: ClusterNode, role: str) -> bool:
    return await cluster.role(node) == role


@pytest.mark.timeout(DEADLINE_S + 60)
async def test_a_killed_master_loses_no_acknowledged_run(
    cluster: LocalCluster, stubs: list[Stub]
) -> None:
    callers = Callers()
    calls = [
        asyncio.create_task(callers.call(stubs[caller % 2], caller)) for caller in range(CALLERS)
    ]
    try:
        async with asyncio.timeout(DEADLINE_S):
            await callers.enough.wait()
        dead = cluster.masters()[0]
        heir = next(node for node in cluster.nodes if node.replica_of == 0)
        await cluster.kill(dead)
        await eventually(
            lambda: _is(cluster, heir, "master"), timeout_s=DEADLINE_S, what="the failover"
        )
        # Its replica took over alone, so durable writes to its slots wait for a replica
        # (UNAVAILABLE) until the dead node is back, as the new master's replica. (Back
        # before the failover, with no persistence, it would have come back empty as master.)
        await cluster.restart(dead)
        await eventually(
            lambda: _is(cluster, dead, "slave up"), timeout_s=DEADLINE_S, what="its return"
        )
        await asyncio.gather(*calls)
    finally:
        for task in calls:
            task.cancel()
        for task in calls:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert len(callers.acknowledged) == CALLERS * RUNS_PER_CALLER
    assert callers.unavailable > 0, "no call met the failover"
    assert len(set(callers.acknowledged.values())) == len(callers.acknowledged)
    for n, (request_id, instance_id) in enumerate(sorted(callers.acknowledged.items())):
        stub = stubs[n % 2]
        # The same request_id again: the instance made the first time.
        again = await stub.Run(
            pb.RunRequest(workflow_id=APPROVAL, input=value({"amount": 0}), request_id=request_id)
        )
        assert again.instance_id == instance_id
        await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING}, timeout_s=30)
        await stub.Signal(
            pb.SignalRequest(instance_id=instance_id, signal="approve", payload=value({"by": n}))
        )
    for n, (request_id, instance_id) in enumerate(sorted(callers.acknowledged.items())):
        done = await wait_for_status(
            stubs[(n + 1) % 2], instance_id, {pb.WORKFLOW_STATUS_COMPLETED}, timeout_s=30
        )
        amount = int(request_id.rsplit("-", 1)[1])
        assert to_python(done.output) == {"amount": amount, "approvedBy": n}
    count = await stubs[0].Count(pb.CountRequest(workflow_id=APPROVAL))
    assert count.count == CALLERS * RUNS_PER_CALLER
