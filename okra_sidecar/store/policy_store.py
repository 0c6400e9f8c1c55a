"""RedisPolicyStore: the shared policy set, its change channel, rate limits and the audit stream."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from okra_sidecar.errors import InvalidInputError, StoreUnavailableError
from okra_sidecar.store.cluster_client import pooled_commands
from okra_sidecar.store.commands import HotCommands
from okra_sidecar.store.jsontext import dumps
from okra_sidecar.store.keys import RedisKeys
from okra_sidecar.store.multiplexed import MultiplexedScript
from okra_sidecar.store.replies import map_redis_errors
from okra_sidecar.store.replies import text as _text
from okra_sidecar.store.scripts import load_script
from okra_sidecar.store.stream_ids import FIRST, parse_stream_id

MAX_AUDIT_PAGE = 1000
MAX_AUDIT_QUEUE = 10_000
AUDIT_RETRY_S = 1.0
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredPolicies:
    """The policy set every sidecar sharing the Redis applies."""

    version: int
    document: dict[str, Any]
    source: str
    digest: str
    file_digest: str
    updated_ms: int


@dataclass(frozen=True)
class AuditEntry:
    entry_id: str
    record: dict[str, Any]


class PolicyChanges:
    """A subscription to policy changes; `next` yields announced versions."""

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub

    async def next(self, timeout_s: float) -> int | None:
        """The next announced version, or None if none came within `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (left := deadline - loop.time()) > 0:
            # Subscription confirmations also arrive here; they count as nothing.
            with map_redis_errors():
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=left
                )
            if message is not None and message.get("type") == "message":
                try:
                    return int(_text(message["data"]))
                except ValueError:
                    continue
        return None


class RedisPolicyStore:
    """Policy state shared through Redis, on a client it does not own."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        keys: RedisKeys,
        audit_max_length: int,
        hot: HotCommands | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self._audit_max_length = audit_max_length
        # A policed call's rate limit and audit record go through the store's hot commands
        # (one multiplexed connection): on redis-py's pool they cost more CPU than the rest
        # of the policy decision.
        self._hot = hot if hot is not None else pooled_commands(redis)
        self._gcra = MultiplexedScript(load_script("gcra"))
        self._audit_queue: list[str] = []
        self._audit_writer: asyncio.Task[None] | None = None
        self._set = redis.register_script(load_script("policy_set"))

    # -- the policy set ---------------------------------------------------------------------

    async def get_policies(self) -> StoredPolicies | None:
        with map_redis_errors():
            values = await self.redis.hmget(
                self.keys.policies,
                ["version", "document", "source", "digest", "fileDigest", "updated"],
            )
        version, document, source, digest, file_digest, updated = values
        if version is None or document is None:
            return None
        return StoredPolicies(
            version=int(version),
            document=json.loads(document),
            source=_text(source),
            digest=_text(digest),
            file_digest=_text(file_digest),
            updated_ms=int(updated or 0),
        )

    async def get_policy_version(self) -> int:
        with map_redis_errors():
            version = await self.redis.hget(self.keys.policies, "version")
        return int(version or 0)

    async def publish_policies(
        self, document: str, *, source: str, digest: str, file_digest: str = ""
    ) -> int:
        """Store a new set and announce it; returns its version."""
        with map_redis_errors():
            version = await self._set(
                keys=[self.keys.policies],
                args=[
                    document,
                    source,
                    digest,
                    file_digest,
                    int(time.time() * 1000),
                    self.keys.policy_channel,
                ],
            )
        return int(version)

    @asynccontextmanager
    async def policy_changes(self) -> AsyncIterator[PolicyChanges]:
        """Subscribe to announcements (a dedicated connection while the block runs)."""
        pubsub = self.redis.pubsub()
        try:
            with map_redis_errors():
                await pubsub.subscribe(self.keys.policy_channel)
            yield PolicyChanges(pubsub)
        finally:
            # Untyped in redis-py before 8.2, typed since: the ignore must hold on both.
            await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]

    # -- rate limits ------------------------------------------------------------------------

    async def acquire_rate(self, name: str, *, interval_ms: float, period_ms: int) -> float | None:
        """None when the call may go ahead, else seconds until it may (GCRA, one round trip)."""
        with map_redis_errors():
            wait_ms = await self._hot.evalsha(
                self._gcra, keys=[self.keys.rate_limit(name)], args=[repr(interval_ms), period_ms]
            )
        wait = float(_text(wait_ms))
        return None if wait <= 0 else wait / 1000

    # -- audit ------------------------------------------------------------------------------

    async def append_audit(self, record: dict[str, Any]) -> None:
        """Queue a record for the capped audit stream; a background task writes the queue.

        Records are written in batches, one pipeline per batch, so auditing every call costs a
        call no round trip of its own. A record reaches Redis within milliseconds; one queued
        when the process dies abruptly is lost (see docs/policies.md).
        """
        self._audit_queue.append(dumps(record, default=str))
        if self._audit_writer is None or self._audit_writer.done():
            self._audit_writer = asyncio.create_task(self._write_audit(), name="okra-audit")

    async def _write_audit(self) -> None:
        while self._audit_queue:
            batch, self._audit_queue = self._audit_queue, []
            try:
                key, most = self.keys.audit, self._audit_max_length
                with map_redis_errors():
                    # Trimmed approximately (whole stream nodes), as XADD allows.
                    await self._hot.pipeline(
                        [("XADD", key, "MAXLEN", "~", most, "*", "r", entry) for entry in batch]
                    )
            except StoreUnavailableError as exc:
                # Keep the newest records for the next attempt; Redis is back within seconds
                # or the sidecar reports NOT_SERVING anyway.
                self._audit_queue[:0] = batch[-MAX_AUDIT_QUEUE:]
                logger.warning("audit records wait for Redis (%d queued): %s", len(batch), exc)
                await asyncio.sleep(AUDIT_RETRY_S)

    async def flush_audit(self) -> None:
        """Wait until every queued audit record is in Redis."""
        while self._audit_queue or (self._audit_writer and not self._audit_writer.done()):
            if self._audit_writer is None or self._audit_writer.done():
                self._audit_writer = asyncio.create_task(self._write_audit(), name="okra-audit")
            await asyncio.shield(self._audit_writer)

    async def list_audit(self, *, limit: int, before: str = "") -> list[AuditEntry]:
        """Newest first; `before` is an entry id from a previous page (exclusive)."""
        # "(" makes the bound exclusive; Redis refuses an exclusive end at the first id.
        if before and parse_stream_id(before) in (None, FIRST):
            raise InvalidInputError.for_field("cursor", "is not a cursor from a previous page")
        await self.flush_audit()
        upper = f"({before}" if before else "+"
        with map_redis_errors():
            entries: Any = await self.redis.xrevrange(
                self.keys.audit, max=upper, min="-", count=min(limit, MAX_AUDIT_PAGE)
            )
        return [
            AuditEntry(_text(entry_id), json.loads(fields[b"r"])) for entry_id, fields in entries
        ]


__all__ = ["AuditEntry", "PolicyChanges", "RedisPolicyStore", "StoredPolicies"]
