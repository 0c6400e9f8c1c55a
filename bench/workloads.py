"""The measured workloads W1-W4 and the echo baseline, each against a ready server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import struct_pb2
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from bench.cpu import CpuMeter, CpuShare
from bench.echo import echo_caller
from bench.load import Result, Timing, drive
from bench.progress import wait_until_none
from okra_sidecar.engine.runtime.runner import SLOW_DEFINITIONS_REFRESH_S

if TYPE_CHECKING:
    from okra_client.gen.workflow.v1.workflow_pb2_grpc import WorkflowHostAPIAsyncStub

ECHO = "echo (grpc.aio)"
HOLD = "bench.hold.1.0.0"
STEPS = "bench.steps.1.0.0"
SPIN = "bench.spin.1.0.0"
APPROVE = "bench.approve.1.0.0"
SIGNAL = "bench-go"
NOT_STARTED = (pb.WORKFLOW_STATUS_PENDING, pb.WORKFLOW_STATUS_RUNNING)
NOT_FINISHED = (*NOT_STARTED, pb.WORKFLOW_STATUS_WAITING)
WARM_UP_CALLS = 128
# More than the turns probation asks of a workflow (PROVEN_AFTER_TURNS), each instance one or two.
PROVING_INSTANCES = 8
GET_STATUS_INSTANCES = 200


@dataclass(frozen=True)
class Client:
    """What every workload needs: the stub, the concurrency and the CPU meter."""

    stub: WorkflowHostAPIAsyncStub
    concurrency: int = 64
    meter: CpuMeter = field(default_factory=CpuMeter)


class BenchError(RuntimeError):
    """A workload could not finish (instances failed or never completed)."""


def _value(fields: dict[str, struct_pb2.Value]) -> struct_pb2.Value:
    message = struct_pb2.Value()
    for key, item in fields.items():
        message.struct_value.fields[key].CopyFrom(item)
    return message


def run_request(workflow_id: str) -> pb.RunRequest:
    """One Run request, built once and sent as often as needed (each Run makes a new id)."""
    return pb.RunRequest(
        workflow_id=workflow_id, input=_value({"n": struct_pb2.Value(number_value=1)})
    )


def to_row(name: str, timing: Timing[Any], cpu: CpuShare | None = None) -> Result:
    """A report row straight from a timed batch of rpcs."""
    errors = sum(timing.errors.values())
    return Result(
        name, len(timing.latencies_ms), timing.elapsed_s, timing.latencies_ms, cpu, errors
    )


async def start_instances(
    client: Client, workflow_id: str, count: int
) -> tuple[list[str], Timing[pb.RunResponse]]:
    """Run `count` instances; their ids by call index, and the timing of the Run calls."""
    request = run_request(workflow_id)
    run = client.stub.Run
    timing = await drive(lambda _: run(request), count=count, concurrency=client.concurrency)
    return [r.instance_id for r in timing.replies], timing


async def warm_up(client: Client) -> None:
    """Open the connection and take the first-call costs before anything is timed."""
    ids, _ = await start_instances(client, HOLD, WARM_UP_CALLS)
    requests = [pb.GetStatusRequest(instance_id=i) for i in ids]
    get = client.stub.GetStatus
    await drive(lambda i: get(requests[i]), count=len(requests), concurrency=client.concurrency)
    await wait_until_none(client.stub, HOLD, NOT_STARTED)
    await prove_workflows(client)


async def prove_workflows(client: Client) -> None:
    """Run W2's and W3's workflows a few times to the end before they are timed.

    A workflow new to the store runs its turns in the slow lane until a few of them prove it
    fast (probation, docs/architecture.md); the store remembers that, so only a fresh store,
    as each bench round starts with, pays it. The engine's runners read which workflows are
    proven every SLOW_DEFINITIONS_REFRESH_S.
    """
    await start_instances(client, STEPS, PROVING_INSTANCES)
    approvals, _ = await start_instances(client, APPROVE, PROVING_INSTANCES)
    await wait_until_none(client.stub, APPROVE, NOT_STARTED, count=PROVING_INSTANCES)
    payload = _value({"by": struct_pb2.Value(string_value="bench")})
    for instance_id in approvals:
        await client.stub.Signal(
            pb.SignalRequest(instance_id=instance_id, signal=SIGNAL, payload=payload)
        )
    for workflow_id in (STEPS, APPROVE):
        await wait_until_none(client.stub, workflow_id, NOT_FINISHED, count=PROVING_INSTANCES)
    await asyncio.sleep(2 * SLOW_DEFINITIONS_REFRESH_S)


async def measure_echo(
    channel: grpc.aio.Channel, *, count: int, concurrency: int, meter: CpuMeter, payload: bytes
) -> Result:
    """The echo baseline: the same driver and concurrency, against the bare transport."""
    call = echo_caller(channel, payload)
    await drive(call, count=min(count, WARM_UP_CALLS), concurrency=concurrency)
    start = meter.sample()
    timing = await drive(call, count=count, concurrency=concurrency)
    return to_row(ECHO, timing, meter.share_since(start))


async def measure_run(client: Client, count: int) -> Result:
    """W1: Run throughput on a workflow that only waits, then let the engine catch up."""
    start = client.meter.sample()
    _, timing = await start_instances(client, HOLD, count)
    cpu = client.meter.share_since(start)
    # Let the engine park every instance before the next workload, so none inherits a backlog.
    await wait_until_none(client.stub, HOLD, NOT_STARTED, count=count)
    return to_row("W1 Run", timing, cpu)


async def measure_completion(client: Client, count: int) -> tuple[Result, list[str]]:
    """W2: Runs of the three-step workflow until every one reads COMPLETED.

    Returns:
        The row (rate from the first Run to the last end_time; latency from each Run's
        send to its end_time) and the instance ids, for W4 to read.
    """
    start = client.meter.sample()
    ids, timing = await start_instances(client, STEPS, count)
    await wait_until_none(client.stub, STEPS, NOT_FINISHED, count=count)
    cpu = client.meter.share_since(start)
    row = await completion_row("W2 Run->completed", client, ids, timing, cpu)
    return row, ids


async def signal_approvals(client: Client, ids: Sequence[str]) -> Timing[pb.SignalResponse]:
    """Send each bench.approve instance (parked in its `listen`) the signal that completes it."""
    payload = _value({"by": struct_pb2.Value(string_value="bench")})
    requests = [pb.SignalRequest(instance_id=i, signal=SIGNAL, payload=payload) for i in ids]
    signal = client.stub.Signal
    return await drive(
        lambda i: signal(requests[i]), count=len(requests), concurrency=client.concurrency
    )


async def run_to_the_end(client: Client, workflow_id: str, count: int) -> list[str]:
    """`count` instances of W2's or W3's workflow until all ended (W3's signalled once parked
    in their `listen`); returns their ids."""
    ids, _ = await start_instances(client, workflow_id, count)
    if workflow_id == APPROVE:
        await wait_until_none(client.stub, APPROVE, NOT_STARTED, count=count)
        await signal_approvals(client, ids)
    await wait_until_none(client.stub, workflow_id, NOT_FINISHED, count=count)
    return ids


async def measure_signal(client: Client, count: int) -> list[Result]:
    """W3: signal instances parked in a `listen` and time each until it reads COMPLETED."""
    ids, _ = await start_instances(client, APPROVE, count)
    await wait_until_none(client.stub, APPROVE, NOT_STARTED, count=count)
    start = client.meter.sample()
    timing = await signal_approvals(client, ids)
    await wait_until_none(client.stub, APPROVE, NOT_FINISHED, count=count)
    cpu = client.meter.share_since(start)
    return [
        to_row("W3 Signal rpc", timing),
        await completion_row("W3 Signal->completed", client, ids, timing, cpu),
    ]


async def measure_get_status(
    client: Client, count: int, instance_ids: Sequence[str] = ()
) -> Result:
    """W4: GetStatus on completed instances (W2's, or a few made here), round robin."""
    if not instance_ids:
        instance_ids, _ = await start_instances(client, STEPS, min(count, GET_STATUS_INSTANCES))
        await wait_until_none(client.stub, STEPS, NOT_FINISHED, count=len(instance_ids))
    requests = [pb.GetStatusRequest(instance_id=i) for i in instance_ids]
    get = client.stub.GetStatus

    def call(index: int) -> Awaitable[pb.WorkflowInstance]:
        return get(requests[index % len(requests)])

    start = client.meter.sample()
    timing = await drive(call, count=count, concurrency=client.concurrency)
    return to_row("W4 GetStatus", timing, client.meter.share_since(start))


async def completion_row(
    name: str, client: Client, ids: list[str], sent: Timing[Any], cpu: CpuShare
) -> Result:
    """Latency from each call's send (`sent`, by index like `ids`) to its instance's end_time;
    rate over the window from the first send to the last end_time."""
    done_ms = await completion_times(client, ids)
    sent_ms = [s * 1000 for s in sent.started_at_s]
    latencies = [max(0.0, done_ms[i] - ms) for i, ms in zip(ids, sent_ms, strict=True)]
    window_s = (max(done_ms.values()) - min(sent_ms)) / 1000
    return Result(name, len(ids), window_s, latencies, cpu, sum(sent.errors.values()))


async def completion_times(client: Client, instance_ids: Iterable[str]) -> dict[str, float]:
    """When each instance completed (`end_time`, ms since the epoch), read with GetStatus.

    Raises:
        BenchError: an instance did not complete.
    """
    ids = list(instance_ids)
    requests = [pb.GetStatusRequest(instance_id=i) for i in ids]
    get = client.stub.GetStatus
    timing = await drive(lambda i: get(requests[i]), count=len(ids), concurrency=client.concurrency)
    done: dict[str, float] = {}
    for instance in timing.replies:
        if instance.status != pb.WORKFLOW_STATUS_COMPLETED:
            status = pb.WorkflowStatus.Name(instance.status)
            raise BenchError(
                f"instance {instance.instance_id} of {instance.workflow_id} is {status}: "
                f"{instance.error.title} {instance.error.detail}".strip()
            )
        done[instance.instance_id] = float(instance.end_time.ToMilliseconds())
    return done
