"""Token keys from a JWKS URL and from OIDC discovery, served by a stub on loopback:
fetched when needed, fetched again on an unknown key id, never more often than allowed."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.config import AuthSettings, Settings
from okra_sidecar.config_sources import ConfigError
from okra_sidecar.errors import UnauthenticatedError
from okra_sidecar.policy.auth import TokenVerifier, UnknownKeyError
from tests.helpers import expect_rpc_error, make_settings, running_sidecar
from tests.pki import Authority

AUDIENCE = "okra-sidecar"


@dataclass
class IdentityProvider:
    """An issuer on loopback: its discovery document, its JWKS, and the keys behind them."""

    base: str
    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def add_key(self, kid: str) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        documents = []
        for kid, key in self.keys.items():
            document = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            documents.append({**document, "kid": kid, "alg": "ES256", "use": "sig"})
        return {"keys": documents}

    def token(
        self,
        kid: str,
        *,
        key_of: str | None = None,
        issuer: str | None = None,
        subject: str = "billing",
    ) -> str:
        claims = {
            "sub": subject,
            "aud": AUDIENCE,
            "iss": issuer or self.base,
            "exp": int(time.time()) + 300,
        }
        signer = self.keys[key_of or kid]
        return jwt.encode(claims, signer, algorithm="ES256", headers={"kid": kid})


def serve(server: ThreadingHTTPServer) -> Iterator[None]:
    """Serve on a thread for as long as the caller iterates."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def handler_for(provider: IdentityProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            provider.requests.append(self.path)
            if self.path == "/.well-known/openid-configuration":
                body: dict[str, Any] = {
                    "issuer": provider.base,
                    "jwks_uri": f"{provider.base}/keys",
                }
            elif self.path == "/keys":
                body = provider.jwks()
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def http_provider() -> Iterator[IdentityProvider]:
    provider = IdentityProvider(base="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(provider))
    provider.base = f"http://127.0.0.1:{server.server_address[1]}"
    provider.add_key("k1")
    for _ in serve(server):
        yield provider


@pytest.fixture
def https_provider(tmp_path: Path) -> Iterator[tuple[IdentityProvider, Path]]:
    ca = Authority.create(tmp_path / "pki")
    pair = ca.server()
    provider = IdentityProvider(base="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(provider))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    provider.base = f"https://localhost:{server.server_address[1]}"
    provider.add_key("k1")
    for _ in serve(server):
        yield provider, ca.cert


def bearer(token: str) -> str:
    return f"Bearer {token}"


def jwks_settings(provider: IdentityProvider, **changes: Any) -> AuthSettings:
    return replace(
        AuthSettings(mode="required", audience=AUDIENCE, jwks_url=f"{provider.base}/keys"),
        **changes,
    )


async def test_keys_are_fetched_once_and_kept(http_provider: IdentityProvider) -> None:
    verifier = TokenVerifier(jwks_settings(http_provider))
    token = bearer(http_provider.token("k1"))
    assert (await verifier.identify_async(token)).subject == "billing"
    other = bearer(http_provider.token("k1", subject="reporting"))
    assert (await verifier.identify_async(other)).subject == "reporting"
    assert http_provider.requests == ["/keys"]


async def test_a_rotated_key_is_fetched_and_refreshes_are_bounded(
    http_provider: IdentityProvider,
) -> None:
    verifier = TokenVerifier(jwks_settings(http_provider, jwks_min_interval_s=1.0))
    assert (await verifier.identify_async(bearer(http_provider.token("k1")))).authenticated
    http_provider.add_key("k2")
    # Within the interval the new key is not fetched: the token waits for the next fetch.
    with pytest.raises(UnknownKeyError, match="key id 'k2' is not known"):
        await verifier.identify_async(bearer(http_provider.token("k2")))
    # Forged key ids, many at once, cause no fetch either.
    forged = [
        verifier.identify_async(bearer(http_provider.token(f"x{i}", key_of="k1")))
        for i in range(20)
    ]
    results = await asyncio.gather(*forged, return_exceptions=True)
    assert all(isinstance(r, UnknownKeyError) for r in results)
    assert http_provider.requests == ["/keys"]
    await asyncio.sleep(1.1)
    assert (await verifier.identify_async(bearer(http_provider.token("k2")))).authenticated
    assert http_provider.requests == ["/keys", "/keys"]


async def test_concurrent_unknown_key_ids_share_one_fetch(
    http_provider: IdentityProvider,
) -> None:
    verifier = TokenVerifier(jwks_settings(http_provider))
    tokens = [bearer(http_provider.token("k1", subject=f"s{i}")) for i in range(10)]
    identities = await asyncio.gather(*(verifier.identify_async(t) for t in tokens))
    assert [i.subject for i in identities] == [f"s{i}" for i in range(10)]
    assert http_provider.requests == ["/keys"]


async def test_oidc_discovery_over_https(https_provider: tuple[IdentityProvider, Path]) -> None:
    provider, ca = https_provider
    settings = AuthSettings(
        mode="required", audience=AUDIENCE, oidc_issuer=provider.base, jwks_ca_file=ca
    )
    verifier = TokenVerifier(settings)
    identity = await verifier.identify_async(bearer(provider.token("k1")))
    assert identity.issuer == provider.base
    assert provider.requests == ["/.well-known/openid-configuration", "/keys"]
    with pytest.raises(UnauthenticatedError, match="was not issued by"):
        await verifier.identify_async(bearer(provider.token("k1", issuer="https://evil.test")))
    # Without the CA the provider's certificate is not trusted: nothing is fetched.
    untrusting = TokenVerifier(replace(settings, jwks_ca_file=None))
    with pytest.raises(UnknownKeyError):
        await untrusting.identify_async(bearer(provider.token("k1")))


async def test_the_sidecar_verifies_tokens_with_keys_from_the_url(
    redis: Redis, redis_url: str, http_provider: IdentityProvider
) -> None:
    settings = replace(make_settings(redis_url), auth=jwks_settings(http_provider))
    async with running_sidecar(settings) as (_, stub):
        metadata = (("authorization", bearer(http_provider.token("k1"))),)
        reply = await stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=metadata)
        assert reply.workflows
        http_provider.add_key("k2")
        metadata = (("authorization", bearer(http_provider.token("k2"))),)
        error = await expect_rpc_error(
            stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=metadata),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert "key id 'k2' is not known" in (error.details() or "")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OKRA_AUTH_JWKS_URL": "http://idp.example/keys"}, "expected an https:// URL"),
        ({"OKRA_AUTH_OIDC_ISSUER": "ftp://idp.example"}, "expected an https:// URL"),
    ],
)
def test_bad_key_urls(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(flags={}, environ=environ)
