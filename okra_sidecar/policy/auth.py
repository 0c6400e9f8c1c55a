"""Bearer tokens: verify a JWT from the `authorization` metadata and return the caller.

HS256 tokens are checked with the configured shared secret; RS256 and ES256 tokens with the
configured PEM public key or, by the token's `kid`, a key from a JWKS file (read once, when the
sidecar starts) or from a JWKS URL or an OIDC issuer's discovery document (policy/jwks.py:
fetched when first needed, again on an unknown `kid` or when stale, at a bounded rate). Every
token must carry `exp`; `iss` and `aud` are checked when the settings name them. A token's
`alg` must match the key it selects, so an RSA public key can never be used as an HMAC secret.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from okra_sidecar.config import AuthSettings
from okra_sidecar.errors import Reason, UnauthenticatedError
from okra_sidecar.policy.jwks import JwksSource
from okra_sidecar.policy.model import ANONYMOUS, Identity

ASYMMETRIC = {"RS256": rsa.RSAPublicKey, "ES256": ec.EllipticCurvePublicKey}
VERIFIED_CACHE_SIZE = 4096


class AuthConfigError(ValueError):
    """Key material that cannot be used; raised at startup, naming the setting."""


class UnknownKeyError(UnauthenticatedError):
    """A token names a key id the keys fetched from a URL do not hold (yet)."""

    def __init__(self, kid: str) -> None:
        super().__init__(f"the bearer token's key id {kid!r} is not known")
        self.kid = kid


@dataclass(frozen=True)
class _Keys:
    secret: str | None
    public: dict[str, Any]  # alg -> key from authPublicKeyFile
    by_kid: dict[str, Any]  # kid -> key from authJwksFile


def _load_keys(settings: AuthSettings) -> _Keys:
    public: dict[str, Any] = {}
    if settings.public_key_file is not None:
        try:
            key = load_pem_public_key(settings.public_key_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise AuthConfigError(f"authPublicKeyFile {settings.public_key_file}: {exc}") from exc
        for alg, kind in ASYMMETRIC.items():
            if isinstance(key, kind):
                public[alg] = key
        if not public:
            raise AuthConfigError(
                f"authPublicKeyFile {settings.public_key_file}: use an RSA or P-256 EC key"
            )
    by_kid: dict[str, Any] = {}
    if settings.jwks_file is not None:
        try:
            keyset = jwt.PyJWKSet.from_json(settings.jwks_file.read_text())
        except (OSError, jwt.PyJWKSetError, jwt.PyJWKError, json.JSONDecodeError) as exc:
            raise AuthConfigError(f"authJwksFile {settings.jwks_file}: {exc}") from exc
        for jwk in keyset.keys:
            by_kid[jwk.key_id or ""] = jwk.key
    return _Keys(settings.hs256_secret or None, public, by_kid)


class TokenVerifier:
    """Turns an `authorization` value into an Identity, or refuses it."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._keys = _load_keys(settings)
        self._issuer = settings.issuer or settings.oidc_issuer
        self.source: JwksSource | None = None
        if settings.jwks_url is not None or settings.oidc_issuer is not None:
            self.source = JwksSource(
                jwks_url=settings.jwks_url,
                issuer=settings.oidc_issuer,
                ca_file=settings.jwks_ca_file,
                refresh_s=settings.jwks_refresh_s,
                min_interval_s=settings.jwks_min_interval_s,
            )
        self.required = settings.mode == "required"
        self._verified: dict[str, tuple[Identity, float]] = {}

    @property
    def configured(self) -> bool:
        keys = self._keys
        return bool(keys.secret or keys.public or keys.by_kid or self.source)

    async def identify_async(self, authorization: str | None, peer: str = "") -> Identity:
        """`identify`, fetching the keys from their URL first when the token needs it."""
        source = self.source
        if source is None:
            return self.identify(authorization, peer)
        source.refresh_soon()
        try:
            return self.identify(authorization, peer)
        except UnknownKeyError:
            # The issuer may have rotated its keys; the source bounds how often this fetches.
            if not await source.refresh():
                raise
            return self.identify(authorization, peer)

    def identify(self, authorization: str | None, peer: str = "") -> Identity:
        """The caller for this metadata value (None when the call carried none).

        `peer` is the identity of the call's verified client certificate ('' without mTLS):
        it authenticates a call on its own, or sits beside the token's claims.

        Raises:
            UnauthenticatedError: a token is required and missing, or it does not verify.
        """
        if not authorization:
            if peer:
                return Identity(peer=peer)
            if self.required:
                raise UnauthenticatedError(
                    "this sidecar requires a bearer token: send `authorization: Bearer <JWT>`",
                    reason=Reason.TOKEN_MISSING,
                )
            return ANONYMOUS
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError(
                "the authorization metadata must be `Bearer <JWT>`; nothing else is accepted"
            )
        identity = self._identity_for(token.strip())
        return Identity(claims=identity.claims, peer=peer) if peer else identity

    def _identity_for(self, token: str) -> Identity:
        # A token verified once is the same token until it expires: keep its Identity (and the
        # CEL form of its claims) rather than checking its signature on every call.
        cached = self._verified.get(token)
        if cached is not None:
            identity, expires = cached
            if time.time() < expires:
                return identity
            del self._verified[token]
        identity = Identity(claims=self.verify(token))
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        expires = float(identity.claims["exp"]) + self._settings.leeway_s
        self._verified[token] = (identity, expires)
        return identity

    def verify(self, token: str) -> dict[str, Any]:
        settings = self._settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise UnauthenticatedError(f"the bearer token is malformed: {exc}") from None
        alg = header.get("alg")
        key = self._key_for(alg, header.get("kid"))
        required = ["exp"]
        if self._issuer:
            required.append("iss")
        if settings.audience:
            required.append("aud")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=settings.audience,
                issuer=self._issuer,
                leeway=settings.leeway_s,
                options={"require": required, "verify_aud": settings.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("the bearer token has expired; get a new one") from None
        except jwt.InvalidAudienceError:
            raise UnauthenticatedError(
                f"the bearer token is not meant for this sidecar: its audience must be "
                f"{settings.audience!r}"
            ) from None
        except jwt.InvalidIssuerError:
            raise UnauthenticatedError(
                f"the bearer token was not issued by {self._issuer!r}"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise UnauthenticatedError(f"the bearer token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise UnauthenticatedError("the bearer token's signature does not verify") from None
        except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
            raise UnauthenticatedError(f"the bearer token is not valid: {exc}") from None
        return claims

    def _key_for(self, alg: object, kid: object) -> Any:
        keys = self._keys
        if alg == "HS256" and keys.secret:
            return keys.secret
        if alg in ASYMMETRIC:
            kind = ASYMMETRIC[str(alg)]
            by_kid = self._by_kid()
            if isinstance(kid, str) and kid in by_kid:
                key = by_kid[kid]
            elif len(by_kid) == 1 and not isinstance(kid, str):
                key = next(iter(by_kid.values()))
            else:
                key = keys.public.get(str(alg))
            if isinstance(key, kind):
                return key
            if isinstance(kid, str) and kid not in by_kid and self.source is not None:
                raise UnknownKeyError(kid)
            if isinstance(kid, str) and by_kid and kid not in by_kid:
                raise UnauthenticatedError(f"the bearer token's key id {kid!r} is not known")
        accepted = self.algorithms()
        raise UnauthenticatedError(
            f"the bearer token is signed with {alg!r}; this sidecar accepts "
            f"{', '.join(accepted) if accepted else 'no tokens (no keys are configured)'}"
        )

    def _by_kid(self) -> dict[str, Any]:
        """Keys by id: the JWKS file's, then the ones fetched from a URL."""
        if self.source is None or not self.source.keys:
            return self._keys.by_kid
        return {**self._keys.by_kid, **self.source.keys}

    def algorithms(self) -> list[str]:
        keys = self._keys
        accepted = ["HS256"] if keys.secret else []
        for alg, kind in ASYMMETRIC.items():
            candidates = [*keys.public.values(), *self._by_kid().values()]
            if any(isinstance(k, kind) for k in candidates):
                accepted.append(alg)
        return accepted


__all__ = ["AuthConfigError", "TokenVerifier", "UnknownKeyError"]
