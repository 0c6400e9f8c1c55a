"""DefinitionStore: workflow definitions by id, immutable once registered."""

from __future__ import annotations

from okra_sidecar.errors import AlreadyExistsError
from okra_sidecar.store.connections import StoreConnections
from okra_sidecar.store.replies import map_redis_errors, text

__all__ = ["DefinitionStore"]


class DefinitionStore(StoreConnections):
    """The `definitions` hash every sidecar registers into and reads from."""

    async def register_definition(self, workflow_id: str, content: str) -> bool:
        """Register immutable content under an id; True if new, False if identical.

        Raises:
            AlreadyExistsError: other content is registered under this id.
        """
        with map_redis_errors():
            if await self.redis.hsetnx(self.keys.definitions, workflow_id, content):
                return True
            existing = await self.redis.hget(self.keys.definitions, workflow_id)
        if text(existing) != content:
            raise AlreadyExistsError(
                f"workflow {workflow_id} is already registered with different content; "
                "a registered version is immutable, so bump document.version"
            )
        return False

    async def get_definition(self, workflow_id: str) -> str | None:
        with map_redis_errors():
            content = await self.redis.hget(self.keys.definitions, workflow_id)
        return None if content is None else text(content)

    async def list_definitions(self) -> dict[str, str]:
        with map_redis_errors():
            entries = await self.redis.hgetall(self.keys.definitions)
        return {text(k): text(v) for k, v in entries.items()}
