"""The sidecar as a process: SIGKILL mid-flight loses nothing, SIGTERM drains and exits."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from tests.helpers import KEYS, WORKFLOWS_DIR, Stub, to_python, value, wait_for_status

pytestmark = [
    pytest.mark.slow,
]
DONE = {pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_process(
    redis_url: str,
    port: int,
    *,
    workflows: Path = WORKFLOWS_DIR,
    env: Mapping[str, str] | None = None,
    output: bytearray | None = None,
) -> asyncio.subprocess.Process:
    """A sidecar process serving `workflows` on `port`, once it says it is listening.

    Args:
        output: Where to keep everything the sidecar prints (its log), for a test to show when
            it fails; without it the output is read and dropped.
    """
    environ = {
        **os.environ,
        "OKRA_CLAIM_IDLE_MS": "500",
        "OKRA_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "okra_sidecar",
        "serve",
        f"--listen=127.0.0.1:{port}",
        f"--redis-url={redis_url}",
        f"--workflows={workflows}",
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=Path(__file__).parent.parent.parent,
    )
    assert process.stdout is not None
    try:
        # Generous: on a busy 2-core host a start takes tens of seconds.
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        if output is not None:
            output += line
        assert b"listening on" in line, line
    except BaseException:
        # A sidecar left running would write into the next test's Redis.
        process.kill()
        await process.wait()
        raise
    # Keep reading what it logs: with nobody reading, a full pipe blocks the sidecar in its
    # next log line (a failover logs many), so that it can no longer answer or stop.
    drain = asyncio.create_task(_drain(process.stdout, output))
    _DRAINS.add(drain)
    drain.add_done_callback(_DRAINS.discard)
    return process


_DRAINS: set[asyncio.Task[None]] = set()


async def _drain(stdout: asyncio.StreamReader, output: bytearray | None) -> None:
    while chunk := await stdout.read(65536):
        if output is not None:
            output += chunk


def keep_output(path: Path, output: bytes | bytearray) -> None:
    """Write a sidecar's output to `path` and print it, for pytest to show if the test failed."""
    path.write_bytes(output)
    print(f"--- {path.name} ({path})")
    print(output.decode(errors="replace"))


async def start_processes(
    redis_url: str, ports: list[int], *, env: Mapping[str, str] | None = None
) -> list[asyncio.subprocess.Process]:
    """One sidecar per port, started together; none left running if any fails to start."""
    started = await asyncio.gather(
        *(start_process(redis_url, port, env=env) for port in ports), return_exceptions=True
    )
    processes = [p for p in started if isinstance(p, asyncio.subprocess.Process)]
    failures = [e for e in started if isinstance(e, BaseException)]
    if failures:
        for process in processes:
            process.kill()
            await process.wait()
        raise failures[0]
    return processes


@asynccontextmanager
async def channel_to(port: int) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Stub(channel)


async def completions(redis: Redis, instance_id: str) -> int:
    events: Any = await redis.xrange(KEYS.history(instance_id))
    return sum(b'"workflow.completed"' in fields[b"e"] for _, fields in events)


async def test_sigkill_loses_no_instance_and_finishes_none_twice(
    redis: Redis, redis_url: str
) -> None:
    port = free_port()
    first = await start_process(redis_url, port)
    async with channel_to(port) as stub:
        approvals = [
            (
                await stub.Run(
                    pb.RunRequest(workflow_id="tests.approval.1.0.0", input=value({"amount": i}))
                )
            ).instance_id
            for i in range(20)
        ]
        naps = [
            (
                await stub.Run(
                    pb.RunRequest(workflow_id="tests.nap.1.0.0", input=value({"minutes": i}))
                )
            ).instance_id
            for i in range(20)
        ]
        steps = [
            (
                await stub.Run(
                    pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": i}))
                )
            ).instance_id
            for i in range(100)
        ]
        await wait_for_status(stub, approvals[-1], {pb.WORKFLOW_STATUS_WAITING})
    first.kill()  # SIGKILL: no drain, no acks for turns in flight
    await first.wait()

    second = await start_process(redis_url, port)
    try:
        async with channel_to(port) as stub:
            for i, instance_id in enumerate(approvals):
                await stub.Signal(
                    pb.SignalRequest(
                        instance_id=instance_id, signal="approve", payload=value({"by": f"p{i}"})
                    )
                )
            for i, instance_id in enumerate(approvals):
                done = await wait_for_status(stub, instance_id, DONE, timeout_s=20)
                assert to_python(done.output) == {"amount": i, "approvedBy": f"p{i}"}
            for i, instance_id in enumerate(naps):
                done = await wait_for_status(stub, instance_id, DONE, timeout_s=20)
                assert to_python(done.output) == {"slept": i}
            for i, instance_id in enumerate(steps):
                done = await wait_for_status(stub, instance_id, DONE, timeout_s=20)
                assert to_python(done.output) == {"n": (i + 1) * 10 + 2, "done": True}
        for instance_id in approvals + naps + steps:
            assert await completions(redis, instance_id) == 1
    finally:
        second.terminate()
        await second.wait()


async def test_sigterm_drains_and_exits_cleanly(redis: Redis, redis_url: str) -> None:
    port = free_port()
    process = await start_process(redis_url, port)
    async with channel_to(port) as stub:
        waiting = (await stub.Run(pb.RunRequest(workflow_id="tests.forever.1.0.0"))).instance_id
        await wait_for_status(stub, waiting, {pb.WORKFLOW_STATUS_WAITING})
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), timeout=15) == 0
    assert await redis.hget(KEYS.instance(waiting), "status") == b"waiting"
