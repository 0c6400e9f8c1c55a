"""The faults: sidecars and engine children killed, Redis killed or frozen, at random moments."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from chaos.netns import Topology
from chaos.processes import RedisServer, SidecarProcess

__all__ = ["FAULTS", "FaultInjector"]

FAULTS = ("sidecar-kill", "engine-kill", "redis-kill", "redis-stop", "partition")
# How long a killed process stays down, a frozen Redis frozen, a sidecar cut off from Redis.
DOWN_S = 1.0
FROZEN_S = 3.0
PARTITION_S = (3.0, 12.0)


@dataclass
class FaultInjector:
    redis: RedisServer
    sidecars: Sequence[SidecarProcess]
    kinds: Sequence[str]
    interval_s: float
    seed: int
    # The namespaces the partition fault cuts links in (chaos/netns.py); None without it.
    topology: Topology | None = None
    done: list[tuple[float, str]] = field(default_factory=list)  # (wall time, what)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    async def inject(self, kind: str) -> str:
        if kind == "sidecar-kill":
            sidecar = self._random.choice(self.sidecars)
            await sidecar.kill()
            await asyncio.sleep(DOWN_S)
            await sidecar.start()
            return f"SIGKILL {sidecar.name}, started again"
        if kind == "engine-kill":
            sidecar = self._random.choice(self.sidecars)
            killed = sidecar.kill_engine_child()
            return f"SIGKILL an engine child of {sidecar.name}" if killed else "no engine child"
        if kind == "redis-kill":
            await self.redis.kill()
            await asyncio.sleep(DOWN_S)
            await self.redis.start()
            return "SIGKILL redis-server, started again on its AOF"
        if kind == "partition":
            assert self.topology is not None, "the partition fault needs the namespaces"
            index = self._random.randrange(len(self.sidecars))
            seconds = round(self._random.uniform(*PARTITION_S), 1)
            await asyncio.to_thread(self.topology.cut, index)
            try:
                await asyncio.sleep(seconds)
            finally:
                await asyncio.to_thread(self.topology.heal, index)
            return f"partition between {self.sidecars[index].name} and redis for {seconds:g}s"
        self.redis.pause()
        await asyncio.sleep(FROZEN_S)
        self.redis.resume()
        return f"SIGSTOP redis-server for {FROZEN_S:g}s"

    async def run(self, duration_s: float) -> None:
        """One fault every `interval_s` (jittered) until `duration_s` has passed."""
        end = time.monotonic() + duration_s
        while True:
            await asyncio.sleep(self.interval_s * self._random.uniform(0.5, 1.5))
            if time.monotonic() >= end:
                return
            at = time.time()
            self.done.append((at, await self.inject(self._random.choice(self.kinds))))
