"""OutboundGuard: where a workflow's HTTP, OpenAPI and gRPC calls may go.

A workflow's endpoint may come from its input (`endpoint: ${ .url }`), so the caller of Run
chooses it: without a guard, a call could read the sidecar's own Redis or a cloud metadata
service and hand the answer back in the instance's output. Every call's host is resolved and
each address checked against the denied patterns (by default link-local and the cloud metadata
addresses, and the sidecar's own Redis) and, when any are set, the allowed ones. The HTTP
client connects only to the addresses that were checked (`GuardedBackend`), so a name that
resolves differently the second time cannot smuggle a denied address in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpcore
import httpx

from okra_sidecar.executors.problems import EffectFailedError, problem

__all__ = [
    "DEFAULT_DENIED",
    "GuardedBackend",
    "OutboundGuard",
    "guarded_client",
    "redis_endpoints",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Link-local (where the cloud metadata services live) and AWS's IPv6 metadata address.
DEFAULT_DENIED = ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")
REFUSED_TITLE = "Outbound call refused"


def _plain(address: IpAddress) -> IpAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _local(address: IpAddress) -> bool:
    """Whether connecting to `address` reaches this machine (0.0.0.0 does, on Linux)."""
    return address.is_loopback or address.is_unspecified


@dataclass(frozen=True)
class _Pattern:
    text: str
    network: IpNetwork | None
    host: re.Pattern[str] | None

    @classmethod
    def of(cls, text: str) -> _Pattern:
        try:
            return cls(text, ipaddress.ip_network(text, strict=False), None)
        except ValueError:
            glob = re.escape(text.lower()).replace(r"\*", ".*")
            return cls(text, None, re.compile(glob))

    def matches(self, host: str, address: IpAddress) -> bool:
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        return self.host is not None and self.host.fullmatch(host.lower().rstrip(".")) is not None


class OutboundGuard:
    """Checks a call's destination after resolving it; refusals fail the task.

    Args:
        allow: host globs and CIDRs; when any are given, every address must match one.
        deny: more patterns refused besides DEFAULT_DENIED.
        private_endpoints: (host, port) pairs refused whatever the lists say: the sidecar's
            own Redis. Names are resolved on first use; a local address stands for every one.
        file_roots: the folders `file://` proto files may be read from.
    """

    def __init__(
        self,
        *,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        private_endpoints: Iterable[tuple[str, int]] = (),
        file_roots: Iterable[Path] = (),
    ) -> None:
        self._allow = tuple(_Pattern.of(p) for p in allow)
        self._deny = tuple(_Pattern.of(p) for p in (*DEFAULT_DENIED, *deny))
        self._private_names = tuple(private_endpoints)
        self._private: set[tuple[IpAddress, int]] | None = None
        self._private_local_ports: set[int] = set()
        self.file_roots = tuple(root.resolve() for root in file_roots)

    async def _lookup(self, name: str, port: int) -> list[IpAddress]:
        try:
            return [ipaddress.ip_address(name)]
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                name, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise EffectFailedError(
                problem("communication", 503, f"cannot resolve {name}: {exc}")
            ) from None
        return list(dict.fromkeys(ipaddress.ip_address(i[4][0]) for i in infos))

    async def _private_endpoints(self) -> set[tuple[IpAddress, int]]:
        if self._private is None:
            private: set[tuple[IpAddress, int]] = set()
            for host, port in self._private_names:
                try:
                    addresses = await self._lookup(host, port)
                except EffectFailedError:
                    continue  # Redis's name does not resolve now; its address is checked later
                for address in map(_plain, addresses):
                    if _local(address):
                        self._private_local_ports.add(port)
                    private.add((address, port))
            if len(private) == len(self._private_names) or not self._private_names:
                self._private = private
            return private
        return self._private

    @staticmethod
    def refused(target: str, reason: str) -> EffectFailedError:
        return EffectFailedError(
            problem(
                "authorization",
                403,
                f"the sidecar refused to call {target}: {reason}; the outboundAllow and "
                "outboundDeny settings say where workflows may call",
                title=REFUSED_TITLE,
            )
        )

    def _problem(
        self, host: str, address: IpAddress, port: int, private: set[tuple[IpAddress, int]]
    ) -> str | None:
        if (address, port) in private or (_local(address) and port in self._private_local_ports):
            return f"{address} port {port} is the sidecar's own Redis"
        for pattern in self._deny:
            if pattern.matches(host, address):
                return f"{host} ({address}) matches the denied pattern {pattern.text}"
        if self._allow and not any(p.matches(host, address) for p in self._allow):
            listed = ", ".join(p.text for p in self._allow)
            return f"{host} ({address}) matches no allowed pattern ({listed})"
        return None

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of `host` that may be called on `port`, every one of them checked.

        Raises:
            EffectFailedError: an address is refused (authorization, 403), or the name does
                not resolve (communication, 503).
        """
        name = host.strip("[]")
        private = await self._private_endpoints()
        addresses = await self._lookup(name, port)
        for address in addresses:
            reason = self._problem(name, _plain(address), port, private)
            if reason is not None:
                raise self.refused(f"{name}:{port}", reason)
        return [str(a) for a in addresses]

    async def check_url(self, url: str) -> None:
        """Refuse a URL whose host may not be called (the HTTP client checks again)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.refused(url, "only http and https URLs with a host may be called")
        await self.resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))

    def check_file(self, path: Path) -> Path:
        """`path`, resolved, if it lies in one of the file roots."""
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root) for root in self.file_roots):
            roots = ", ".join(str(r) for r in self.file_roots) or "none"
            raise self.refused(
                f"file {path}", f"proto files are read only from the workflows folder ({roots})"
            )
        return resolved


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the guard checked."""

    def __init__(self, guard: OutboundGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # TLS still verifies `host`: httpcore starts it with the URL's name, not the address.
        addresses = await self._guard.resolve(host, port)
        return await self._inner.connect_tcp(
            addresses[0],
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise self._guard.refused(path, "workflows may not call unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def redis_endpoints(url: str | None) -> list[tuple[str, int]]:
    """The (host, port) a Redis URL connects to, every seed of a Cluster URL
    (`redis://h1:7000,h2:7001`); none for a unix socket (or no URL)."""
    if not url:
        return []
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return []
    endpoints = []
    for host in parts.netloc.rpartition("@")[2].split(","):
        seed = urlsplit(f"{parts.scheme}://{host}")
        if seed.hostname:
            endpoints.append((seed.hostname, seed.port or 6379))
    return endpoints


def guarded_client(guard: OutboundGuard, *, follow_redirects: bool = False) -> httpx.AsyncClient:
    """An httpx client whose every connection goes through the guard; no proxy from the
    environment (the guard checks the destination, a proxy would hide it)."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx has no public hook for the network backend: give its transport a pool with ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        network_backend=GuardedBackend(guard),
    )
    return httpx.AsyncClient(transport=transport, follow_redirects=follow_redirects)
