"""PolicyManager: the policy set in force, kept the same on every sidecar sharing a Redis.

The set lives in Redis with a version. A change (the policy file edited, or the admin rpc) is
compiled first, and refused whole if any key fails; only a set that compiles is stored, and
storing it publishes its version on a channel. Every sidecar subscribes, fetches the new set,
compiles it and swaps it in, well within a second. A periodic version check covers messages
missed while a subscription was being re-established.

At startup the file wins only if it changed since it was last applied, so restarting a
sidecar does not undo a newer admin change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from okra_sidecar.errors import PolicyLoadError, StoreUnavailableError
from okra_sidecar.policy.audit import AuditLog
from okra_sidecar.policy.cel import CelEngine
from okra_sidecar.policy.document import (
    PolicySet,
    canonical_json,
    compile_policies,
    parse_policy_text,
)
from okra_sidecar.policy.model import Identity
from okra_sidecar.tasks import cancel_and_wait
from okra_sidecar.telemetry.repeats import RepeatedWarnings

if TYPE_CHECKING:
    from okra_sidecar.store.policy_store import StoredPolicies

logger = logging.getLogger(__name__)
# A failover fails each attempt for seconds: a line per kind every few seconds.
_outages = RepeatedWarnings(logger)

RESYNC_INTERVAL_S = 5.0
AUDIT_FLUSH_TIMEOUT_S = 5.0


class PolicyChangeFeed(Protocol):
    async def next(self, timeout_s: float) -> int | None: ...


class PolicyStorage(Protocol):
    """Where the shared set lives; RedisPolicyStore implements it."""

    async def get_policies(self) -> StoredPolicies | None: ...

    async def get_policy_version(self) -> int: ...

    async def publish_policies(
        self, document: str, *, source: str, digest: str, file_digest: str = ""
    ) -> int: ...

    def policy_changes(self) -> AbstractAsyncContextManager[Any]: ...


@dataclass(frozen=True)
class _FileState:
    stamp: tuple[int, int]  # mtime_ns, size
    digest: str


def file_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class PolicyManager:
    """Holds `current` and keeps it in step with the shared set."""

    def __init__(
        self,
        *,
        storage: PolicyStorage,
        cel: CelEngine,
        env_names: frozenset[str],
        audit: AuditLog,
        file: Path | None = None,
        watch_interval_s: float = 1.0,
        resync_interval_s: float = RESYNC_INTERVAL_S,
    ) -> None:
        self._storage = storage
        self._cel = cel
        self._env_names = env_names
        self._audit = audit
        self._file = file
        self._watch_interval_s = watch_interval_s
        self._resync_interval_s = resync_interval_s
        self._current = PolicySet()
        self._file_state: _FileState | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()

    @property
    def current(self) -> PolicySet:
        return self._current

    def compile(self, document: Mapping[str, Any], *, source: str, version: int = 0) -> PolicySet:
        return compile_policies(
            document, cel=self._cel, env_names=self._env_names, source=source, version=version
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the file (refusing to start if it does not compile) or the shared set.

        Raises:
            PolicyLoadError: the file, or the shared set, does not compile here.
        """
        stored = await self._storage.get_policies()
        if self._file is not None:
            content, state = self._read_file()
            policies = self._load_file(content)
            self._file_state = state
            if stored is None or stored.file_digest != state.digest:
                await self._publish(policies, source=self._file_source, file_digest=state.digest)
            else:
                await self._apply(stored)
        elif stored is not None:
            await self._apply(stored)
        self._tasks = [asyncio.create_task(self._follow(), name="okra-policy-follow")]
        if self._file is not None:
            self._tasks.append(asyncio.create_task(self._watch(), name="okra-policy-file"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        try:
            await asyncio.wait_for(self._audit.flush(), timeout=AUDIT_FLUSH_TIMEOUT_S)
        except (TimeoutError, StoreUnavailableError) as exc:
            logger.warning("audit records not all written at shutdown: %r", exc)

    # -- changes --------------------------------------------------------------------------------

    async def set_policies(self, document: Mapping[str, Any], *, identity: Identity) -> PolicySet:
        """Replace the shared set (the admin rpc); applied here before returning.

        Raises:
            PolicyLoadError: a key does not compile; nothing changed anywhere.
        """
        source = f"admin:{identity.describe()}"
        policies = self.compile(document, source=source)
        return await self._publish(policies, source=source, identity=identity)

    async def refresh(self) -> None:
        """Fetch the shared set and apply it if it is newer than the one in force."""
        stored = await self._storage.get_policies()
        if stored is not None and stored.version > self._current.version:
            await self._apply(stored)

    async def _publish(
        self,
        policies: PolicySet,
        *,
        source: str,
        file_digest: str = "",
        identity: Identity | None = None,
    ) -> PolicySet:
        version = await self._storage.publish_policies(
            canonical_json(policies.document),
            source=source,
            digest=policies.digest,
            file_digest=file_digest,
        )
        async with self._lock:
            if version > self._current.version:
                self._current = replace(policies, version=version, source=source)
        logger.info("policy set version %d from %s is in force", version, source)
        await self._audit.policy_change(
            identity=identity, source=source, version=version, digest=policies.digest
        )
        return self._current

    async def _apply(self, stored: StoredPolicies) -> None:
        async with self._lock:
            if stored.version <= self._current.version:
                return
            try:
                policies = self.compile(stored.document, source=stored.source)
            except PolicyLoadError as exc:
                if self._current.version == 0 and not self._tasks:
                    raise
                logger.error(
                    "shared policy set version %d does not compile on this sidecar; "
                    "keeping version %d: %s",
                    stored.version,
                    self._current.version,
                    exc,
                )
                return
            self._current = replace(policies, version=stored.version, source=stored.source)
        logger.info("policy set version %d from %s is in force", stored.version, stored.source)

    async def _follow(self) -> None:
        """Apply every announced change; re-subscribe and catch up after a lost connection."""
        backoff = 0.1
        while True:
            try:
                async with self._storage.policy_changes() as changes:
                    await self.refresh()
                    backoff = 0.1
                    while True:
                        version = await changes.next(self._resync_interval_s)
                        if version is None:
                            version = await self._storage.get_policy_version()
                        if version > self._current.version:
                            await self.refresh()
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as exc:
                _outages.warning(
                    exc.reason, "policy updates paused: %s; retrying in %.1fs", exc, backoff
                )
            except Exception:
                logger.exception("policy updates failed; retrying in %.1fs", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    # -- the file -------------------------------------------------------------------------------

    @property
    def _file_source(self) -> str:
        return f"file:{self._file.name}" if self._file is not None else "file"

    def _read_file(self) -> tuple[bytes, _FileState]:
        assert self._file is not None
        try:
            stat = self._file.stat()
            content = self._file.read_bytes()
        except OSError as exc:
            raise PolicyLoadError(f"policy file {self._file}: {exc.strerror}") from exc
        return content, _FileState((stat.st_mtime_ns, stat.st_size), file_digest(content))

    def _load_file(self, content: bytes) -> PolicySet:
        source = self._file_source
        try:
            text = content.decode()
        except UnicodeDecodeError:
            raise PolicyLoadError(f"policy file {self._file} is not UTF-8 text") from None
        return self.compile(parse_policy_text(text, source=source), source=source)

    async def _watch(self) -> None:
        """Pick up edits to the file; a version that does not compile is logged and skipped."""
        while True:
            await asyncio.sleep(self._watch_interval_s)
            try:
                await self.check_file()
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as exc:
                logger.warning("policy file change not published yet: %s", exc)
            except Exception:
                logger.exception("checking the policy file failed")

    async def check_file(self) -> None:
        """Re-read the file if it changed on disk and publish it if its content changed."""
        assert self._file is not None
        with contextlib.suppress(OSError):
            stat = self._file.stat()
            known = self._file_state
            if known is not None and known.stamp == (stat.st_mtime_ns, stat.st_size):
                return
        try:
            content, state = self._read_file()
        except PolicyLoadError as exc:
            logger.error("%s; the set in force stays", exc)
            return
        previous, self._file_state = self._file_state, state
        if previous is not None and previous.digest == state.digest:
            return
        try:
            policies = self._load_file(content)
        except PolicyLoadError as exc:
            logger.error("%s", exc)
            return
        stored = await self._storage.get_policies()
        if stored is not None and stored.file_digest == state.digest:
            # Another sidecar watching the same file published it already.
            await self._apply(stored)
            return
        await self._publish(policies, source=self._file_source, file_digest=state.digest)


__all__ = ["PolicyManager", "PolicyStorage", "file_digest"]
