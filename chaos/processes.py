"""The processes the suite starts and hurts: one redis-server and a fleet of sidecars."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis

from bench.cpu import child_pids, process_name
from bench.processes import free_port
from okra_sidecar.engine.runtime.forking import FORK_SERVER_NAME
from okra_sidecar.store.embedded import find_redis_server

__all__ = ["RedisServer", "SidecarProcess"]

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = Path(__file__).resolve().parent / "workflows"
START_TIMEOUT_S = 60.0
POLL_S = 0.1


class RedisServer:
    """redis-server on a loopback port, fsyncing every write (`appendfsync always`), so an
    acknowledged write survives SIGKILL; killed, stopped and started again on the same data."""

    def __init__(
        self, work_dir: Path, *, host: str = "127.0.0.1", prefix: Sequence[str] = ()
    ) -> None:
        self.port = free_port()
        self.url = f"redis://{host}:{self.port}"
        self._dir = work_dir / "redis"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._process: asyncio.subprocess.Process | None = None
        # In a network namespace of its own (chaos/netns.py) it listens on all its links.
        self._bind = "0.0.0.0" if prefix else "127.0.0.1"
        self._prefix = list(prefix)

    async def start(self) -> None:
        config = self._dir / "redis.conf"
        config.write_text(
            f"port {self.port}\nbind {self._bind}\ndir {self._dir}\nappendonly yes\n"
            'appendfsync always\nsave ""\nprotected-mode no\n'
        )
        log = (self._dir / "redis.log").open("ab")
        self._process = await asyncio.create_subprocess_exec(
            *self._prefix, find_redis_server(), str(config), stdout=log, stderr=log
        )
        log.close()
        client = Redis.from_url(self.url)
        try:
            for _ in range(int(START_TIMEOUT_S / POLL_S)):
                with contextlib.suppress(OSError, ConnectionError, Exception):
                    if await client.ping():
                        return
                await asyncio.sleep(POLL_S)
            raise RuntimeError(f"redis-server did not answer on {self.url}")
        finally:
            await client.aclose()

    async def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    def pause(self) -> None:
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGCONT)

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self.resume()
            self._process.terminate()
            await self._process.wait()


class SidecarProcess:
    """`okra-sidecar serve` on a fixed port (loopback, or its namespace's link to the driver),
    so clients find it again after a restart."""

    def __init__(
        self,
        name: str,
        work_dir: Path,
        env: Mapping[str, str],
        *,
        redis_url: str,
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.port = free_port()
        self.address = f"{host}:{self.port}"
        self._log = work_dir / f"{name}.log"
        self._env = dict(env)
        self._prefix = list(prefix)
        self._redis_url = redis_url
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        with self._log.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *self._prefix,
                sys.executable,
                *("-m", "okra_sidecar", "serve", "--listen", self.address),
                *("--redis-url", self._redis_url, "--workflows", str(WORKFLOWS_DIR)),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **self._env},
            )
        await self._until_serving()

    async def _until_serving(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(int(START_TIMEOUT_S / POLL_S)):
                if not self.running:
                    raise RuntimeError(f"{self.name} exited; see {self._log}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(POLL_S)
        raise RuntimeError(f"{self.name} did not serve within {START_TIMEOUT_S:g}s")

    async def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no shutdown of any kind."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    def kill_engine_child(self) -> bool:
        """SIGKILL one engine child process; False when there is none."""
        if self._process is None:
            return False
        # Not the fork server the children come from: it takes no turn.
        children = [
            pid for pid in child_pids(self._process.pid) if process_name(pid) != FORK_SERVER_NAME
        ]
        if not children:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(children[0], signal.SIGKILL)
        return True

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 30)
            except TimeoutError:
                await self.kill()
