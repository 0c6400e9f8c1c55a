"""What the policy layer knows about a call: who, which workflow or instance, what it decided."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from okra_sidecar.admission import RunLimits
from okra_sidecar.policy.cel import to_cel

# Workflow ids parsed and kept (api callers may name any, so the cache is bounded).
WORKFLOW_REF_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Identity:
    """The caller, from a verified bearer token and/or a verified client certificate.

    `peer` is the client certificate's SPIFFE ID, else its subject; anonymous callers have
    neither claims nor a peer.
    """

    claims: dict[str, Any] = field(default_factory=dict)
    peer: str = ""

    @property
    def authenticated(self) -> bool:
        return bool(self.claims) or bool(self.peer)

    @property
    def subject(self) -> str:
        return str(self.claims.get("sub", "")) if self.claims else ""

    @property
    def issuer(self) -> str:
        return str(self.claims.get("iss", "")) if self.claims else ""

    def describe(self) -> str:
        if self.subject or self.peer:
            return self.subject or self.peer
        return "an authenticated caller" if self.claims else "anonymous"

    @cached_property
    def cel_claims(self) -> Any:
        """The claims as CEL values, converted once per identity (identities are cached)."""
        return to_cel(self.claims)


ANONYMOUS = Identity()


def same_owner(owner: Mapping[str, Any], claims: Mapping[str, Any]) -> bool:
    """Whether two sets of claims name one caller: the same `sub` from the same `iss`."""
    if not owner and not claims:
        return True  # anonymous schedules, in optional mode, belong to anonymous callers
    return (owner.get("sub"), owner.get("iss")) == (claims.get("sub"), claims.get("iss"))


@dataclass(frozen=True)
class WorkflowRef:
    """A workflow as policies see it: `id` is `namespace.name`, `fullId` adds the version."""

    namespace: str
    name: str
    version: str = ""

    @classmethod
    def parse(cls, workflow_id: str) -> WorkflowRef:
        # Every Run parses the id it names: the same few ids, parsed once each.
        return _parse_workflow_ref(workflow_id)

    # Cached on the (immutable) instance: parse hands the same one to every call.
    @cached_property
    def key(self) -> str:
        return f"{self.namespace}.{self.name}" if self.namespace else ""

    @cached_property
    def full_id(self) -> str:
        return f"{self.key}.{self.version}" if self.version else self.key

    @cached_property
    def _names(self) -> tuple[str, ...]:
        return (self.key, self.full_id) if self.version else (self.key,)

    def names(self) -> tuple[str, ...]:
        """What allowed/blocked globs are matched against."""
        return self._names

    def to_activation(self) -> dict[str, str]:
        return {
            "id": self.key,
            "fullId": self.full_id,
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
        }


NO_WORKFLOW = WorkflowRef("", "")


@lru_cache(maxsize=WORKFLOW_REF_CACHE_SIZE)
def _parse_workflow_ref(workflow_id: str) -> WorkflowRef:
    namespace, _, rest = workflow_id.partition(".")
    name, _, version = rest.partition(".")
    return WorkflowRef(namespace, name, version)


@dataclass(frozen=True)
class InstanceView:
    """The part of an instance that signal and cancel policies read."""

    instance_id: str
    status: str
    workflow_id: str
    tags: dict[str, str] = field(default_factory=dict)

    def to_activation(self) -> dict[str, Any]:
        return {
            "id": self.instance_id,
            "status": self.status,
            "workflow": self.workflow_id,
            "tags": self.tags,
        }


@dataclass(frozen=True)
class CallGrant:
    """What the policies allowed, handed by the servicer's gate to the store's atomic step.

    `expected_status` is the instance status a signal or cancel policy was evaluated on; the
    store applies the call only if the status is still that, so a concurrent change cannot
    slip past the policy.
    """

    identity: Identity = ANONYMOUS
    expected_status: str | None = None
    run_limits: RunLimits = RunLimits()
    # Query narrowed by policy: the statuses it may return and its page size (None: as asked).
    query_statuses: tuple[str, ...] | None = None
    query_limit: int | None = None
    # The id a Run's instance gets, chosen before the decision so that its record names it.
    instance_id: str = ""
    # The most instances a bulk operation may match (policy.workflow.bulk.maxInstances).
    bulk_max_instances: int | None = None


_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar(
    "okra_identity", default=ANONYMOUS
)


def current_identity() -> Identity:
    return _identity.get()


def set_identity(identity: Identity) -> contextvars.Token[Identity]:
    return _identity.set(identity)


def reset_identity(token: contextvars.Token[Identity]) -> None:
    _identity.reset(token)


__all__ = [
    "ANONYMOUS",
    "NO_WORKFLOW",
    "CallGrant",
    "Identity",
    "InstanceView",
    "WorkflowRef",
    "current_identity",
    "reset_identity",
    "same_owner",
    "set_identity",
]
