"""How the console reaches the sidecar: its own gRPC API over loopback, with the user's token.

Going through the gRPC port rather than calling the servicer in-process means a console user
is a caller like any other: the same authentication, the same policies, the same audit.
"""

from __future__ import annotations

import grpc
from okra_client import OkraClient

from okra_sidecar.engine.runtime.registry import WorkflowRegistry

__all__ = ["ConsoleGateway", "loopback_target"]

# Each console request is one or a few quick reads or writes.
CALL_TIMEOUT_S = 10.0


def loopback_target(listen: str, port: int) -> str:
    """Where the sidecar's gRPC port answers this process: loopback when it listens on all."""
    host = listen.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ConsoleGateway:
    """One loopback channel to the gRPC port, and the registry for the definitions' diagrams."""

    def __init__(self, *, target: str, registry: WorkflowRegistry) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self.registry = registry

    def client(self, token: str | None) -> OkraClient:
        """A client that calls as the console user: their bearer token, if they gave one."""
        metadata = [("authorization", f"Bearer {token}")] if token else []
        return OkraClient(channel=self._channel, timeout_s=CALL_TIMEOUT_S, metadata=metadata)

    async def close(self) -> None:
        await self._channel.close()
