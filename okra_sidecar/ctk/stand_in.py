"""Local stand-ins for the external endpoints the CTK scenarios call.

The scenarios call the Swagger petstore (`petstore.swagger.io`, plain HTTP and its OpenAPI
document) and httpbin (`httpbin.org`, basic authentication). The runner routes both hosts
here through the sidecar's host overrides (OKRA_HTTP_HOSTS), so the kit runs offline and gives
the same answers every time.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["STAND_IN_HOSTS", "stand_in_server"]

STAND_IN_HOSTS = ("petstore.swagger.io", "httpbin.org")
PETS = {
    1: {"id": 1, "name": "Milou", "status": "available", "category": {"id": 1, "name": "Dogs"}},
    2: {
        "id": 2,
        "name": "Rantanplan",
        "status": "available",
        "category": {"id": 1, "name": "Dogs"},
    },
    3: {"id": 3, "name": "Garfield", "status": "sold", "category": {"id": 2, "name": "Cats"}},
}
SWAGGER = {
    "swagger": "2.0",
    "info": {"title": "Swagger Petstore (stand-in)", "version": "1.0.7"},
    "host": "petstore.swagger.io",
    "basePath": "/v2",
    "schemes": ["https", "http"],
    "paths": {
        "/pet/findByStatus": {
            "get": {
                "operationId": "findPetsByStatus",
                "produces": ["application/json"],
                "parameters": [
                    {"name": "status", "in": "query", "required": True, "type": "array"}
                ],
                "responses": {"200": {"description": "successful operation"}},
            }
        },
        "/pet/{petId}": {
            "get": {
                "operationId": "getPetById",
                "produces": ["application/json"],
                "parameters": [
                    {"name": "petId", "in": "path", "required": True, "type": "integer"}
                ],
                "responses": {"200": {"description": "successful operation"}},
            }
        },
    },
}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path == "/v2/swagger.json":
            self._json(200, SWAGGER)
        elif path == "/v2/pet/findByStatus":
            wanted = set(parse_qs(url.query).get("status", ["available"]))
            self._json(200, [pet for pet in PETS.values() if pet["status"] in wanted])
        elif match := re.fullmatch(r"/v2/pet/(\d+)", path):
            pet = PETS.get(int(match[1]))
            if pet is None:
                self._json(404, {"code": 1, "type": "error", "message": "Pet not found"})
            else:
                self._json(200, pet)
        elif path.startswith("/v2/pet/"):
            self._json(
                404, {"code": 404, "type": "unknown", "message": "java.lang.NumberFormatException"}
            )
        elif match := re.fullmatch(r"/basic-auth/([^/]+)/([^/]+)", path):
            expected = base64.b64encode(f"{match[1]}:{match[2]}".encode()).decode()
            if self.headers.get("Authorization") == f"Basic {expected}":
                self._json(200, {"authenticated": True, "user": match[1]})
            else:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="Fake Realm"')
                self.send_header("Content-Length", "0")
                self.end_headers()
        else:
            self._json(404, {"message": f"no stand-in for {path}"})


@contextmanager
def stand_in_server() -> Iterator[str]:
    """The stand-in on a free local port; yields its address (host:port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="ctk-stand-in", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
