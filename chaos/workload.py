"""The mixed workload: instances of six kinds started at a steady rate through every sidecar.

Every Run carries a request id and every Signal a signal id, so a call answered UNAVAILABLE is
sent again, to the next sidecar, until one acknowledges it: what was acknowledged must exist.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from okra_client import OkraClient, RetryPolicy
from okra_client.errors import OkraRpcError

__all__ = ["KINDS", "Started", "Workload"]

KINDS = ("steps", "signal", "timer", "child", "http", "work")
# A call that fails is sent again to the next sidecar for this long before it counts as refused.
CALL_PERSISTENCE_S = 60.0
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class Started:
    """One instance the workload asked for, and what it was told."""

    kind: str
    n: int
    key: str  # the Run's request id, and the key the outside calls count under
    instance_id: str = ""
    acked_at: float = 0.0  # wall-clock seconds
    signalled: bool = False
    refused: str = ""


@dataclass
class Workload:
    clients: Sequence[OkraClient]
    rate_per_s: float
    seed: int
    started: list[Started] = field(default_factory=list)
    _turn: itertools.cycle[int] = field(init=False)

    def __post_init__(self) -> None:
        self._turn = itertools.cycle(range(len(self.clients)))
        self._random = random.Random(self.seed)

    async def _persist(self, call: Any) -> Any:
        """`call(client)` on one sidecar after another until one answers or time is up."""
        deadline = time.monotonic() + CALL_PERSISTENCE_S
        while True:
            client = self.clients[next(self._turn)]
            try:
                return await call(client)
            except OkraRpcError as error:
                if error.code not in RETRYABLE or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)

    async def start_one(self, kind: str, n: int) -> None:
        record = Started(kind=kind, n=n, key=uuid.uuid4().hex)
        self.started.append(record)
        data = {"n": n, "key": record.key}
        try:
            record.instance_id = await self._persist(
                lambda c: c.run(f"chaos.{kind}.1.0.0", data, request_id=record.key, timeout_s=10)
            )
            record.acked_at = time.time()
            if kind == "signal":
                await self.signal(record)
        except OkraRpcError as error:
            record.refused = f"{error.code.name}: {error.message}"

    async def signal(self, record: Started) -> None:
        await self._persist(
            lambda c: c.signal(
                record.instance_id,
                "go",
                {"n": record.n},
                signal_id=f"{record.key}-go",
                timeout_s=10,
            )
        )
        record.signalled = True

    async def run(self, duration_s: float) -> None:
        """Start instances for `duration_s` at the rate, kinds in turn; wait for every call."""
        pending: set[asyncio.Task[None]] = set()
        interval = 1.0 / self.rate_per_s
        begin = time.monotonic()
        for n in itertools.count():
            due = begin + n * interval
            if due - begin >= duration_s:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.create_task(self.start_one(KINDS[n % len(KINDS)], n))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
        # Signals refused while every sidecar was down are sent again now.
        for record in self.started:
            if record.kind == "signal" and record.instance_id and not record.signalled:
                await self.signal(record)


def fleet_clients(addresses: Sequence[str]) -> list[OkraClient]:
    """A client per sidecar; retries are the workload's own (to the next sidecar)."""
    return [OkraClient(address, retry=RetryPolicy(max_attempts=1)) for address in addresses]
