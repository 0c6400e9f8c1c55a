"""A local HTTP server for executor tests: canned routes, each request recorded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.delay_s = 0.0
        self.lock = threading.Lock()


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with recorder.lock:
                recorder.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "body": body.decode(),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
            if self.path.startswith("/slow"):
                time.sleep(recorder.delay_s)
            if self.path.startswith("/pets/"):
                self._reply(200, {"id": int(self.path.rsplit("/", 1)[1]), "name": "Rex"})
            elif self.path.startswith("/echo"):
                self._reply(200, {"method": self.command, "path": self.path, "body": body.decode()})
            elif self.path.startswith("/text"):
                self._reply(200, b"plain words", "text/plain")
            elif self.path.startswith("/moved"):
                self.send_response(302)
                self.send_header("Location", "/pets/7")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path.startswith("/slow"):
                self._reply(200, {"slow": True})
            else:
                self._reply(404, {"error": "no such thing"})

        do_GET = _handle  # noqa: N815 - the stdlib's names
        do_POST = _handle  # noqa: N815
        do_PUT = _handle  # noqa: N815
        do_DELETE = _handle  # noqa: N815

    return Handler


@contextmanager
def http_stand_in() -> Iterator[tuple[str, Recorder]]:
    """(base URL, recorder) of a server on a free port, stopped on exit."""
    recorder = Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", recorder
    finally:
        server.shutdown()
        server.server_close()
