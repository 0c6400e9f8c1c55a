"""Request decoding that cannot fail: a message grpc cannot parse becomes a value to refuse.

grpc.aio answers UNKNOWN, and logs a traceback, when a request deserializer raises (garbage
bytes, invalid UTF-8 in a string field, a Value nested past protobuf's depth of 100). The
ErrorInterceptor installs `tolerant()` around each method's deserializer and refuses an
`UndecodableRequest` with INVALID_ARGUMENT before any other layer sees it.

The request size limit is kept here too, not by grpc core: core's limit is a filter in every
call's stack, and its per-call state is about 1.5 KiB of each held WatchInstance stream. A
request over the limit decodes to an `OversizedRequest` (refused with RESOURCE_EXHAUSTED);
in a client-streaming rpc, whose messages a handler reads itself, it raises
`MessageTooLargeError` there instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from okra_sidecar.errors import MessageTooLargeError

__all__ = ["MAX_REQUEST_BYTES", "OversizedRequest", "UndecodableRequest", "limited", "tolerant"]

# The largest request message the sidecar accepts (grpc's own default is 4 MiB).
MAX_REQUEST_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class UndecodableRequest:
    """What a request that is not a valid message of its rpc's type decodes to."""

    problem: str


@dataclass(frozen=True)
class OversizedRequest:
    """What a request over the size limit decodes to (it is not parsed)."""

    size: int
    limit: int

    def error(self) -> MessageTooLargeError:
        return MessageTooLargeError(self.size, self.limit)


def tolerant(
    deserializer: Callable[[bytes], Any] | None, *, limit: int = MAX_REQUEST_BYTES
) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning an UndecodableRequest where it would raise, and an
    OversizedRequest for a message over `limit` bytes."""
    if deserializer is None:
        return None
    parse = deserializer

    def deserialize(data: bytes) -> Any:
        if len(data) > limit:
            return OversizedRequest(len(data), limit)
        try:
            return parse(data)
        except (DecodeError, RecursionError, UnicodeDecodeError) as exc:
            return UndecodableRequest(" ".join(str(exc).split())[:300])

    return deserialize


def limited(
    deserializer: Callable[[bytes], Any] | None, *, limit: int = MAX_REQUEST_BYTES
) -> Callable[[bytes], Any]:
    """`deserializer` (or none: the bytes as they are) for the messages of a client stream,
    raising MessageTooLargeError for one over `limit` bytes."""

    def deserialize(data: bytes) -> Any:
        if len(data) > limit:
            raise MessageTooLargeError(len(data), limit)
        return data if deserializer is None else deserializer(data)

    return deserialize
