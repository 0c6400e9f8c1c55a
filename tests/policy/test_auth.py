"""Bearer tokens: HS256, RS256 and ES256 from config or JWKS; iss, aud and exp checked."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from okra_sidecar.config import AuthSettings
from okra_sidecar.errors import UnauthenticatedError
from okra_sidecar.policy.auth import AuthConfigError, TokenVerifier

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
ISSUER = "https://issuer.example"
AUDIENCE = "okra-sidecar"


def claims(**extra: Any) -> dict[str, Any]:
    # Built when the module is collected: an hour, so a slow run does not expire them first.
    return {"sub": "ada", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 3600, **extra}


def bearer(token: str) -> str:
    return f"Bearer {token}"


def unsigned(payload: dict[str, Any]) -> str:
    """A token with `alg: none` and no signature, as an attacker would send it."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


@pytest.fixture
def settings() -> AuthSettings:
    return AuthSettings(mode="optional", issuer=ISSUER, audience=AUDIENCE, hs256_secret=SECRET)


def test_hs256_token_gives_its_claims(settings: AuthSettings) -> None:
    identity = TokenVerifier(settings).identify(bearer(jwt.encode(claims(role="admin"), SECRET)))
    assert identity.subject == "ada" and identity.claims["role"] == "admin"


def test_optional_mode_without_token_is_anonymous(settings: AuthSettings) -> None:
    identity = TokenVerifier(settings).identify(None)
    assert identity.claims == {} and not identity.authenticated


def test_required_mode_without_token_is_refused(settings: AuthSettings) -> None:
    verifier = TokenVerifier(replace(settings, mode="required"))
    with pytest.raises(UnauthenticatedError, match="requires a bearer token"):
        verifier.identify(None)


# Each header is made when its test runs: a token made at import would expire before a long
# run reaches the test.
BAD_HEADERS: list[tuple[Callable[[], str], str]] = [
    (lambda: "Basic YWRhOnB3", "must be `Bearer <JWT>`"),
    (lambda: "Bearer", "must be `Bearer <JWT>`"),
    (lambda: "Bearer not.a.token", "malformed"),
    (lambda: bearer(jwt.encode(claims(exp=int(time.time()) - 3600), SECRET)), "has expired"),
    (lambda: bearer(jwt.encode(claims(aud="someone-else"), SECRET)), "audience must be"),
    (lambda: bearer(jwt.encode(claims(iss="https://evil.example"), SECRET)), "not issued by"),
    (
        lambda: bearer(jwt.encode({k: v for k, v in claims().items() if k != "exp"}, SECRET)),
        "lacks the 'exp' claim",
    ),
    (lambda: bearer(jwt.encode(claims(), SECRET + "x")), "signature does not verify"),
    (lambda: bearer(unsigned(claims())), "accepts HS256"),
]


@pytest.mark.parametrize(
    ("authorization", "message"), BAD_HEADERS, ids=[message for _, message in BAD_HEADERS]
)
def test_bad_tokens_are_refused(
    settings: AuthSettings, authorization: Callable[[], str], message: str
) -> None:
    with pytest.raises(UnauthenticatedError, match=message):
        TokenVerifier(settings).identify(authorization())


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_public_key_file(tmp_path: Path, settings: AuthSettings, alg: str) -> None:
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    verifier = TokenVerifier(replace(settings, public_key_file=_pem(key, tmp_path / "key.pem")))
    token = jwt.encode(claims(), key, algorithm=alg)
    assert verifier.identify(bearer(token)).subject == "ada"
    # The public key is never an HMAC secret, whatever the token says.
    forged = jwt.encode(claims(), SECRET + "x", algorithm="HS256")
    with pytest.raises(UnauthenticatedError):
        verifier.identify(bearer(forged))


def test_jwks_file_selects_by_kid(tmp_path: Path, settings: AuthSettings) -> None:
    keys = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in "ab"}
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())), "kid": kid}
            for kid, k in keys.items()
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    verifier = TokenVerifier(replace(settings, hs256_secret=None, jwks_file=path))
    for kid, key in keys.items():
        token = jwt.encode(claims(), key, algorithm="RS256", headers={"kid": kid})
        assert verifier.identify(bearer(token)).subject == "ada"
    wrong = jwt.encode(claims(), keys["a"], algorithm="RS256", headers={"kid": "b"})
    with pytest.raises(UnauthenticatedError, match="signature does not verify"):
        verifier.identify(bearer(wrong))
    unknown = jwt.encode(claims(), keys["a"], algorithm="RS256", headers={"kid": "zz"})
    with pytest.raises(UnauthenticatedError, match="key id 'zz' is not known"):
        verifier.identify(bearer(unknown))
    assert verifier.algorithms() == ["RS256"]


def test_unusable_key_files_fail_at_startup(tmp_path: Path, settings: AuthSettings) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(AuthConfigError, match="authPublicKeyFile"):
        TokenVerifier(replace(settings, public_key_file=bad))
    with pytest.raises(AuthConfigError, match="authJwksFile"):
        TokenVerifier(replace(settings, jwks_file=bad))
