"""Start-up checks of `serve`: a refusal of the environment as one line naming the setting."""

from __future__ import annotations

import contextlib
import errno
import socket
from urllib.parse import urlsplit, urlunsplit

from okra_sidecar.errors import StartupError

# Where each address comes from, as the person who set it knows it.
LISTEN_SETTING = "--listen (OKRA_LISTEN)"
ADMIN_LISTEN_SETTING = "--admin-listen (OKRA_ADMIN_LISTEN)"
REDIS_URL_SETTING = "--redis-url (OKRA_REDIS_URL)"
REDIS_WAIT_SETTING = "--redis-wait (OKRA_REDIS_WAIT)"


def redacted_url(url: str) -> str:
    """`url` without its password, fit for a message or a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def check_listen(listen: str, *, setting: str = LISTEN_SETTING) -> None:
    """Raise StartupError if HOST:PORT cannot be bound, before anything else starts.

    gRPC's own bind failure is a RuntimeError after a C-core log line, with no word of which
    setting to change; a plain socket finds the same refusal first and says so.
    """
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if int(port_text) == 0:
        return  # any free port will do
    try:
        addresses = socket.getaddrinfo(
            host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {listen}: {exc.strerror}; check {setting}") from exc
    failures: list[OSError] = []
    for family, kind, proto, _, address in addresses:
        with contextlib.closing(socket.socket(family, kind, proto)) as probe:
            # As gRPC binds: a port in TIME_WAIT after a restart is free to take.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                failures.append(exc)
                continue
        return  # gRPC needs one of the resolved addresses, as here
    if failures:
        raise StartupError(describe_bind_failure(listen, failures[0], setting)) from failures[0]


def describe_bind_failure(listen: str, exc: OSError, setting: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {listen}: the port is in use (another sidecar?); "
            f"stop that process or choose another port with {setting}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {listen}: no such address on this machine; check {setting}"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {listen}: permission denied (a port below 1024?); check {setting}"
    return f"cannot listen on {listen}: {exc.strerror}; check {setting}"


def unreachable_redis(
    url: str, cause: BaseException, *, waited_s: float | None = None
) -> StartupError:
    """The error for a Redis that does not answer when the sidecar starts.

    `waited_s`: how long the start waited for it (--redis-wait), when it did.
    """
    reason = str(cause.__cause__ or cause).rstrip(".")
    waited = f" (waited {waited_s:g}s: {REDIS_WAIT_SETTING})" if waited_s is not None else ""
    return StartupError(
        f"cannot reach Redis at {redacted_url(url)} ({reason}){waited}; start it, or point "
        f"{REDIS_URL_SETTING} at a Redis that runs (leave it unset for the embedded one)"
    )


__all__ = [
    "ADMIN_LISTEN_SETTING",
    "LISTEN_SETTING",
    "REDIS_URL_SETTING",
    "check_listen",
    "redacted_url",
    "unreachable_redis",
]
