"""The start-up warning for a sidecar that anyone on the network may call."""

from __future__ import annotations

import ipaddress

from okra_sidecar.config import Settings

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


def is_loopback(listen: str) -> bool:
    """Whether HOST:PORT (or a unix socket) is reachable from this host only."""
    if listen.startswith("unix:"):
        return True
    host = listen.rpartition(":")[0].strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or a wildcard address: assume the network can reach it


def exposure_warning(settings: Settings) -> str | None:
    """What is at risk when the gRPC port is open to the network unprotected; None if not."""
    listen = settings.server.listen
    if settings.server.insecure or is_loopback(listen):
        return None
    if settings.tls.enabled or settings.auth.mode == "required":
        return None
    return (
        f"listening on {listen} without TLS and without authMode: required: anyone who can "
        "reach this port can run, signal and cancel workflows and read their input and "
        "output, in plaintext. Listen on 127.0.0.1, or set tlsCertFile/tlsKeyFile "
        "(--tls-cert/--tls-key) or authMode: required; set insecure: true if this is meant"
    )


__all__ = ["exposure_warning", "is_loopback"]
