"""The composition root: builds the store, engine and gRPC server, and shuts them down in order.

`sidecar.py` starts a sidecar and stops it (`start_sidecar`, `Sidecar.stop`); `parts.py` builds
what the serving process and the engine children share (Redis client, store, policy layer,
runner); `grpc_server.py` builds the gRPC servers with their interceptors; `commands.py` is
what the command line runs (`serve`, `run_engine`, `migrate`).
"""

from __future__ import annotations

from okra_sidecar.server.commands import (
    migrate,
    print_hints,
    run_engine,
    serve,
    warm_engine_process,
)
from okra_sidecar.server.grpc_server import SERVICE_NAME, build_server
from okra_sidecar.server.parts import redis_client
from okra_sidecar.server.sidecar import Sidecar, start_sidecar

__all__ = [
    "SERVICE_NAME",
    "Sidecar",
    "build_server",
    "migrate",
    "print_hints",
    "redis_client",
    "run_engine",
    "serve",
    "start_sidecar",
    "warm_engine_process",
]
