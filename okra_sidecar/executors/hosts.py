"""Host overrides: send calls for a named host to another address (OKRA_HTTP_HOSTS).

Tests and the conformance kit stand in local servers for external endpoints with it, and a
deployment can point a public name at an internal address. The map is `host=target` pairs
separated by commas, where target is a base URL (`http://127.0.0.1:8080`) or `host:port`
(plain http): `petstore.swagger.io=127.0.0.1:8080,httpbin.org=http://127.0.0.1:8081`.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

__all__ = ["HostMap", "normalize_target"]


def normalize_target(target: str) -> str:
    """A target as a base URL: `host:port` means plain http.

    Raises:
        ValueError: the target names no host.
    """
    if "://" not in target:
        target = "http://" + target
    parts = urlsplit(target)
    if not parts.hostname:
        raise ValueError(f"{target!r} names no host")
    return f"{parts.scheme}://{parts.netloc}"


class HostMap:
    """Rewrites URLs and gRPC targets whose host has an override."""

    def __init__(self, hosts: Iterable[tuple[str, str]] = ()) -> None:
        self._hosts = {host.lower(): normalize_target(target) for host, target in hosts}

    def __bool__(self) -> bool:
        return bool(self._hosts)

    def url(self, uri: str) -> str:
        """`uri` with scheme, host and port replaced when its host has an override."""
        if not self._hosts:
            return uri
        parts = urlsplit(uri)
        base = self._hosts.get((parts.hostname or "").lower())
        if base is None:
            return uri
        target = urlsplit(base)
        return urlunsplit((target.scheme, target.netloc, parts.path, parts.query, parts.fragment))

    def target(self, host: str, port: int | None) -> str:
        """A gRPC `host:port` target, overridden when the host has one."""
        base = self._hosts.get(host.lower())
        if base is not None:
            return urlsplit(base).netloc
        return f"{host}:{port}" if port else host
