"""SignalStore: signals into an instance's inbox, once per signal id."""

from __future__ import annotations

from typing import Any

from okra_sidecar.store.base import WorkflowMismatchError
from okra_sidecar.store.connections import StoreConnections
from okra_sidecar.store.jsontext import dumps
from okra_sidecar.store.multiplexed import MultiplexedScript
from okra_sidecar.store.replies import map_redis_errors, text
from okra_sidecar.store.scripts import load_script

__all__ = ["SignalStore"]


class SignalStore(StoreConnections):
    """Delivers signals, each with the work item that asks for a turn to read it."""

    _signal = MultiplexedScript(load_script("signal"))

    async def signal(
        self,
        instance_id: str,
        *,
        signal_id: str,
        event: dict[str, Any],
        now_ms: int,
        expect_status: str | None = None,
        expect_workflow: str | None = None,
    ) -> bool:
        """Deliver a signal; returns True when signal_id was delivered before.

        Raises:
            InstanceChangedError: the status is no longer `expect_status`; nothing was written.
            WorkflowMismatchError: the instance does not run `expect_workflow`; nothing was
                written.
        """
        keys = self.keys
        with map_redis_errors():
            result, waited = await self._durable_write(
                self._signal,
                keys=[
                    keys.instance(instance_id),
                    keys.inbox(instance_id),
                    keys.signal_ids(instance_id),
                    keys.work(keys.partition(instance_id)),
                ],
                args=[
                    instance_id,
                    signal_id,
                    dumps(event),
                    now_ms,
                    expect_status or "",
                    expect_workflow or "",
                ],
            )
            outcome = [text(x) for x in result]
            if outcome[0] == "workflow":
                raise WorkflowMismatchError(instance_id)
            self._raise_for(instance_id, outcome, "signal")
            if outcome[0] == "ok":
                self._check_durable(waited)
        return outcome[0] == "duplicate"

    async def signal_delivered(self, instance_id: str, signal_id: str) -> bool:
        """Whether `signal_id` was delivered to the instance (its ids stay until it is purged)."""
        with map_redis_errors():
            found = await self.hot.execute(
                "SISMEMBER", self.keys.signal_ids(instance_id), signal_id
            )
        return int(found) == 1
