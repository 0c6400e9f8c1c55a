"""Audit records: one per policy decision, per failure alert and per policy change.

Records go to a capped Redis stream through an `AuditSink`. `auditLevel: summary` writes who,
what, the outcome and the deciding policy; `full` adds the caller's claims and the request's
details (never the input itself, only its size). Alerts and policy changes are recorded
whatever the audit level, since they are rare and an operator needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import trace

from okra_sidecar.clock import now_ms
from okra_sidecar.policy.model import Identity, InstanceView, WorkflowRef

logger = logging.getLogger(__name__)

KIND_DECISION = "decision"
KIND_ALERT = "alert"
KIND_POLICY = "policy"
# The rpcs that start the instance they name (their denials name the workflow).
STARTING_METHODS = frozenset({"Run"})


class AuditSink(Protocol):
    """Where records go; RedisPolicyStore writes them to a capped stream."""

    async def append_audit(self, record: dict[str, Any]) -> None: ...

    async def flush_audit(self) -> None: ...


@dataclass(frozen=True)
class ServiceIdentity:
    """This sidecar's service, as configured (serviceName, serviceNamespace)."""

    name: str = ""
    namespace: str = ""


@dataclass(frozen=True)
class Call:
    """One rpc as the policy layer sees it; the api fills it from the request."""

    method: str
    identity: Identity
    metadata: Mapping[str, str] = field(default_factory=dict)
    workflow: WorkflowRef | None = None
    instance: InstanceView | None = None
    instance_id: str = ""
    signal: str = ""
    reason: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    input_bytes: int = 0
    input: Any = None
    query_statuses: tuple[str, ...] = ()
    query_limit: int = 0
    # What the call acts on besides workflows and instances, as conditions read it:
    # ("event", {...}) for Emit, ("schedule", {...}), ("task", {"queue": ...}).
    resource: tuple[str, Mapping[str, Any]] | None = None

    @property
    def target(self) -> str:
        """What the call is about, for messages: the instance, then its workflow where the
        call knows it (`<id> (<workflow>)`); the workflow alone for a Run; else the resource."""
        workflow = self.workflow.full_id if self.workflow is not None and self.workflow.key else ""
        # A Run's instance id is the one the sidecar chose for it: the caller named a workflow.
        if self.instance_id and self.method not in STARTING_METHODS:
            return f"{self.instance_id} ({workflow})" if workflow else self.instance_id
        if workflow:
            return workflow
        if self.resource is not None:
            root, fields = self.resource
            name = fields.get("id") or fields.get("type") or fields.get("queue") or ""
            return f"{root} {name}" if name else ""
        return ""

    def details(self) -> dict[str, Any]:
        """The request as the `full` audit level records it."""
        detail: dict[str, Any] = {"metadata": dict(self.metadata)}
        if self.signal:
            detail["signal"] = self.signal
        if self.reason:
            detail["reason"] = self.reason
        if self.tags:
            detail["tags"] = dict(self.tags)
        if self.method == "Run":
            detail["inputBytes"] = self.input_bytes
        if self.method == "Query":
            detail["statuses"] = list(self.query_statuses)
            detail["limit"] = self.query_limit
        if self.instance is not None:
            detail["instanceStatus"] = self.instance.status
        if self.resource is not None:
            root, fields = self.resource
            detail[root] = {k: v for k, v in fields.items() if k != "owner"}
        return detail


class AuditLog:
    """Builds records and hands them to the sink."""

    def __init__(self, *, sink: AuditSink, service: ServiceIdentity) -> None:
        self._sink = sink
        self._service = service

    def _base(self, kind: str, identity: Identity | None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "kind": kind,
            "time": now_ms(),
            "service": self._service.name,
            "serviceNamespace": self._service.namespace,
        }
        if identity is not None:
            record["subject"] = identity.subject
            record["issuer"] = identity.issuer
            if identity.peer:
                record["peer"] = identity.peer
        return record

    async def flush(self) -> None:
        """Wait until every record handed to the sink is stored."""
        await self._sink.flush_audit()

    async def decision(
        self, level: str, call: Call, *, allowed: bool, policy: str = "", message: str = ""
    ) -> None:
        """Record one policy decision at `level` (none writes nothing)."""
        if level == "none":
            return
        record = self._base(KIND_DECISION, call.identity)
        record.update(
            method=call.method,
            workflow=call.workflow.full_id if call.workflow is not None else "",
            instance=call.instance_id,
            allowed=allowed,
            policy=policy,
            message=message,
        )
        if level == "full":
            record["claims"] = call.identity.claims
            record["request"] = call.details()
        await self._sink.append_audit(record)

    async def alert(
        self, *, instance_id: str, workflow_id: str, pattern: str, error: Mapping[str, Any] | None
    ) -> None:
        """A failed instance of a workflow that `alertOnFailure` names: record, log, span event."""
        error = error or {}
        message = (
            f"workflow {workflow_id} instance {instance_id} failed: "
            f"{error.get('title') or 'no title'}: {error.get('detail') or ''}".rstrip(": ")
        )
        record = self._base(KIND_ALERT, None)
        record.update(
            workflow=workflow_id,
            instance=instance_id,
            policy="policy.workflow.alertOnFailure",
            pattern=pattern,
            message=message,
            error=dict(error),
        )
        logger.error("alert (policy.workflow.alertOnFailure %s): %s", pattern, message)
        trace.get_current_span().add_event(
            "okra.alert",
            {
                "okra.workflow_id": workflow_id,
                "okra.instance_id": instance_id,
                "okra.alert.pattern": pattern,
                "okra.alert.message": message,
            },
        )
        await self._sink.append_audit(record)

    async def policy_change(
        self, *, identity: Identity | None, source: str, version: int, digest: str
    ) -> None:
        record = self._base(KIND_POLICY, identity)
        record.update(
            source=source,
            version=version,
            digest=digest,
            message=f"policy set version {version} from {source}",
        )
        await self._sink.append_audit(record)


__all__ = ["AuditLog", "AuditSink", "Call", "ServiceIdentity"]
