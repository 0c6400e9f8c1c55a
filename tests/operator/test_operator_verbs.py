"""`okra instances suspend|resume|retry|reset|delete` and `okra bulk` against a real sidecar."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from okra_client import BulkTooManyInstancesError, OkraClient
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.operator.session import ExitCode
from tests.helpers import redis_fingerprint
from tests.operator.test_cli import RFC3339, address, okra, start_approval, wait_status
from tests.policy.support import policed_sidecar, policy_settings, settle, write_policies

__all__ = ["address"]  # the fixture, used by name


async def test_suspend_resume_and_delete_an_instance(address: str) -> None:
    instance_id = await start_approval(address)
    await wait_status(address, instance_id, "waiting")
    suspended = await okra(address, "instances", "suspend", instance_id, "--reason", "audit")
    assert suspended.code == 0, suspended.err
    assert suspended.out.strip() == f"instance {instance_id} suspended"
    await wait_status(address, instance_id, "suspended")
    again = await okra(address, "instances", "suspend", instance_id)
    assert again.code == ExitCode.PRECONDITION
    assert "is suspended already" in again.err
    resumed = await okra(address, "instances", "resume", instance_id, "-o", "json")
    assert resumed.code == 0, resumed.err
    assert resumed.json() == {"instanceId": instance_id, "resumed": True}
    await wait_status(address, instance_id, "waiting")
    refused = await okra(address, "instances", "delete", instance_id)
    assert refused.code == ExitCode.PRECONDITION and "cancel it first" in refused.err
    assert (await okra(address, "instances", "cancel", instance_id)).code == 0
    deleted = await okra(address, "instances", "delete", instance_id)
    assert deleted.code == 0 and deleted.out.strip() == f"instance {instance_id} deleted"
    gone = await okra(address, "instances", "get", instance_id)
    assert gone.code == ExitCode.NOT_FOUND


async def test_retry_refuses_what_has_not_failed(address: str) -> None:
    instance_id = await start_approval(address)
    retried = await okra(
        address, "instances", "retry", instance_id, "--variables", '{"attempt": 2}'
    )
    assert retried.code == ExitCode.PRECONDITION
    assert "only a failed instance can be retried" in retried.err
    bad = await okra(address, "instances", "retry", instance_id, "--variables", "[1]")
    assert bad.code == ExitCode.USAGE and "must be a JSON object" in bad.err


async def test_reset_takes_a_waiting_instance_back_to_a_task(address: str) -> None:
    instance_id = await start_approval(address)
    await wait_status(address, instance_id, "waiting")
    reset = await okra(
        address,
        *("instances", "reset", instance_id, "--task", "/do/0/askForApproval"),
        *("--reason", "asked the wrong person"),
    )
    assert reset.code == 0, reset.err
    assert (
        reset.out.strip()
        == f"instance {instance_id} (waiting) runs again from /do/0/askForApproval"
    )
    await wait_status(address, instance_id, "waiting")
    history = await okra(address, "instances", "history", instance_id, "-o", "json")
    assert history.code == 0, history.err
    assert "workflow.reset" in history.out
    unknown = await okra(
        address, "instances", "reset", instance_id, "--task", "/do/7/x", "-o", "json"
    )
    assert unknown.code == ExitCode.USAGE
    assert (
        "not a top-level task of tests.approval.1.0.0; it has /do/0/askForApproval" in unknown.err
    )
    missing = await okra(address, "instances", "reset", instance_id)
    assert missing.code == ExitCode.USAGE and "--task" in missing.err


async def test_bulk_from_dry_run_to_done(address: str) -> None:
    ids = [await start_approval(address, 5, "--tag", "batch=7") for _ in range(3)]
    for instance_id in ids:
        await wait_status(address, instance_id, "waiting")
    dry = await okra(address, "bulk", "start", "signal", "--tag", "batch=7", "--dry-run")
    assert dry.code == ExitCode.USAGE  # a signal bulk needs --signal
    three = await okra(address, "bulk", "start", "cancel", "--tag", "batch=7", "--dry-run")
    assert three.out.splitlines()[0] == "3 instances match; nothing was changed"
    solo = await start_approval(address, 5, "--tag", "solo=1")
    one = await okra(address, "bulk", "start", "cancel", "--tag", "solo=1", "--dry-run")
    assert one.out.splitlines() == ["1 instance matches; nothing was changed", f"  {solo}"]
    dry = await okra(
        address, "bulk", "start", "cancel", "--tag", "batch=7", "--dry-run", "-o", "json"
    )
    assert dry.code == 0, dry.err
    assert dry.json() == {
        "operationId": None,
        "matched": 3,
        "sampleInstanceIds": list(reversed(ids)),
        "maxInstances": 10_000,
    }
    started = await okra(
        address,
        *("bulk", "start", "signal", "--tag", "batch=7", "--signal", "approve"),
        *("--payload", '{"by": "cli"}', "--reason", "batch 7", "-o", "json"),
    )
    assert started.code == 0, started.err
    operation_id = started.json()["operationId"]
    assert started.json()["matched"] == 3
    for _ in range(100):
        got = await okra(address, "bulk", "get", operation_id, "-o", "json")
        assert got.code == 0, got.err
        if got.json()["state"] == "completed":
            break
        await asyncio.sleep(0.1)
    operation = got.json()
    # When it started and last moved, ISO 8601 as every time in JSON output.
    created, updated = operation.pop("createdAt"), operation.pop("updatedAt")
    assert RFC3339.fullmatch(created) and RFC3339.fullmatch(updated), (created, updated)
    assert created <= updated
    assert operation == {
        "operationId": operation_id,
        "action": "signal",
        "state": "completed",
        "matched": 3,
        "done": 3,
        "skipped": 0,
        "failed": 0,
        "reasons": {},
        "reason": "batch 7",
    }
    for instance_id in ids:
        await wait_status(address, instance_id, "completed")
    shown = await okra(address, "bulk", "get", operation_id)
    assert shown.code == 0, shown.err
    lines = {
        line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in shown.out.splitlines()
    }
    assert lines["created"] == f"{created[:10]} {created[11:19]}Z", shown.out
    assert lines["updated"] == f"{updated[:10]} {updated[11:19]}Z", shown.out
    listed = await okra(address, "bulk", "list")
    assert listed.code == 0 and operation_id in listed.out and "completed" in listed.out
    header, row = listed.out.splitlines()[:2]
    assert header.split()[-2:] == ["CREATED", "UPDATED"]
    assert row.split()[-4:] == [*lines["created"].split(), *lines["updated"].split()]
    cancelled = await okra(address, "bulk", "cancel", operation_id)
    assert cancelled.code == ExitCode.PRECONDITION and "completed already" in cancelled.err
    unknown = await okra(address, "bulk", "get", "00000000-0000-4000-8000-000000000000")
    assert unknown.code == ExitCode.NOT_FOUND


async def test_a_dry_run_over_bulk_max_instances_previews_what_a_real_run_refuses(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    policies = write_policies(tmp_path, '{"policy.workflow.bulk.maxInstances": 2}')
    async with policed_sidecar(policy_settings(redis_url, policies)) as policed:
        ids = [
            (await policed.stub.Run(pb.RunRequest(workflow_id="test.smoke.1.0.0"))).instance_id
            for _ in range(3)
        ]
        target = f"127.0.0.1:{policed.sidecar.port}"
        before = await settle(redis)
        async with OkraClient(target, timeout_s=5.0) as client:
            preview = await client.operator.start_bulk("cancel", dry_run=True)
            assert (preview.operation_id, preview.matched, preview.max_instances) == ("", 3, 2)
            assert preview.sample_instance_ids == list(reversed(ids))
            assert preview.over_limit
            with pytest.raises(BulkTooManyInstancesError) as refused:
                await client.operator.start_bulk("cancel", reason="too wide")
            assert refused.value.metadata["limit"] == "2"
        dry = await okra(target, "bulk", "start", "cancel", "--dry-run")
        assert dry.code == 0, dry.err
        assert dry.out.splitlines()[:2] == [
            "3 instances match; nothing was changed",
            "a real run would be refused: 3 is over the limit of 2 instances per bulk "
            "operation; narrow the filter or split the work",
        ]
        as_json = await okra(target, "bulk", "start", "cancel", "--dry-run", "-o", "json")
        assert as_json.json()["maxInstances"] == 2 and as_json.json()["matched"] == 3
        real = await okra(target, "bulk", "start", "cancel", "--reason", "too wide")
        assert real.code != 0 and "matches more than 2 instances" in real.err
        narrow = await okra(target, "bulk", "start", "cancel", "--tag", "none=1", "--dry-run")
        assert narrow.out.splitlines() == ["0 instances match; nothing was changed"]
        assert await redis_fingerprint(redis) == before
