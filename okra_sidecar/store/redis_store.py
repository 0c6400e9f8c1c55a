"""RedisStore: the Store on Redis, assembled from one part per noun."""

from __future__ import annotations

from okra_sidecar.store.definition_store import DefinitionStore
from okra_sidecar.store.instance_store import InstanceStore
from okra_sidecar.store.operator_store import OperatorStore
from okra_sidecar.store.query_store import QueryStore
from okra_sidecar.store.signal_store import SignalStore
from okra_sidecar.store.turn_store import TurnStore
from okra_sidecar.store.work_store import WorkStore

__all__ = ["RedisStore"]


class RedisStore(
    InstanceStore, OperatorStore, SignalStore, QueryStore, TurnStore, WorkStore, DefinitionStore
):
    """The one Store implementation, on Redis clients it does not own (see StoreConnections).

    Each part owns one noun: instances, the operator's writes on them, signals, Query and
    history, turns, work and timers, definitions.
    """
