"""The admin port: Prometheus' `GET /metrics`, the probes and the web console, off unless
configured. `/healthz` (liveness) and `/readyz` (readiness) answer 200 or 503 with what the gRPC
health service reports, for load balancers that cannot speak gRPC health.

An aiohttp application in the sidecar's own event loop: it starts and stops with the sidecar,
binds port 0 in tests, and serves the console's server-sent events beside the scrapes. The
exposition is prometheus_client's, negotiated as its own servers do (OpenMetrics when the
scraper's `Accept` asks for it, gzip when `Accept-Encoding` allows) and built in a worker
thread, so collecting a large registry does not stall the calls served on this loop.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from okra_sidecar.console.app import console_routes
from okra_sidecar.console.gateway import ConsoleGateway

logger = logging.getLogger(__name__)

__all__ = ["AdminServer"]

MAX_REQUEST_BYTES = 1 << 20
# Requests still running when the sidecar stops get this long to finish.
SHUTDOWN_TIMEOUT_S = 1.0


def exposition(
    registry: CollectorRegistry, *, accept: str, accept_encoding: str
) -> tuple[bytes, dict[str, str]]:
    """The scrape's body and headers for these request headers. Blocks; run it in a thread."""
    encoder, content_type = choose_encoder(accept)
    body = encoder(registry)
    headers = {"Content-Type": content_type}
    if gzip_accepted(accept_encoding):
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return body, headers


class Probes(Protocol):
    """Liveness and readiness as the health service reports them (api/readiness.py)."""

    @property
    def live(self) -> bool: ...

    @property
    def ready(self) -> bool: ...


class AdminServer:
    """Serves `/metrics` (when there is a registry) and `/console` on HOST:PORT.

    `port` is the one bound.
    """

    def __init__(
        self,
        *,
        listen: str,
        registry: CollectorRegistry | None = None,
        console: ConsoleGateway | None = None,
        probes: Probes | None = None,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._registry = registry
        self._console = console
        self._probes = probes
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        assert self._registry is not None  # the route exists only with a registry
        body, headers = await asyncio.to_thread(
            exposition,
            self._registry,
            accept=request.headers.get("Accept", ""),
            accept_encoding=request.headers.get("Accept-Encoding", ""),
        )
        return web.Response(body=body, headers=headers)

    def _application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        if self._registry is not None:
            app.router.add_get("/metrics", self._metrics)
        if self._probes is not None:
            app.router.add_get("/healthz", self._healthz)
            app.router.add_get("/readyz", self._readyz)
        if self._console is not None:
            console_routes(app, self._console)
        else:
            app.router.add_get("/console{tail:.*}", self._no_console)
        return app

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        assert self._probes is not None  # the route exists only with probes
        if self._probes.live:
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not live\n")

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        assert self._probes is not None
        if self._probes.ready:
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready: starting, or Redis is unreachable\n")

    async def _no_console(self, request: web.Request) -> web.StreamResponse:
        if self._probes is not None and not self._probes.ready:
            return web.Response(
                status=503,
                text="The console is not available yet: the sidecar is starting or cannot "
                "reach Redis (see /readyz). Retry shortly.\n",
            )
        return web.Response(
            status=501,
            text="The console is not available while the gRPC port serves TLS: it calls that "
            "port as its user and does not dial TLS yet. Use the okra command with --tls-ca.\n",
        )

    async def start(self) -> None:
        # No access log: the sidecar's own logs and metrics say what matters.
        self._runner = web.AppRunner(
            self._application(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            # Open event streams end at once; the browser's EventSource reconnects elsewhere.
            await self._runner.shutdown()
            await self._runner.cleanup()
            self._runner = None
        if self._console is not None:
            await self._console.close()
