"""Causation: which instance caused a new one, so chains that loop back are stopped.

Child runs record their ancestors' workflows, and a child whose workflow is among them is
refused. An instance can also cause others through what the sidecar sends for it: an event it
emits may trigger a workflow, and a `call: grpc` may reach a sidecar's Run. Both carry the
causing instance: emitted events as the CloudEvent attribute `okracause`, which only the engine
sets (the Emit rpc refuses it), and gRPC and HTTP calls as `okra-cause` metadata (a header)
signed with the cluster's secret, which callers cannot make. A new instance caused this way
inherits the chain, its causing instance's ancestors plus that instance's workflow, and is
refused when its own workflow is already in it. One instance may cause at most
`maxCausedPerMinute` instances (a burst of that many, then evenly spread), so a fan-out loop
cannot flood Redis either.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from okra_sidecar.errors import InvalidInputError, Reason, ResourceExhaustedError
from okra_sidecar.policy.rates import parse_rate
from okra_sidecar.policy.signing import Signer

__all__ = [
    "CAUSE_METADATA",
    "CausationGuard",
    "InstanceFieldReader",
    "RateLimiter",
]

logger = logging.getLogger(__name__)

CAUSE_METADATA = "okra-cause"  # on gRPC calls workflows make: `<instance id>.<tag>`


class InstanceFieldReader(Protocol):
    """Reads fields of an instance's hash (RedisEffectStore.instance_fields)."""

    async def instance_fields(self, instance_id: str, *names: str) -> list[str | None]: ...


class RateLimiter(Protocol):
    """Shared rate limits (RedisPolicyStore.acquire_rate)."""

    async def acquire_rate(
        self, name: str, *, interval_ms: float, period_ms: int
    ) -> float | None: ...


class CausationGuard:
    """Signs and checks causes, and admits the instances they cause.

    Args:
        instances: reads the causing instance's workflow and ancestors.
        limiter: the shared GCRA limits.
        secret: loads the cluster's signing key (once).
        per_minute: instances one instance may cause a minute; 0: no bound.
    """

    def __init__(
        self,
        *,
        instances: InstanceFieldReader,
        limiter: RateLimiter | None,
        secret: Callable[[], Awaitable[bytes]],
        per_minute: int,
    ) -> None:
        self._instances = instances
        self._limiter = limiter
        self._secret = secret
        self._rate = parse_rate(f"{per_minute}/minute") if per_minute > 0 else None
        self._signer: Signer | None = None

    async def _signing(self) -> Signer:
        if self._signer is None:
            self._signer = Signer(await self._secret())
        return self._signer

    async def sign(self, instance_id: str) -> str:
        """The `okra-cause` value for calls `instance_id` makes."""
        return f"{instance_id}.{(await self._signing()).sign('cause|' + instance_id)}"

    async def verify(self, value: str) -> str:
        """The instance a signed cause names, or '' when it is not one a sidecar signed."""
        instance_id, _, tag = value.rpartition(".")
        if instance_id and (await self._signing()).verify("cause|" + instance_id, tag):
            return instance_id
        logger.info("ignoring an okra-cause that no sidecar of this cluster signed")
        return ""

    async def count(self, cause: str) -> None:
        """Count one more instance caused by `cause`.

        Raises:
            ResourceExhaustedError: `cause` caused maxCausedPerMinute instances lately.
        """
        if self._rate is None or self._limiter is None:
            return
        wait_s = await self._limiter.acquire_rate(
            f"cause:{cause}", interval_ms=self._rate.interval_ms, period_ms=self._rate.period_ms
        )
        if wait_s is not None:
            raise ResourceExhaustedError(
                f"instance {cause} started more than {self._rate.limit} instances within a "
                f"minute (maxCausedPerMinute); retry in {wait_s:.2f}s",
                reason=Reason.RATE_LIMITED,
                policy="maxCausedPerMinute",
                retry_after_s=wait_s,
                metadata={"instance": cause},
            )

    async def admit(self, cause: str, workflow_id: str) -> tuple[str, ...]:
        """The ancestors of a new `workflow_id` instance that `cause` causes ('' for none).

        Raises:
            InvalidInputError: the workflow is already in the chain that led here.
            ResourceExhaustedError: `cause` caused too many instances lately.
        """
        if not cause:
            return ()
        workflow, ancestors_json = await self._instances.instance_fields(cause, "wf", "anc")
        if workflow is None:
            return ()  # purged meanwhile: nothing left to loop back to
        chain: Sequence[str] = [*json.loads(ancestors_json or "[]"), workflow]
        key = ".".join(workflow_id.split(".")[:2])
        if any(".".join(w.split(".")[:2]) == key for w in chain):
            raise InvalidInputError.for_field(
                "workflow_id",
                f"workflow {key} may not run inside itself: instance {cause} was started by "
                f"{' -> '.join(chain)}, which it would call again",
            )
        await self.count(cause)
        return tuple(chain)
