"""Raw Redis replies as Python values, and the one place Redis errors become ours."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis import exceptions as redis_errors

from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.store.jsontext import loads

__all__ = ["json_or", "map_redis_errors", "pairs", "text"]


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


@contextmanager
def map_redis_errors() -> Iterator[None]:
    """Turn a lost connection into StoreUnavailableError, the one error the api maps to it."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise StoreUnavailableError(f"Redis is unreachable ({exc}); retry shortly") from exc
    except redis_errors.BusyLoadingError as exc:
        raise StoreUnavailableError("Redis is loading its data; retry shortly") from exc
    except (redis_errors.ClusterError, redis_errors.TryAgainError) as exc:
        # A failover or a slot migration under way: it settles by itself.
        raise StoreUnavailableError(
            f"the Redis Cluster is settling ({exc}); retry shortly"
        ) from exc
    except redis_errors.RedisClusterException as exc:
        # redis-py's RedisCluster without a full slot map (nodes down, slots unserved); its
        # other refusals (keys of several slots in one command) are bugs, not outages.
        if not isinstance(
            exc, redis_errors.SlotNotCoveredError | redis_errors.RedisClusterUnreachableError
        ) and "not covered" not in str(exc):
            raise
        raise StoreUnavailableError(f"the Redis Cluster is not serving ({exc})") from exc
