"""DefinitionStore: workflow definitions by id, immutable once registered."""

from __future__ import annotations

from okra_sidecar.errors import AlreadyExistsError
from okra_sidecar.store.connections import StoreConnections
from okra_sidecar.store.replies import map_redis_errors, text

__all__ = ["DefinitionStore"]


class DefinitionStore(StoreConnections):
    """The `definitions` hash every sidecar registers into and reads from, and the version
    index of each workflow."""

    async def register_definition(
        self, workflow_id: str, content: str, *, workflow_key: str
    ) -> bool:
        """Register immutable content under an id; True if new, False if identical.

        The id also joins its workflow's version index (`namespace.name` -> ids), so that
        resolving `namespace.name` reads a few ids instead of every stored definition.

        Raises:
            AlreadyExistsError: other content is registered under this id.
        """
        with map_redis_errors():
            # Indexed even when the content is already there: the index may predate it.
            await self.redis.sadd(self.keys.definition_versions(workflow_key), workflow_id)
            if await self.redis.hsetnx(self.keys.definitions, workflow_id, content):
                return True
            existing = await self.redis.hget(self.keys.definitions, workflow_id)
        if text(existing) != content:
            raise AlreadyExistsError(
                f"workflow {workflow_id} is already registered with different content; "
                "a registered version is immutable, so bump document.version",
                metadata={"workflow": workflow_id},
            )
        return False

    async def get_definition(self, workflow_id: str) -> str | None:
        with map_redis_errors():
            content = await self.redis.hget(self.keys.definitions, workflow_id)
        return None if content is None else text(content)

    async def definition_versions(self, workflow_key: str) -> list[str]:
        """The registered ids of one workflow (`namespace.name`), from its version index."""
        index = self.keys.definition_versions(workflow_key)
        with map_redis_errors():
            ids = {text(i) for i in await self.redis.smembers(index)}
            if not ids:
                # Registered before the index existed: find them once by name, and index them.
                prefix = workflow_key + "."  # labels hold no dots: a version follows
                stored = await self.redis.hkeys(self.keys.definitions)
                ids = {i for i in map(text, stored) if i.startswith(prefix)}
                if ids:
                    await self.redis.sadd(index, *ids)
        return sorted(ids)

    async def list_definition_ids(self) -> list[str]:
        with map_redis_errors():
            ids = await self.redis.hkeys(self.keys.definitions)
        return sorted(text(i) for i in ids)
