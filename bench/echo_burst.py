"""The transport's own floor for a burst of callers: the bare grpc.aio echo server of
`bench.echo` answering the same callers, making as many calls each, as a W3 burst.

A W3 caller of `bench.awaiting` makes two rpcs at the least, its Signal and then an
AwaitInstance, and times from sending the first to the last reply. Here each caller makes
that many echo calls in turn on the same kind of channel from the same client, and the server
does no work at all: what is left is what this client, grpc.aio and the machine take for the
burst. No server that answers on grpc.aio can observe completions sooner on this machine.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from bench.echo import echo_caller
from bench.processes import echo_process

CALLS_EACH = 2  # the Signal, then one AwaitInstance
WARM_CALLS = 64  # made first and not timed: the channel connected, the server's paths warm


async def echo_burst(
    channel: grpc.aio.Channel, payload: bytes, *, callers: int, in_flight: int
) -> list[float]:
    """Seconds from each caller's first call to its last reply, `in_flight` callers at a
    time, each making CALLS_EACH echo calls in turn."""
    echo = echo_caller(channel, payload)
    gate = asyncio.Semaphore(in_flight)

    async def caller(index: int) -> float:
        async with gate:
            started = time.perf_counter()
            for _ in range(CALLS_EACH):
                await echo(index)
            return time.perf_counter() - started

    return list(await asyncio.gather(*(caller(index) for index in range(callers))))


async def measure_echo_floor(
    work_dir: Path, payload: bytes, *, callers: int, rounds: int, in_flight: int
) -> list[float]:
    """`rounds` bursts of `callers` on the bare echo server (with no request size limit in
    grpc core, as on the sidecar's API port), over one channel: every caller's seconds."""
    async with (
        echo_process(work_dir, unlimited=True) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        await echo_burst(channel, payload, callers=WARM_CALLS, in_flight=WARM_CALLS)
        seconds: list[float] = []
        for _ in range(rounds):
            seconds += await echo_burst(channel, payload, callers=callers, in_flight=in_flight)
    return seconds
