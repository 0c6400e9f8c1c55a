"""Request decoding that cannot fail: a message grpc cannot parse becomes a value to refuse.

grpc.aio answers UNKNOWN, and logs a traceback, when a request deserializer raises (garbage
bytes, invalid UTF-8 in a string field, a Value nested past protobuf's depth of 100). The
ErrorInterceptor installs `tolerant()` around each method's deserializer and refuses an
`UndecodableRequest` with INVALID_ARGUMENT before any other layer sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class UndecodableRequest:
    """What a request that is not a valid message of its rpc's type decodes to."""

    problem: str


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning an UndecodableRequest where it would raise."""
    if deserializer is None:
        return None
    parse = deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, RecursionError, UnicodeDecodeError) as exc:
            return UndecodableRequest(" ".join(str(exc).split())[:300])

    return deserialize


__all__ = ["UndecodableRequest", "tolerant"]
