"""Headless Chromium driven over the DevTools protocol: load a page, run script, screenshot.

Debian's `chromium` package is all it needs; tests that use it skip with a reason when it is
not installed (CI installs it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0
POLL_S = 0.1
# The flags that keep Chromium off the network and quiet in a sandboxless container.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1440,1000",
    "--remote-debugging-port=0",
)


class Browser:
    """One page of a running Chromium, spoken to over its DevTools WebSocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._socket.send_json({"id": call_id, "method": method, "params": params})
        async with asyncio.timeout(CALL_TIMEOUT_S):
            async for message in self._socket:
                data = json.loads(message.data)
                if data.get("id") == call_id:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    return dict(data.get("result", {}))
                self._events.append(data)
        raise RuntimeError(f"the browser closed during {method}")

    async def _event(self, method: str) -> None:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            while True:
                for index, event in enumerate(self._events):
                    if event.get("method") == method:
                        del self._events[: index + 1]
                        return
                message = await self._socket.receive()
                self._events.append(json.loads(message.data))

    async def open(self, url: str) -> None:
        """Load `url` and wait for its load event."""
        self._events.clear()
        await self.call("Page.navigate", url=url)
        await self._event("Page.loadEventFired")

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def submit(self, form_selector: str, fields: dict[str, str]) -> None:
        """Fill a form's fields, accept its confirmation, submit it and wait for the next page."""
        script = (
            "window.confirm = () => true;"
            f"const form = document.querySelector({json.dumps(form_selector)});"
            f"for (const [name, value] of Object.entries({json.dumps(fields)}))"
            "  form.elements[name].value = value;"
            "form.requestSubmit();"
        )
        self._events.clear()
        await self.evaluate(script)
        await self._event("Page.loadEventFired")

    async def wait_for(self, expression: str, timeout_s: float = 20.0) -> None:
        """Until `expression` is true in the page (a live update, say)."""
        for _ in range(int(timeout_s / POLL_S)):
            if await self.evaluate(expression):
                return
            await asyncio.sleep(POLL_S)
        raise TimeoutError(f"still false after {timeout_s:g}s: {expression}")

    async def screenshot(self, path: Path) -> None:
        result = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(result["data"]))


def _read_if_there(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


async def _devtools_port(port_file: Path) -> str:
    """The port Chromium chose, from the file it writes once it listens."""
    for _ in range(int(START_TIMEOUT_S / POLL_S)):
        written = await asyncio.to_thread(_read_if_there, port_file)
        if written:
            return written.split()[0]
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"Chromium did not start within {START_TIMEOUT_S:g}s")


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium with one blank page, closed on exit."""
    assert CHROMIUM is not None
    # Chromium's helper processes may still write to the profile as they die.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port = await _devtools_port(Path(profile) / "DevToolsActivePort")
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as reply:
                    targets = await reply.json()
                url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                async with session.ws_connect(url, max_msg_size=0) as socket:
                    browser = Browser(socket)
                    await browser.call("Page.enable")
                    yield browser
        finally:
            # The whole group: the browser and its renderer and helper processes.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
