"""OpenApiCaller: the `call: openapi` effect, an HTTP call built from an operation by its id.

The document (OpenAPI 3 or Swagger 2, JSON or YAML) is fetched once per sidecar and cached.
Parameters fill the operation's path, query and header parameters by name; a Swagger 2 `body`
parameter, or an OpenAPI 3 request body, takes the parameter named like it (`body` by default).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
import yaml

from okra_sidecar.executors.hosts import HostMap
from okra_sidecar.executors.http import HttpCaller
from okra_sidecar.executors.outbound import OutboundGuard, guarded_client
from okra_sidecar.executors.problems import EffectFailedError, problem
from okra_sidecar.parsing import ParseLimitError, ParseLimits, load_yaml

__all__ = ["OpenApiCaller"]

# Published OpenAPI documents run to megabytes and nest deeply, but need few aliases.
OPENAPI_LIMITS = ParseLimits(max_bytes=16 * 1024 * 1024, max_depth=128, max_nodes=5_000_000)
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _document_uri(document: Any) -> str:
    if isinstance(document, dict):
        endpoint = document.get("endpoint", document.get("uri"))
        if isinstance(endpoint, dict):
            endpoint = endpoint.get("uri")
        return str(endpoint or "")
    return str(document or "")


def find_operation(spec: dict[str, Any], operation_id: str) -> tuple[str, str, dict[str, Any]]:
    """(path, method, operation) for `operation_id`, with path-level parameters merged in.

    Raises:
        EffectFailedError: the document has no such operation.
    """
    for path, item in (spec.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        for method in METHODS:
            operation = item.get(method)
            if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                merged = dict(operation)
                shared = [p for p in item.get("parameters") or [] if isinstance(p, dict)]
                merged["parameters"] = [*shared, *(operation.get("parameters") or [])]
                return path, method, merged
    raise EffectFailedError(
        problem("configuration", 400, f"the OpenAPI document has no operation {operation_id!r}")
    )


def base_url(spec: dict[str, Any], document_uri: str) -> str:
    """Where the operations live: OpenAPI 3 `servers`, or Swagger 2 schemes, host, basePath."""
    if "swagger" in spec:
        origin = urlsplit(document_uri)
        schemes = spec.get("schemes") or [origin.scheme or "https"]
        scheme = "https" if "https" in schemes else schemes[0]
        host = spec.get("host") or origin.netloc
        return f"{scheme}://{host}{spec.get('basePath') or ''}".rstrip("/")
    servers = spec.get("servers") or [{"url": "/"}]
    return urljoin(document_uri, str(servers[0].get("url") or "/")).rstrip("/")


class OpenApiCaller:
    def __init__(
        self, *, http: HttpCaller, hosts: HostMap, guard: OutboundGuard | None = None
    ) -> None:
        self._http = http
        self._hosts = hosts
        self._documents: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()
        # Documents are fetched where the guard allows, and a redirect is not followed: it
        # could lead where the document's own URL would be refused.
        self._client = guarded_client(guard or OutboundGuard())

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _document(self, uri: str) -> dict[str, Any]:
        async with self._lock:
            cached = self._documents.get(uri)
            if cached is not None:
                return cached
            try:
                response = await self._client.get(self._hosts.url(uri), timeout=30.0)
                response.raise_for_status()
                # JSON is YAML too; parsed off the event loop, within limits.
                spec = await asyncio.to_thread(
                    load_yaml, response.text, yaml.SafeLoader, OPENAPI_LIMITS
                )
            except (httpx.HTTPError, yaml.YAMLError, ParseLimitError) as exc:
                raise EffectFailedError(
                    problem("communication", 503, f"cannot load OpenAPI document {uri}: {exc}")
                ) from None
            if not isinstance(spec, dict):
                raise EffectFailedError(
                    problem("configuration", 400, f"{uri} is not an OpenAPI document")
                )
            self._documents[uri] = spec
            return spec

    async def call(
        self, request: dict[str, Any], *, timeout_ms: int | None = None, cause: str = ""
    ) -> Any:
        uri = _document_uri(request.get("document"))
        spec = await self._document(uri)
        path, method, operation = find_operation(spec, str(request.get("operationId")))
        parameters = dict(request.get("parameters") or {})
        query: dict[str, Any] = {}
        headers: dict[str, Any] = {}
        body: Any = None
        for parameter in operation["parameters"]:
            name = parameter.get("name")
            where = parameter.get("in")
            if where == "body":
                body = parameters.get(name, parameters.get("body"))
            elif name not in parameters:
                continue
            elif where == "path":
                path = path.replace("{" + name + "}", quote(str(parameters[name]), safe=""))
            elif where == "query":
                query[name] = parameters[name]
            elif where == "header":
                headers[name] = parameters[name]
        if "requestBody" in operation:
            body = parameters.get("body")
        call = {
            "method": method,
            "uri": base_url(spec, uri) + path,
            "headers": headers,
            "query": query,
            "body": body,
            "output": request.get("output") or "content",
            "redirect": request.get("redirect", False),
            "authentication": request.get("authentication"),
        }
        return await self._http.call(call, timeout_ms=timeout_ms, cause=cause)
