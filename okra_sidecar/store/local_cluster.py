"""LocalCluster: a Redis Cluster of redis-server children on loopback, for tests and bench."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from redis.exceptions import RedisError

from okra_sidecar.store.embedded import EmbeddedRedisError, find_redis_server, with_parent_death
from okra_sidecar.store.multiplexed import MultiplexedRedis
from okra_sidecar.subprocesses import signal_child

__all__ = ["SLOTS", "ClusterNode", "LocalCluster", "free_node_port"]

logger = logging.getLogger(__name__)

SLOTS = 16384
# The cluster bus listens 10000 above the port, which must stay below 65536.
BUS_OFFSET = 10000
# Asks one node whether it sees the cluster as formed so far (given the node count).
_Check = Callable[[MultiplexedRedis, int], Awaitable[bool]]
PORT_TRIES = 50
# Starts of one node that died by a signal before it answered (see `_spawn`).
SPAWN_TRIES = 3


@dataclass
class ClusterNode:
    """One redis-server of the cluster: its port, its id once known, and its process."""

    port: int
    data_dir: Path
    process: asyncio.subprocess.Process | None = None
    node_id: str = ""
    replica_of: int | None = None  # The index of its master in `LocalCluster.nodes`.
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


def free_node_port() -> int:
    """A free loopback port whose cluster bus port (10000 above it) is a port too."""
    for _ in range(PORT_TRIES):
        with contextlib.closing(socket.socket()) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + BUS_OFFSET < 65536:
            return port
    raise EmbeddedRedisError("no free loopback port whose cluster bus port is free too")


class LocalCluster:
    """`masters` redis-servers in cluster mode, each with `replicas` replicas, slots split evenly.

    Built as `redis-cli --cluster create` would (ADDSLOTS, MEET, REPLICATE), from Python,
    with the redis-server the sidecar ships. Ports are picked free on 127.0.0.1.

    Args:
        data_dir: A directory for each node's nodes.conf and log.
        masters: How many masters share the 16384 slots.
        replicas: Replicas per master.
        node_timeout_ms: `cluster-node-timeout`: how soon a dead master is failed over.
        user: With `password`, an ACL user every node knows (and the default user is off).
        start_timeout: Seconds for the whole cluster to agree and cover every slot.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
        user: str | None = None,
        password: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and no negative replicas")
        self._data_dir = data_dir.absolute()
        self._masters = masters
        self._replicas = replicas
        self._node_timeout_ms = node_timeout_ms
        self._user = user
        self._password = password
        self._start_timeout = start_timeout
        self.nodes: list[ClusterNode] = []

    @property
    def url(self) -> str:
        """A seed URL naming every node, e.g. `redis://127.0.0.1:7000,127.0.0.1:7001`."""
        auth = f"{self._user}:{self._password}@" if self._password is not None else ""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis://{auth}{hosts}"

    def masters(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.replica_of is None]

    async def start(self) -> str:
        """Start every node, form the cluster, and wait until each node sees every slot served.

        Raises:
            EmbeddedRedisError: a node did not start, or the cluster did not form in time.
        """
        binary = find_redis_server()
        for index in range(self._masters * (1 + self._replicas)):
            master = None if index < self._masters else (index - self._masters) % self._masters
            node = ClusterNode(port=free_node_port(), data_dir=self._data_dir / f"node{index}")
            node.replica_of = master
            self.nodes.append(node)
        try:
            async with asyncio.timeout(self._start_timeout):
                for node in self.nodes:
                    await self._spawn_anywhere(binary, node)
                await self._form()
        except TimeoutError:
            await self.stop()
            raise EmbeddedRedisError(
                f"the local Redis Cluster did not form within {self._start_timeout:g} s; "
                f"see the logs under {self._data_dir}"
            ) from None
        except BaseException:
            await self.stop()
            raise
        return self.url

    async def stop(self) -> None:
        """SIGTERM every node still running, then SIGKILL any that lingers."""
        for node in self.nodes:
            await self._end(node, signal.SIGTERM)

    async def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node, as a crash would."""
        await self._end(node, signal.SIGKILL)

    async def restart(self, node: ClusterNode) -> None:
        """Start a stopped node again on its port and nodes.conf, as an operator would bring
        back a crashed one: a master that was failed over rejoins as its successor's replica.

        Raises:
            EmbeddedRedisError: the node did not start within the start timeout.
        """
        try:
            async with asyncio.timeout(self._start_timeout):
                await self._spawn(find_redis_server(), node)
        except TimeoutError:
            raise EmbeddedRedisError(
                f"cluster node on port {node.port} did not start again within "
                f"{self._start_timeout:g} s; see {node.log_path}"
            ) from None

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def role(self, node: ClusterNode) -> str:
        """`master`, or `slave` with its link `up` or `down`; '' while the node does not answer."""
        client = self.client(node)
        try:
            fields = _fields(await client.execute("INFO", "replication"))
        except (RedisError, OSError):  # Not answering (yet): no role to tell.
            return ""
        finally:
            await client.aclose()
        if fields.get("role") == "slave":
            return f"slave {fields.get('master_link_status', '')}"
        return fields.get("role", "")

    def client(self, node: ClusterNode) -> MultiplexedRedis:
        """A connection to one node (the caller closes it)."""
        auth = f"{self._user or ''}:{self._password}@" if self._password is not None else ""
        return MultiplexedRedis(f"redis://{auth}127.0.0.1:{node.port}")

    async def _spawn(self, binary: str, node: ClusterNode) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {node.port}",
            "bind 127.0.0.1",
            f'dir "{node.data_dir}"',
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {self._node_timeout_ms}",
            'save ""',
            "appendonly no",
            "daemonize no",
            f'logfile "{node.log_path}"',
        ]
        if self._password is not None:
            # Replicas authenticate to their master as this user too.
            lines += [f"masteruser {self._user or 'default'}", f"masterauth {self._password}"]
            if self._user is not None:
                lines += [f"user {self._user} on >{self._password} ~* &* +@all", "user default off"]
            else:
                lines.append(f"requirepass {self._password}")
        config = node.data_dir / "redis.conf"
        config.write_text("\n".join(lines) + "\n")
        argv, preexec = with_parent_death([binary, str(config)])
        for attempt in range(1, SPAWN_TRIES + 1):
            node.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=preexec,
            )
            code = await self._until_answering(node, node.process)
            if code is None:
                return
            # Killed by a signal before it answered: without setpriv, the child of a fork in
            # a process with other threads (gRPC's) can crash before it runs redis-server.
            if code >= 0 or attempt == SPAWN_TRIES:
                raise EmbeddedRedisError(
                    f"cluster node on port {node.port} exited with code {code}; see {node.log_path}"
                )
            logger.warning("cluster node on port %d died at start (%d); again", node.port, code)

    async def _spawn_anywhere(self, binary: str, node: ClusterNode) -> None:
        """Start a new node, on another free port while the one picked was taken meanwhile
        (its own or its bus port, by another process of the host)."""
        for attempt in range(1, SPAWN_TRIES + 1):
            try:
                await self._spawn(binary, node)
                return
            except EmbeddedRedisError:
                taken = "Address already in use" in node.log_path.read_text(errors="replace")
                if not taken or attempt == SPAWN_TRIES:
                    raise
            node.log_path.unlink()
            node.port = free_node_port()

    async def _until_answering(
        self, node: ClusterNode, process: asyncio.subprocess.Process
    ) -> int | None:
        """Wait until the node answers (None), or its exit code if it ends first (bounded by
        the caller's asyncio.timeout)."""
        client = self.client(node)
        try:
            while True:
                if process.returncode is not None:
                    return process.returncode
                with contextlib.suppress(Exception):
                    node.node_id = (await client.execute("CLUSTER", "MYID")).decode()
                    return None
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def _form(self) -> None:
        clients = [self.client(node) for node in self.nodes]
        try:
            masters = self.masters()
            for index in range(len(masters)):
                first = index * SLOTS // len(masters)
                last = (index + 1) * SLOTS // len(masters)
                await clients[index].execute("CLUSTER", "ADDSLOTS", *range(first, last))
                # Distinct epochs from the start, as redis-cli sets them, so nodes agree sooner.
                await clients[index].execute("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            for node in self.nodes[1:]:
                await clients[0].execute("CLUSTER", "MEET", "127.0.0.1", node.port)
            await self._until(clients, _knows_all_nodes)
            for client, node in zip(clients, self.nodes, strict=True):
                if node.replica_of is not None:
                    master_id = self.nodes[node.replica_of].node_id
                    await client.execute("CLUSTER", "REPLICATE", master_id)
            await self._until(clients, _sees_every_slot)
        finally:
            for client in clients:
                await client.aclose()

    async def _until(self, clients: list[MultiplexedRedis], check: _Check) -> None:
        # Bounded by the caller's asyncio.timeout around start().
        while True:
            if all([await check(client, len(self.nodes)) for client in clients]):
                return
            await asyncio.sleep(0.05)

    async def _end(self, node: ClusterNode, signum: int) -> None:
        process, node.process = node.process, None
        if process is None or process.returncode is not None:
            return
        signal_child(process, signum)
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            logger.warning("cluster node on port %d ignored SIGTERM; killing", node.port)
            signal_child(process, signal.SIGKILL)
            await process.wait()


async def _knows_all_nodes(client: MultiplexedRedis, nodes: int) -> bool:
    listing = (await client.execute("CLUSTER", "NODES")).decode()
    return len([line for line in listing.splitlines() if line.strip()]) == nodes


async def _sees_every_slot(client: MultiplexedRedis, nodes: int) -> bool:
    info = _fields(await client.execute("CLUSTER", "INFO"))
    if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
        return False
    # Every replica must be attached and in sync before the cluster counts as ready.
    replication = _fields(await client.execute("INFO", "replication"))
    return replication.get("role") == "master" or replication.get("master_link_status") == "up"


def _fields(reply: bytes) -> dict[str, str]:
    """`INFO`-style `name:value` lines as a dict."""
    lines = reply.decode().split()
    return dict(line.split(":", 1) for line in lines if ":" in line)
