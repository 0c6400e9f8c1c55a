"""The call metadata the policy layer reads: the bearer token, and what policies may see."""

from __future__ import annotations

from typing import Any

import grpc

Context = grpc.aio.ServicerContext[Any, Any]
AUTHORIZATION = "authorization"
# Metadata a policy may not read: the raw token, and binary values.
HIDDEN_METADATA = frozenset({AUTHORIZATION})


def metadata_of(context: Context) -> dict[str, str]:
    """The call's text metadata as policies see it (no token, no `-bin` values)."""
    seen: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key in HIDDEN_METADATA or key.endswith("-bin") or not isinstance(value, str):
            continue
        seen[key] = value
    return seen


def authorization_of(context: Context) -> str | None:
    """The `authorization` value, if the call has one."""
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION:
            return value if isinstance(value, str) else value.decode()
    return None


__all__ = ["AUTHORIZATION", "HIDDEN_METADATA", "authorization_of", "metadata_of"]
