"""The README's "Running on Redis Cluster" commands, run as written.

Its ```sh blocks, in order: start a Cluster of three masters with a replica each, start a
sidecar on it at `durability: replicas`, and copy a single Redis's keys into it. They run in
bash in a scratch directory with the redis-server and redis-cli the sidecar ships first on
PATH; only the ports change (free ones instead of 6379 and 7000-7005), and the sidecar is
given a free address to listen on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from okra_sidecar.store.embedded import find_redis_server
from okra_sidecar.store.local_cluster import free_node_port as free_cluster_port
from tests.docs.commands import FENCE_RE
from tests.helpers import eventually, value

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
SECTION = "## Running on Redis Cluster"
CLUSTER_PORTS = tuple(str(port) for port in range(7000, 7006))
SINGLE_PORT = "6379"
COMMAND_TIMEOUT_S = 60.0

pytestmark = pytest.mark.slow


def section(text: str) -> str:
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end >= 0 else len(text)]


def sh_blocks(text: str) -> list[str]:
    return [m["body"] for m in FENCE_RE.finditer(section(text)) if m["info"] == "sh"]


def with_ports(script: str, ports: dict[str, str]) -> str:
    return re.sub(r"\b(6379|700[0-5])\b", lambda m: ports[m[1]], script)


async def bash(script: str, *, cwd: Path, env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=COMMAND_TIMEOUT_S)
    assert process.returncode == 0, f"{script}\nexited {process.returncode}:\n{output.decode()}"
    return output.decode()


@contextlib.asynccontextmanager
async def stopping_servers(ports: list[str], env: dict[str, str]) -> AsyncIterator[None]:
    """Shut down the daemonized redis-servers on `ports` on the way out, whatever happened."""
    try:
        yield
    finally:
        for port in ports:
            process = await asyncio.create_subprocess_exec(
                "redis-cli",
                "-p",
                port,
                "shutdown",
                "nosave",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await asyncio.wait_for(process.wait(), timeout=COMMAND_TIMEOUT_S)


@contextlib.asynccontextmanager
async def background(script: str, *, cwd: Path, env: dict[str, str]) -> AsyncIterator[Path]:
    """`script`, one command, run by bash (which execs it, so SIGTERM reaches the sidecar);
    yields its log."""
    log_path = cwd / "sidecar.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            "bash", "-c", script, cwd=cwd, env=env, stdout=log, stderr=log
        )
    try:
        yield log_path
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=COMMAND_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()


async def serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with contextlib.suppress(grpc.aio.AioRpcError):
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    return False


def test_the_section_shows_the_cluster_the_sidecar_and_the_move() -> None:
    start, serve, move = sh_blocks(README.read_text())
    assert "--cluster create" in start and "--cluster-replicas 1" in start
    assert serve.startswith("OKRA_DURABILITY=replicas okra-sidecar serve")
    assert "--cluster import" in move


@pytest.mark.timeout(300)
async def test_the_cluster_commands_run_as_written(tmp_path: Path) -> None:
    start, serve, move = sh_blocks(README.read_text())
    ports = {port: str(free_cluster_port()) for port in (*CLUSTER_PORTS, SINGLE_PORT)}
    bin_dir = str(Path(find_redis_server()).parent)
    env = {**os.environ, "PATH": os.pathsep.join([bin_dir, str(Path(sys.executable).parent)])}
    env["PATH"] += os.pathsep + os.environ.get("PATH", "")
    address = f"127.0.0.1:{free_cluster_port()}"
    serve = with_ports(serve, ports).replace(
        "examples/workflows", str(REPO_ROOT / "examples/workflows")
    )
    nodes = [ports[port] for port in CLUSTER_PORTS]
    async with stopping_servers([*nodes, ports[SINGLE_PORT]], env):
        await bash(with_ports(start, ports), cwd=tmp_path, env=env)
        async with background(f"{serve.strip()} --listen {address}", cwd=tmp_path, env=env) as log:
            await eventually(lambda: serving(address), timeout_s=60, what=f"the sidecar ({log})")
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.WorkflowHostAPIStub(channel)
                expense = value({"requester": "ada", "amount": 120})
                request = pb.RunRequest(workflow_id="examples.approval.1.0.0", input=expense)
                reply = await stub.Run(request)
                assert reply.instance_id
        # The move: one key of a single Redis, copied into the Cluster by its hash tag.
        single = ports[SINGLE_PORT]
        await bash(
            f"redis-server --port {single} --daemonize yes --save '' --dir .", cwd=tmp_path, env=env
        )
        source = Redis(port=int(single))
        await eventually(lambda: _answers(source), what="the single Redis")
        await source.set("okra:{p3}:moved", "yes")
        await source.aclose()
        await bash(with_ports(move, ports), cwd=tmp_path, env=env)
        cluster = RedisCluster(host="127.0.0.1", port=int(nodes[0]))
        try:
            assert await cluster.get("okra:{p3}:moved") == b"yes"
        finally:
            await cluster.aclose()


async def _answers(redis: Redis) -> bool:
    with contextlib.suppress(OSError, redis_errors.ConnectionError):
        return bool(await redis.ping())
    return False
