"""map_redis_errors: which Redis and Redis Cluster errors are outages (UNAVAILABLE), which bugs."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors
from redis._parsers import BaseParser

from okra_sidecar.errors import StoreUnavailableError
from okra_sidecar.store.replies import map_redis_errors


def _parsed(reply: str) -> Exception:
    """An error reply as the clients' parser hands it on."""
    error: Exception = BaseParser.parse_error(reply)  # type: ignore[no-untyped-call]  # untyped
    return error


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.ConnectionError("gone"),
        redis_errors.TimeoutError("late"),
        redis_errors.BusyLoadingError("loading"),
        redis_errors.ClusterDownError("CLUSTERDOWN The cluster is down"),
        redis_errors.MasterDownError("MASTERDOWN Link with MASTER is down"),
        redis_errors.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        redis_errors.RedisClusterException("All slots are not covered after query all nodes."),
        redis_errors.SlotNotCoveredError("Slot 5 is not covered by the cluster."),
        # redis-py's RedisCluster asking nodes that a failover has not yet brought to agree.
        redis_errors.RedisClusterException(
            "startup_nodes could not agree on a valid slots cache: 127.0.0.1:7000 vs "
            "127.0.0.1:7003 on slot: 5"
        ),
        # A master demoted by a failover, as the parser hands its replies on.
        _parsed("READONLY You can't write against a read only replica."),
        _parsed("NOREPLICAS Not enough good replicas to write."),
        _parsed(
            "UNBLOCKED force unblock from blocking operation, instance state changed "
            "(master -> replica?)"
        ),
        _parsed("ERR WAIT cannot be used with replica instances."),
    ],
)
def test_outages_are_store_unavailable(error: Exception) -> None:
    with pytest.raises(StoreUnavailableError), map_redis_errors():
        raise error


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.RedisClusterException("EVALSHA - all keys must map to the same key slot"),
        redis_errors.ClusterCrossSlotError("CROSSSLOT Keys in request don't hash to the same slot"),
        redis_errors.ResponseError("WRONGTYPE Operation against a key"),
    ],
)
def test_bugs_are_not_outages(error: Exception) -> None:
    with pytest.raises(type(error)), map_redis_errors():
        raise error
