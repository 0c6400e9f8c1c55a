"""Rejection cases: a call, the status it must get, the field or message, and no writes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from redis.asyncio import Redis

from tests.helpers import (
    bad_request_fields,
    expect_rpc_error,
    redis_fingerprint,
)

BIG = "x" * (1024 * 1024 + 1)
LONG = "x" * 257
S = TypeVar("S")


@dataclass(frozen=True)
class Case(Generic[S]):
    """One rejected call: `call` makes it on a stub of one service (S)."""

    name: str
    call: Callable[[S], Awaitable[object]]
    code: grpc.StatusCode
    message: str
    fields: tuple[str, ...] = ()


def ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def tags(count: int) -> dict[str, str]:
    return {f"t{n}": "v" for n in range(count)}


INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def assert_rejected(case: Case[S], stub: S, redis: Redis) -> None:
    """The call fails with the case's status, message and field paths, and writes nothing."""
    before = await redis_fingerprint(redis)
    error = await expect_rpc_error(case.call(stub), case.code)
    assert case.message in (error.details() or ""), error.details()
    fields = bad_request_fields(error)
    assert fields == list(case.fields), f"field paths {fields}, expected {list(case.fields)}"
    assert await redis_fingerprint(redis) == before, "the rejected call wrote to Redis"
