"""Token signing keys from a JWKS URL, or from an OIDC issuer's discovery document.

Keys are fetched when first needed and kept; they are fetched again when a token names a key
id not among them (the issuer rotated its keys) and when they are older than `refresh_s`, but
never more often than once per `min_interval_s`, however many tokens with unknown key ids
arrive: a caller cannot make the sidecar hammer the identity provider. Concurrent callers
share one fetch. A failed fetch keeps the keys already held.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt

logger = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
FETCH_TIMEOUT_S = 5.0
MAX_DOCUMENT_BYTES = 1024 * 1024


class JwksFetchError(RuntimeError):
    """The keys could not be fetched or read; the message says from where and why."""


class JwksSource:
    """Keys by key id from `jwks_url`, or from the `jwks_uri` of `issuer`'s discovery document.

    Args:
        jwks_url: The JWKS document's URL; with it, no discovery document is read.
        issuer: An OIDC issuer URL, whose discovery document names the JWKS URL.
        ca_file: PEM CA certificates to trust for these URLs instead of the system's.
        refresh_s: Keys older than this are fetched again (in the background).
        min_interval_s: The least time between two fetches.
    """

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        issuer: str | None = None,
        ca_file: Path | None = None,
        refresh_s: float = 600.0,
        min_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if jwks_url is None and issuer is None:
            raise ValueError("give a JWKS URL or an OIDC issuer")
        self._jwks_url = jwks_url
        self._issuer_url = issuer
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else True
        )
        self._refresh_s = refresh_s
        self._min_interval_s = min_interval_s
        self._clock = clock
        self.keys: dict[str, Any] = {}
        self.issuer: str | None = None  # from the discovery document
        self.fetches = 0
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._inflight: asyncio.Task[bool] | None = None

    @property
    def source(self) -> str:
        return self._jwks_url or f"{str(self._issuer_url).rstrip('/')}{DISCOVERY_PATH}"

    def stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at > self._refresh_s

    async def refresh(self) -> bool:
        """Fetch the keys unless the last attempt was under `min_interval_s` ago.

        Returns whether a fetch ran and succeeded (callers then look their key up again).
        """
        if self._inflight is not None and not self._inflight.done():
            return await asyncio.shield(self._inflight)
        now = self._clock()
        if self._attempted_at is not None and now - self._attempted_at < self._min_interval_s:
            return False
        self._attempted_at = now
        self._inflight = asyncio.create_task(self._fetch(), name="okra-jwks-fetch")
        return await asyncio.shield(self._inflight)

    def refresh_soon(self) -> None:
        """Start a background refresh if the keys are stale (and the interval allows)."""
        if self.stale() and (self._inflight is None or self._inflight.done()):
            task = asyncio.get_running_loop().create_task(self.refresh())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _fetch(self) -> bool:
        try:
            async with httpx.AsyncClient(
                verify=self._verify, timeout=FETCH_TIMEOUT_S, follow_redirects=False
            ) as client:
                jwks_url = self._jwks_url
                if jwks_url is None:
                    discovery = await self._get_json(client, self.source)
                    jwks_url, issuer = discovery.get("jwks_uri"), discovery.get("issuer")
                    if not isinstance(jwks_url, str) or not isinstance(issuer, str):
                        raise JwksFetchError(f"{self.source}: no jwks_uri and issuer in it")
                    if issuer.rstrip("/") != str(self._issuer_url).rstrip("/"):
                        raise JwksFetchError(
                            f"{self.source}: names the issuer {issuer!r}, not {self._issuer_url!r}"
                        )
                    self.issuer = issuer
                document = await self._get_json(client, jwks_url)
            try:
                keyset = jwt.PyJWKSet.from_dict(document)
            except (jwt.PyJWKSetError, jwt.PyJWKError) as exc:
                raise JwksFetchError(f"{jwks_url}: not a usable JWKS: {exc}") from exc
        except JwksFetchError as exc:
            logger.warning("token keys not refreshed: %s", exc)
            return False
        self.keys = {jwk.key_id or "": jwk.key for jwk in keyset.keys}
        self.fetches += 1
        self._fetched_at = self._clock()
        logger.info("token keys fetched from %s: %s", jwks_url, ", ".join(sorted(self.keys)))
        return True

    async def _get_json(self, client: httpx.AsyncClient, url: str) -> dict[str, Any]:
        try:
            response = await client.get(url, headers={"accept": "application/json"})
        except httpx.HTTPError as exc:
            raise JwksFetchError(f"{url}: {exc!s} ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise JwksFetchError(f"{url}: HTTP {response.status_code}")
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise JwksFetchError(f"{url}: larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = json.loads(response.content)
        except ValueError as exc:
            raise JwksFetchError(f"{url}: not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise JwksFetchError(f"{url}: not a JSON object")
        return document


__all__ = ["JwksFetchError", "JwksSource"]
