"""The servers under test, each in its own process: the real sidecar and the echo baseline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.cpu import wait_until_settled
from bench.echo import echo_caller

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = Path(__file__).resolve().parent / "workflows"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 30


# One readiness check on a channel: True once the server answers as it should.
ReadyProbe = Callable[[grpc.aio.Channel], Awaitable[bool]]


class ServerStartError(RuntimeError):
    """A server process exited or never answered; the message carries its log's tail."""


@dataclass
class ServerProcess:
    """A server child process, its address and the file its output goes to."""

    name: str
    process: asyncio.subprocess.Process
    address: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_TAIL_LINES:])

    async def stop(self) -> int:
        """SIGTERM, then wait for the graceful shutdown; SIGKILL only if it hangs."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode or 0


def free_port() -> int:
    """A port free right now on the loopback interface (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _spawn(
    name: str,
    args: list[str],
    *,
    log_path: Path,
    address: str,
    env: Mapping[str, str],
    launcher: Sequence[str] = (),
) -> ServerProcess:
    with log_path.open("wb") as log:
        # The child keeps its own copy of the descriptor; ours can close at once.
        process = await asyncio.create_subprocess_exec(
            *launcher,
            sys.executable,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
            env=dict(env),
        )
    return ServerProcess(name=name, process=process, address=address, log_path=log_path)


async def _wait_until_ready(
    server: ServerProcess, probe: ReadyProbe, timeout_s: float = START_TIMEOUT_S
) -> None:
    """Return once `probe` passes; otherwise stop the process and raise ServerStartError."""
    try:
        await _poll_ready(server, probe, timeout_s)
    except BaseException:
        await server.stop()
        raise


async def _poll_ready(server: ServerProcess, probe: ReadyProbe, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(server.address) as channel:
        while True:
            if server.process.returncode is not None:
                raise ServerStartError(
                    f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}"
                )
            with contextlib.suppress(grpc.aio.AioRpcError):
                if await probe(channel):
                    return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{server.name} did not answer within {timeout_s:.0f}s:\n{server.log_tail()}"
                )
            await asyncio.sleep(0.1)


async def _health_serving(channel: grpc.aio.Channel) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def _echo_answers(channel: grpc.aio.Channel) -> bool:
    return await echo_caller(channel, b"ready")(0) == b"ready"


@asynccontextmanager
async def sidecar_process(
    work_dir: Path,
    *,
    redis_url: str | None = None,
    key_prefix: str | None = None,
    env: Mapping[str, str] | None = None,
    launcher: Sequence[str] = (),
    start_timeout_s: float = START_TIMEOUT_S,
) -> AsyncIterator[ServerProcess]:
    """`python -m okra_sidecar serve` with the bench workflows, stopped with SIGTERM on exit.

    Args:
        work_dir: Holds the log and, without `redis_url`, the embedded Redis's data.
        redis_url: An external Redis instead of the embedded one.
        key_prefix: Key prefix for the sidecar's keys (keeps a shared Redis tidy).
        env: Variables added to the sidecar's environment (e.g. OTEL_* for tracing).
        launcher: A command the interpreter runs under (valgrind, for bench.instructions).
        start_timeout_s: How long to wait for the health check to answer SERVING.
    """
    address = f"127.0.0.1:{free_port()}"
    args = ["-m", "okra_sidecar", "serve", "--listen", address, "--workflows", str(WORKFLOWS_DIR)]
    args += ["--redis-url", redis_url] if redis_url else ["--data-dir", str(work_dir / "data")]
    environ = {**os.environ, **(env or {})}
    if key_prefix:
        environ["OKRA_KEY_PREFIX"] = key_prefix
    server = await _spawn(
        "sidecar",
        args,
        log_path=work_dir / "sidecar.log",
        address=address,
        env=environ,
        launcher=launcher,
    )
    await _wait_until_ready(server, _health_serving, start_timeout_s)
    try:
        if not launcher:
            # Under callgrind nothing is counted until the measured calls; otherwise the
            # engine processes' start-up would be measured with the first workload.
            await wait_until_settled(server.pid)
        yield server
    finally:
        code = await server.stop()
        if code not in (0, -signal.SIGTERM):
            print(f"warning: sidecar exited with {code}:\n{server.log_tail()}", file=sys.stderr)


@asynccontextmanager
async def echo_process(
    work_dir: Path,
    *,
    unlimited: bool = False,
    launcher: Sequence[str] = (),
    start_timeout_s: float = START_TIMEOUT_S,
) -> AsyncIterator[ServerProcess]:
    """`python -m bench.echo` on a free port (`unlimited`: with no request size limit in grpc
    core, as the sidecar's API port), stopped with SIGTERM on exit."""
    address = f"127.0.0.1:{free_port()}"
    server = await _spawn(
        "echo server",
        ["-m", "bench.echo", "--listen", address, *(["--unlimited"] if unlimited else [])],
        log_path=work_dir / "echo.log",
        address=address,
        env=os.environ,
        launcher=launcher,
    )
    await _wait_until_ready(server, _echo_answers, start_timeout_s)
    try:
        yield server
    finally:
        await server.stop()
