"""The gRPC health check a container runtime runs: `okra-sidecar health`."""

from __future__ import annotations

from grpc_health.v1 import health_pb2, health_pb2_grpc
from okra_client.tls import ClientTls, open_sync_channel

__all__ = ["check_health", "local_target"]

WILDCARD_HOSTS = frozenset({"0.0.0.0", "[::]", "::", ""})


def local_target(listen: str) -> str:
    """Where to reach a sidecar listening on `listen` from the same host or pod.

    A wildcard listen address (`0.0.0.0:50051`, `[::]:50051`) is dialled on 127.0.0.1.
    """
    host, _, port = listen.rpartition(":")
    return f"127.0.0.1:{port}" if host in WILDCARD_HOSTS else listen


def check_health(
    target: str, *, service: str = "", timeout_s: float = 3.0, tls: ClientTls | None = None
) -> str:
    """The serving status of `service` ("" is the whole server), e.g. `SERVING`.

    Raises:
        grpc.RpcError: the sidecar did not answer (UNAVAILABLE, DEADLINE_EXCEEDED) or does
            not know the service (NOT_FOUND).
    """
    with open_sync_channel(target, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
