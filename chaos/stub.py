"""The outside world of the workload: an HTTP service and a task worker that count each call."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web

from okra_sidecar.worker import TaskWorker

__all__ = ["CountingService", "counting_worker"]


class CountingService:
    """`GET /call/<key>` answers `{"key": key}` and counts the calls per key."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self.address = ""
        self.port = 0

    async def _call(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        self.calls[key] += 1
        return web.json_response({"key": key})

    async def start(self, host: str = "127.0.0.1") -> None:
        """Listen on `host` ("0.0.0.0" inside the driver's namespace, which no route leaves)."""
        app = web.Application()
        app.router.add_get("/call/{key}", self._call)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.address = f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def counting_worker(target: str, calls: Counter[str]) -> TaskWorker:
    """A worker for `call: chaos-work` that counts the tasks it ran per key."""
    worker = TaskWorker(target=target, service="chaos", heartbeat_s=0.5)

    @worker.task("chaos-work")
    async def work(arguments: Any) -> Any:
        calls[str(arguments["key"])] += 1
        return {"key": arguments["key"]}

    return worker
