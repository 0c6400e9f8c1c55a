"""Network namespaces for the partition fault: Redis, each sidecar and the driver apart.

The suite makes one namespace for the driver (this process, the workload, the stub and the
worker), one for Redis and one per sidecar, joined by veth pairs: driver-Redis, driver-sidecar
and sidecar-Redis. None has a default route, so nothing in them reaches anything but each
other. A partition drops every packet both ways on one sidecar's link to Redis (a `blackhole`
qdisc on each end): its TCP connections stay open and hear nothing, as when a switch fails,
while its clients still reach it. Needs root and `ip netns`; `unavailable()` says why not.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass

__all__ = ["Topology", "unavailable"]

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(("-n", netns) if netns else ()), *args]
    subprocess.run(command, check=True, capture_output=True, timeout=10)


def unavailable() -> str | None:
    """Why this machine cannot run the partition fault, or None when it can."""
    if os.geteuid() != 0:
        return "it needs root (to create network namespaces)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "it needs the `ip` and `tc` commands (iproute2)"
    probe = f"okra-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"`ip netns add` failed here: {_why(exc)}"
    try:
        _ip("link", "add", "okp0", "type", "veth", "peer", "name", "okp1", netns=probe)
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                probe,
                "tc",
                "qdisc",
                "add",
                "dev",
                "okp0",
                "root",
                "blackhole",
            ],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"veth pairs or the blackhole qdisc are not available: {_why(exc)}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return (exc.stderr or b"").decode(errors="replace").strip() or str(exc)
    return str(exc)


@dataclass(frozen=True)
class _Link:
    """A veth pair: one end in each namespace, a /30 between them."""

    left_ns: str
    left_dev: str
    left_ip: str
    right_ns: str
    right_dev: str
    right_ip: str


class Topology:
    """The namespaces and links of one run; `close()` deletes them (and their links)."""

    def __init__(self, sidecars: int) -> None:
        run = uuid.uuid4().hex[:6]
        self.driver_ns = f"okra-{run}-d"
        self.redis_ns = f"okra-{run}-r"
        self.sidecar_ns = [f"okra-{run}-s{i}" for i in range(sidecars)]
        # Interface names are at most 15 bytes, and live in a namespace of their own.
        self._redis_link = _Link(
            self.driver_ns, "tor", "10.213.1.1", self.redis_ns, "tod", "10.213.1.2"
        )
        self._client_links = [
            _Link(self.driver_ns, f"tos{i}", f"10.213.{10 + i}.1", ns, "tod", f"10.213.{10 + i}.2")
            for i, ns in enumerate(self.sidecar_ns)
        ]
        self._partition_links = [
            _Link(self.redis_ns, f"tos{i}", f"10.213.{20 + i}.1", ns, "tor", f"10.213.{20 + i}.2")
            for i, ns in enumerate(self.sidecar_ns)
        ]
        self._made: list[str] = []

    def create(self) -> None:
        for ns in (self.driver_ns, self.redis_ns, *self.sidecar_ns):
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("link", "set", "lo", "up", netns=ns)
        for link in (self._redis_link, *self._client_links, *self._partition_links):
            # Made inside the left namespace, so no name ever appears in the host's.
            _ip("link", "add", link.left_dev, "type", "veth", "peer", "name", link.right_dev,
                "netns", link.right_ns, netns=link.left_ns)  # fmt: skip
            for ns, dev, ip in ((link.left_ns, link.left_dev, link.left_ip),
                                (link.right_ns, link.right_dev, link.right_ip)):  # fmt: skip
                _ip("addr", "add", f"{ip}/30", "dev", dev, netns=ns)
                _ip("link", "set", dev, "up", netns=ns)

    def enter_driver(self) -> None:
        """Move this process (its main thread, before any other starts) into the driver's
        namespace: everything it starts or connects to from now on is in there."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"{NETNS_DIR}/{self.driver_ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns into {self.driver_ns}: {os.strerror(errno)}")
        finally:
            os.close(fd)

    def redis_host(self) -> str:
        """Redis as the driver reaches it."""
        return self._redis_link.right_ip

    def sidecar_host(self, index: int) -> str:
        """Sidecar `index` as the driver's clients reach it (and where it listens)."""
        return self._client_links[index].right_ip

    def driver_host_for(self, index: int) -> str:
        """The driver (its HTTP stub) as sidecar `index` reaches it."""
        return self._client_links[index].left_ip

    def redis_host_for(self, index: int) -> str:
        """Redis as sidecar `index` reaches it: over the link a partition cuts."""
        return self._partition_links[index].left_ip

    def exec_prefix(self, netns: str) -> list[str]:
        """A command prefix that runs a program in `netns` (`ip netns exec` execs it, so the
        pid started is the program's own)."""
        return ["ip", "netns", "exec", netns]

    def cut(self, index: int) -> None:
        """Drop every packet between sidecar `index` and Redis, both ways."""
        self._qdisc(index, "replace", "blackhole")

    def heal(self, index: int) -> None:
        self._qdisc(index, "del")

    def _qdisc(self, index: int, action: str, *kind: str) -> None:
        link = self._partition_links[index]
        for ns, dev in ((link.left_ns, link.left_dev), (link.right_ns, link.right_dev)):
            subprocess.run(
                [*self.exec_prefix(ns), "tc", "qdisc", action, "dev", dev, "root", *kind],
                check=True,
                capture_output=True,
                timeout=10,
            )

    def close(self) -> None:
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._made.clear()
