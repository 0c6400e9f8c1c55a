"""Signer: HMAC-SHA256 tags that every sidecar sharing one Redis makes and checks alike.

The key is the cluster's shared secret (`RedisKeys.secret`, created once by whichever sidecar
starts first). Callers never see it, so a tag proves that a sidecar wrote the text it covers:
worker task leases and the causation a workflow's outgoing calls carry are signed with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["Signer"]

TAG_BYTES = 16  # 128 bits: forging one by guessing is out of reach


class Signer:
    """Signs and checks short texts with one secret key."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the signing secret must be at least 16 bytes")
        self._secret = secret

    def sign(self, text: str) -> str:
        """A URL-safe tag for `text` (no dots, so it can end a dotted token)."""
        digest = hmac.new(self._secret, text.encode(), hashlib.sha256).digest()[:TAG_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def verify(self, text: str, tag: str) -> bool:
        return hmac.compare_digest(self.sign(text), tag)
