"""Liveness and readiness: what the health service reports, and the gate before readiness.

Liveness is the health service's overall name (""): SERVING while the process works, so a
probe restarts only a sidecar that stopped answering. Readiness is the name of each API
service (`okra.workflow.v1.WorkflowHostAPI`, ...): SERVING once the start has finished and
while Redis answers, so a Redis outage takes pods out of rotation and restarts none of them.

When Redis does not answer at start, the start waits for it (`wait_for`), and meanwhile
`WaitingServers` hold the gRPC port (health, and UNAVAILABLE for every other rpc) and the admin
port (the probes), so that probes reach a sidecar that has not finished starting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.telemetry.admin import AdminServer

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

T = TypeVar("T")

logger = logging.getLogger(__name__)

LIVENESS = ""
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
STARTING_MESSAGE = (
    "the sidecar is starting and waits for Redis; retry shortly (its health service reports "
    "readiness)"
)


class HealthReporter:
    """Sets liveness and readiness on the health service and remembers them for /healthz."""

    def __init__(self, servicer: health_aio.HealthServicer, readiness: Iterable[str]) -> None:
        self.servicer = servicer
        self.readiness_names = tuple(readiness)
        self.live = False
        self.ready = False

    async def set_live(self, live: bool) -> None:
        self.live = live
        await self.servicer.set(LIVENESS, SERVING if live else NOT_SERVING)

    async def set_ready(self, ready: bool) -> None:
        self.ready = ready
        for name in self.readiness_names:
            await self.servicer.set(name, SERVING if ready else NOT_SERVING)

    async def shut_down(self) -> None:
        """Everything NOT_SERVING for good, as a stopping sidecar reports it."""
        self.live = self.ready = False
        await self.servicer.enter_graceful_shutdown()


class _Refusing(grpc.GenericRpcHandler):
    """Every method not otherwise served: UNAVAILABLE, with `message`."""

    def __init__(self, message: str) -> None:
        async def refuse(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)

        # Unary whatever the method is: the call is refused before any message would matter.
        self._handler: Handler = grpc.unary_unary_rpc_method_handler(refuse)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        return self._handler


@dataclass
class WaitingServers:
    """The gRPC and admin ports while the start waits for Redis; `listen` and `admin_listen`
    are the addresses they bound, for the real servers to take over."""

    server: grpc.aio.Server
    listen: str
    admin: AdminServer | None
    admin_listen: str | None

    @classmethod
    async def start(
        cls,
        *,
        health_servicer: health_aio.HealthServicer,
        listen: str,
        credentials: grpc.ServerCredentials | None,
        admin_listen: str | None,
        probes: HealthReporter,
    ) -> WaitingServers:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        server.add_generic_rpc_handlers((_Refusing(STARTING_MESSAGE),))
        if credentials is not None:
            port = server.add_secure_port(listen, credentials)
        else:
            port = server.add_insecure_port(listen)
        await server.start()
        admin = None
        if admin_listen is not None:
            admin = AdminServer(listen=admin_listen, probes=probes)
            try:
                await admin.start()
            except BaseException:
                await server.stop(None)
                raise
            admin_listen = f"{admin_listen.rpartition(':')[0]}:{admin.port}"
        return cls(server, f"{listen.rpartition(':')[0]}:{port}", admin, admin_listen)

    async def stop(self) -> None:
        """Close both servers; once closed, nothing (the start closes them on either path)."""
        await self.server.stop(None)
        admin, self.admin = self.admin, None
        if admin is not None:
            await admin.stop()


async def wait_for(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    wait_s: float | None,
    clock: Callable[[], float] | None = None,
) -> T:
    """Call `attempt` until it stops raising StoreUnavailableError, with exponential backoff.

    Args:
        attempt: What needs Redis, e.g. opening the store; its result is returned.
        what: Names what is awaited in the log and in the error.
        wait_s: Give up after this many seconds (the `redisWait` setting); None waits on.

    Raises:
        StoreUnavailableError: still unreachable after `wait_s`.
    """
    now = clock or asyncio.get_running_loop().time
    started = now()
    delay = FIRST_BACKOFF_S
    attempts = 0
    while True:
        try:
            result = await attempt()
        except StoreUnavailableError as exc:
            attempts += 1
            waited = now() - started
            if wait_s is not None and waited + delay > wait_s:
                raise
            if attempts == 1 or delay == MAX_BACKOFF_S:
                logger.warning(
                    "waiting for %s, not ready meanwhile (--redis-wait bounds the wait): %s",
                    what,
                    exc,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
            continue
        if attempts:
            logger.info("%s answers after %.1fs; starting", what, now() - started)
        return result


__all__ = ["LIVENESS", "STARTING_MESSAGE", "HealthReporter", "WaitingServers", "wait_for"]
