"""Raw Redis replies as Python values, and the one place Redis errors become ours."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from redis import exceptions as redis_errors

from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.store.jsontext import loads

__all__ = ["json_or", "map_redis_errors", "not_a_master", "pairs", "text"]

# How a node that is no longer the master a client took it for (a failover demoted it, or
# it restarted as a replica) answers a write, a WAIT or a blocked read. redis-py has a class
# only for READONLY; the others come as ResponseError, the code still leading the text, or,
# for WAIT, behind ERR, which redis-py strips.
_NOT_A_MASTER = ("NOREPLICAS", "UNBLOCKED", "WAIT cannot be used with replica")


def text(value: bytes | str | None) -> str:
    """A reply as text; '' for nil."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def json_or(value: bytes | str | None, default: Any = None) -> Any:
    """A stored JSON text, or `default` for nil or ''."""
    return loads(value) if value else default


def pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A raw stream entry's [field, value, ...] as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def map_redis_errors() -> _RedisErrors:
    """Turn a lost connection into StoreUnavailableError, the one error the api maps to it."""
    return _MAP_REDIS_ERRORS


class _RedisErrors:
    """map_redis_errors' context manager. A class rather than a generator (@contextmanager):
    every store call enters one, and a generator costs several times more to enter and leave."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Returning leaves any error as it is: only an outage becomes another.
        if exc is not None and (outage := _outage(exc)) is not None:
            raise outage from exc


def not_a_master(exc: BaseException) -> bool:
    """Whether `exc` is a node's answer that it is not the master (any more): the call goes
    to the new master once the client has learnt the new slot map."""
    if isinstance(exc, redis_errors.ReadOnlyError):
        return True
    return isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(_NOT_A_MASTER)


def _outage(exc: BaseException) -> StoreUnavailableError | None:
    """The StoreUnavailableError an error of Redis means, or None when it is not an outage."""
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError | OSError):
        return StoreUnavailableError(f"Redis is unreachable ({exc}); retry shortly")
    if isinstance(exc, redis_errors.BusyLoadingError):
        return StoreUnavailableError("Redis is loading its data; retry shortly")
    if not_a_master(exc):
        return StoreUnavailableError(
            f"a Redis node changed role ({exc}); the call goes to the new master on retry"
        )
    if isinstance(exc, redis_errors.ClusterError | redis_errors.TryAgainError):
        # A failover or a slot migration under way: it settles by itself.
        return StoreUnavailableError(f"the Redis Cluster is settling ({exc}); retry shortly")
    if isinstance(exc, redis_errors.RedisClusterException) and (
        isinstance(
            exc, redis_errors.SlotNotCoveredError | redis_errors.RedisClusterUnreachableError
        )
        or "not covered" in str(exc)
        or "could not agree" in str(exc)
    ):
        # redis-py's RedisCluster without a full slot map (nodes down, slots unserved, or
        # nodes that disagree on it mid-failover); its other refusals (keys of several slots
        # in one command) are bugs, not outages.
        return StoreUnavailableError(f"the Redis Cluster is not serving ({exc})")
    return None


_MAP_REDIS_ERRORS = _RedisErrors()
