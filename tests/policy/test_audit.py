"""Audit records (levels, paging, policy changes) and alerts, with the caller on spans."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import json_format
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from tests.helpers import bad_request_fields, expect_rpc_error, wait_for_status
from tests.policy.support import (
    ADMIN,
    Policed,
    audit_records,
    bearer,
    eventually,
    policed_sidecar,
    policy_settings,
    run,
)
from tests.telemetry.support import memory_telemetry, wait_for_spans, with_telemetry

KIND = admin_pb.AuditRecordKind


async def set_policies(policed: Policed, text: str) -> int:
    reply = await policed.admin.SetPolicies(admin_pb.SetPoliciesRequest(text=text), metadata=ADMIN)
    return reply.version


async def decisions(policed: Policed) -> list[admin_pb.AuditRecord]:
    return [
        r
        for r in await audit_records(policed.admin)
        if r.kind == KIND.Value("AUDIT_RECORD_KIND_DECISION")
    ]


async def test_audit_levels(redis: Redis, redis_url: str) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        caller = bearer(sub="ada", team="growth")
        await set_policies(policed, '{"policy.workflow.audit": false}')
        await run(policed.stub, "app.orders.1.0.0", metadata=caller)
        assert await decisions(policed) == []

        await set_policies(policed, '{"policy.workflow.audit": true}')
        await run(policed.stub, "app.orders.1.0.0", {"n": 1}, metadata=caller)
        [summary] = await decisions(policed)
        assert (summary.method, summary.subject, summary.issuer, summary.allowed) == (
            "Run",
            "ada",
            "https://issuer.test",
            True,
        )
        assert (summary.workflow_id, summary.service) == ("app.orders.1.0.0", "orders")
        # A summary holds no claims and no request details.
        assert json_format.MessageToDict(summary.details) == {"serviceNamespace": "app"}

        await set_policies(
            policed, '{"policy.workflow.audit": true, "policy.workflow.auditLevel": "full"}'
        )
        await run(policed.stub, "app.orders.1.0.0", {"n": 1}, metadata=caller, timeout=5)
        full = (await decisions(policed))[0]
        details = json_format.MessageToDict(full.details)
        assert details["claims"]["team"] == "growth"
        # The input itself is never recorded, only its size; the token never is.
        assert details["request"]["inputBytes"] > 0
        assert "authorization" not in details["request"]["metadata"]

        await set_policies(
            policed, '{"policy.workflow.audit": true, "policy.workflow.auditLevel": "none"}'
        )
        await run(policed.stub, "app.orders.1.0.0", metadata=caller)
        assert len(await decisions(policed)) == 2


async def test_policy_changes_are_recorded_and_pages_follow_the_cursor(
    redis: Redis, redis_url: str
) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        versions = [
            await set_policies(policed, f'{{"policy.workflow.query.maxResults": {n}}}')
            for n in (10, 20, 30)
        ]
        first = await policed.admin.ListAuditRecords(
            admin_pb.ListAuditRecordsRequest(limit=2), metadata=ADMIN
        )
        assert [r.kind for r in first.records] == [KIND.Value("AUDIT_RECORD_KIND_POLICY")] * 2
        assert [json_format.MessageToDict(r.details)["version"] for r in first.records] == [
            versions[2],
            versions[1],
        ]
        assert first.records[0].subject == "platform"
        assert "from admin:platform" in first.records[0].message
        assert first.cursor
        second = await policed.admin.ListAuditRecords(
            admin_pb.ListAuditRecordsRequest(limit=2, cursor=first.cursor), metadata=ADMIN
        )
        assert [json_format.MessageToDict(r.details)["version"] for r in second.records] == [
            versions[0]
        ]
        assert second.cursor == ""
        for request, field in [
            (admin_pb.ListAuditRecordsRequest(limit=5000), "limit"),
            (admin_pb.ListAuditRecordsRequest(cursor="yesterday"), "cursor"),
        ]:
            error = await expect_rpc_error(
                policed.admin.ListAuditRecords(request, metadata=ADMIN),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert bad_request_fields(error) == [field]


async def test_the_caller_and_alerts_appear_on_spans(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    exporter = InMemorySpanExporter()
    settings = with_telemetry(policy_settings(redis_url), traces_exporter="console")
    telemetry = memory_telemetry(exporter, instance_id="audited")
    try:
        async with policed_sidecar(settings, telemetry=telemetry) as policed:
            await set_policies(policed, '{"policy.workflow.alertOnFailure": ["compliance.*"]}')
            instance_id = await run(
                policed.stub, "compliance.check.1.0.0", metadata=bearer(sub="ada")
            )
            await wait_for_status(policed.stub, instance_id, {pb.WORKFLOW_STATUS_FAILED})
            spans = await wait_for_spans(
                exporter,
                lambda spans: any(e.name == "okra.alert" for s in spans for e in s.events),
            )
            run_span = next(s for s in spans if (s.attributes or {}).get("rpc.method") == "Run")
            assert (run_span.attributes or {}).get("okra.caller.id") == "ada"
            alert = next(e for s in spans for e in s.events if e.name == "okra.alert")
            assert (alert.attributes or {}).get("okra.instance_id") == instance_id

            async def alerted() -> bool:
                records = await audit_records(policed.admin)
                return any(r.kind == KIND.Value("AUDIT_RECORD_KIND_ALERT") for r in records)

            await eventually(alerted)
    finally:
        telemetry.shutdown()


async def test_a_run_record_names_its_instance_and_a_limit_refusal_is_a_denial(
    redis: Redis, redis_url: str
) -> None:
    async with policed_sidecar(policy_settings(redis_url)) as policed:
        await set_policies(
            policed,
            '{"policy.workflow.audit": true, "policy.workflow.maxConcurrentInstances": 1}',
        )
        first = await run(policed.stub, "app.orders.1.0.0")
        error = await expect_rpc_error(
            policed.stub.Run(pb.RunRequest(workflow_id="app.orders.1.0.0")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        refused, allowed = await decisions(policed)  # newest first
        assert (allowed.method, allowed.allowed, allowed.instance_id) == ("Run", True, first)
        assert (refused.allowed, refused.policy) == (
            False,
            "policy.workflow.maxConcurrentInstances",
        )
        assert refused.message == error.details()
        assert refused.instance_id and refused.instance_id != first
