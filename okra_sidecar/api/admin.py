"""PolicyAdminServicer: replace and read the shared policy set, read the audit stream."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.admin.v1 import admin_pb2_grpc as admin_pb_grpc

from okra_sidecar.errors import InvalidInputError, PolicyDeniedError, Reason, UnauthenticatedError
from okra_sidecar.policy.document import parse_policy_text
from okra_sidecar.policy.live import PolicyManager
from okra_sidecar.policy.model import Identity, current_identity
from okra_sidecar.store.policy_store import AuditEntry, RedisPolicyStore

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_AUDIT_PAGE = 100
KINDS = {
    "decision": admin_pb.AUDIT_RECORD_KIND_DECISION,
    "alert": admin_pb.AUDIT_RECORD_KIND_ALERT,
    "policy": admin_pb.AUDIT_RECORD_KIND_POLICY,
}
# Fields an AuditRecord has a place for; the rest go to `details`.
RECORD_FIELDS = frozenset(
    {"kind", "time", "subject", "issuer", "method", "workflow", "instance", "allowed"}
    | {"policy", "message", "service", "peer"}
)


def whole_numbers(data: Any) -> Any:
    """Struct numbers are doubles: give back 100 for 100.0, as the JSON said it."""
    if isinstance(data, float) and data.is_integer():
        return int(data)
    if isinstance(data, dict):
        return {k: whole_numbers(v) for k, v in data.items()}
    if isinstance(data, list):
        return [whole_numbers(v) for v in data]
    return data


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    json_format.ParseDict(data, message)
    return message


def audit_record_to_pb(entry: AuditEntry) -> admin_pb.AuditRecord:
    record = entry.record
    message = admin_pb.AuditRecord(
        id=entry.entry_id,
        kind=KINDS.get(str(record.get("kind")), admin_pb.AUDIT_RECORD_KIND_UNSPECIFIED),
        subject=str(record.get("subject", "")),
        issuer=str(record.get("issuer", "")),
        method=str(record.get("method", "")),
        workflow_id=str(record.get("workflow", "")),
        instance_id=str(record.get("instance", "")),
        allowed=bool(record.get("allowed", False)),
        policy=str(record.get("policy", "")),
        message=str(record.get("message", "")),
        service=str(record.get("service", "")),
        peer=str(record.get("peer", "")),
    )
    message.time.FromMilliseconds(int(record.get("time", 0)))
    details = {k: v for k, v in record.items() if k not in RECORD_FIELDS}
    if details:
        message.details.CopyFrom(_struct(details))
    return message


class PolicyAdminServicer(admin_pb_grpc.PolicyAdminServiceServicer):
    """Every rpc needs a verified token whose admin claim is true."""

    def __init__(
        self, *, manager: PolicyManager, store: RedisPolicyStore, admin_claim: str
    ) -> None:
        self._manager = manager
        self._store = store
        self._claim = admin_claim

    def _require_admin(self) -> Identity:
        identity = current_identity()
        if not identity.authenticated:
            raise UnauthenticatedError(
                f"the policy admin api needs a bearer token with the claim {self._claim}: true",
                reason=Reason.TOKEN_MISSING,
            )
        if identity.claims.get(self._claim) is not True:
            raise PolicyDeniedError(
                f"{identity.describe()} may not administer policies: the token lacks "
                f"{self._claim}: true; ask for a token with that claim",
                policy=f"claim:{self._claim}",
            )
        return identity

    async def SetPolicies(
        self, request: admin_pb.SetPoliciesRequest, context: Context
    ) -> admin_pb.SetPoliciesResponse:
        identity = self._require_admin()
        form = request.WhichOneof("document")
        if form is None:
            # An empty request would otherwise replace the whole set with no policies at all.
            raise InvalidInputError.for_field(
                "document",
                "the request carries no policy document: set `text` or `policies` "
                "(`policies: {}` clears every policy)",
            )
        if form == "text":
            # Off the event loop: even a bounded parse of a large text takes a while.
            document = await asyncio.to_thread(
                parse_policy_text, request.text, source="SetPolicies"
            )
        else:
            document = whole_numbers(json_format.MessageToDict(request.policies))
        policies = await self._manager.set_policies(document, identity=identity)
        return admin_pb.SetPoliciesResponse(
            version=policies.version, digest=policies.digest, keys=sorted(policies.document)
        )

    async def GetPolicies(
        self, request: admin_pb.GetPoliciesRequest, context: Context
    ) -> admin_pb.GetPoliciesResponse:
        self._require_admin()
        policies = self._manager.current
        return admin_pb.GetPoliciesResponse(
            policies=_struct(policies.document),
            version=policies.version,
            source=policies.source,
            digest=policies.digest,
        )

    async def ListAuditRecords(
        self, request: admin_pb.ListAuditRecordsRequest, context: Context
    ) -> admin_pb.ListAuditRecordsResponse:
        self._require_admin()
        limit = request.limit or DEFAULT_AUDIT_PAGE
        if not 1 <= limit <= 1000:
            raise InvalidInputError.for_field("limit", f"must be 1 to 1000 (0: 100), not {limit}")
        entries = await self._store.list_audit(limit=limit, before=request.cursor)
        return admin_pb.ListAuditRecordsResponse(
            records=[audit_record_to_pb(e) for e in entries],
            cursor=entries[-1].entry_id if len(entries) == limit else "",
        )


__all__ = ["PolicyAdminServicer", "audit_record_to_pb", "whole_numbers"]
