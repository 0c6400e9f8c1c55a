"""HttpCaller: the `call: http` effect, with httpx, in the output mode the task asks for."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from okra_sidecar.executors.hosts import HostMap
from okra_sidecar.executors.outbound import OutboundGuard, guarded_client
from okra_sidecar.executors.problems import EffectFailedError, problem
from okra_sidecar.parsing import ParseLimits, load_json
from okra_sidecar.policy.causation import CAUSE_METADATA, CausationGuard
from okra_sidecar.telemetry import inject_traceparent

__all__ = ["HttpCaller", "encode_content"]

DETAIL_LIMIT = 2048
# The body is already in memory, whatever its size; only its nesting is limited.
RESPONSE_LIMITS = ParseLimits(max_bytes=2**62, max_depth=32)


def encode_content(response: httpx.Response) -> Any:
    """The response body, deserialized when it is JSON, else text ('' for an empty body)."""
    raw = response.content
    if not raw:
        return None
    content_type = response.headers.get("content-type", "").lower()
    if "json" in content_type:
        try:
            # A body nested past the limit stays text: deeper data breaks Query's readers.
            return load_json(raw, RESPONSE_LIMITS)
        except ValueError:  # ParseLimitError is one
            pass
    return response.text


def _auth_headers(authentication: Any) -> dict[str, str]:
    if not isinstance(authentication, dict):
        return {}
    basic = authentication.get("basic")
    if isinstance(basic, dict):
        token = f"{basic.get('username', '')}:{basic.get('password', '')}".encode()
        return {"Authorization": "Basic " + base64.b64encode(token).decode()}
    bearer = authentication.get("bearer")
    if isinstance(bearer, dict) and bearer.get("token"):
        return {"Authorization": f"Bearer {bearer['token']}"}
    return {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class HttpCaller:
    """One httpx client per sidecar: connection pooling across every instance's calls."""

    def __init__(
        self,
        *,
        hosts: HostMap,
        default_timeout_s: float = 30.0,
        guard: OutboundGuard | None = None,
        causation: CausationGuard | None = None,
    ) -> None:
        self._causation = causation
        self._hosts = hosts
        self._default_timeout_s = default_timeout_s
        # Every connection, a followed redirect's too, goes only where the guard allows.
        self._client = guarded_client(guard or OutboundGuard())

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self, request: dict[str, Any], *, timeout_ms: int | None = None, cause: str = ""
    ) -> Any:
        """Send the request; the task's output in its `output` mode.

        `cause` is the calling instance, sent signed as the `okra-cause` header (as gRPC calls
        send it) so that whatever the call reaches can tell which instance caused it.

        Raises:
            EffectFailedError: communication (status outside the accepted range, the server
                unreachable) or timeout problems.
        """
        method = str(request.get("method") or "get").upper()
        uri = str(request["uri"])
        headers = {str(k): _text(v) for k, v in (request.get("headers") or {}).items()}
        headers.update(_auth_headers(request.get("authentication")))
        # The called service continues the trace (headers the workflow set win).
        for name, value in inject_traceparent({}).items():
            if not any(k.lower() == name for k in headers):
                headers[name] = value
        if cause and self._causation is not None:
            # The sidecar's signed value only: a workflow cannot name another cause.
            headers = {k: v for k, v in headers.items() if k.lower() != CAUSE_METADATA}
            headers[CAUSE_METADATA] = await self._causation.sign(cause)
        query = {str(k): _text(v) for k, v in (request.get("query") or {}).items()}
        body = request.get("body")
        content: bytes | None = None
        if body is not None:
            if isinstance(body, str):
                content = body.encode()
            else:
                content = json.dumps(body).encode()
                if not any(k.lower() == "content-type" for k in headers):
                    headers["Content-Type"] = "application/json"
        redirect = bool(request.get("redirect", False))
        timeout = (timeout_ms / 1000) if timeout_ms else self._default_timeout_s
        try:
            response = await self._client.request(
                method,
                self._hosts.url(uri),
                headers=headers,
                params=query or None,
                content=content,
                timeout=timeout,
                follow_redirects=redirect,
            )
        except httpx.TimeoutException as exc:
            raise EffectFailedError(
                problem("timeout", 408, f"{method} {uri} took longer than {timeout:g}s ({exc!r})")
            ) from None
        except httpx.HTTPError as exc:
            raise EffectFailedError(
                problem("communication", 503, f"{method} {uri} failed: {exc!r}")
            ) from None
        highest = 399 if redirect else 299
        if not 200 <= response.status_code <= highest:
            detail = response.text[:DETAIL_LIMIT] or f"{method} {uri}"
            raise EffectFailedError(
                problem(
                    "communication",
                    response.status_code,
                    detail,
                    title=response.reason_phrase or f"HTTP {response.status_code}",
                )
            )
        output = request.get("output") or "content"
        if output == "raw":
            return base64.b64encode(response.content).decode() if response.content else None
        decoded = encode_content(response)
        if output == "response":
            return {
                "request": {"method": method, "uri": uri, "headers": headers},
                "statusCode": response.status_code,
                "headers": dict(response.headers),
                "content": decoded,
            }
        return decoded
