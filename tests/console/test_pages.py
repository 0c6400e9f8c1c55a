"""The console over HTTP against a real sidecar: pages, actions, live updates and sign-in."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.config import AuthSettings
from tests.console.support import console_sidecar
from tests.helpers import change_subscribers, eventually, value, wait_for_status

APPROVAL = "tests.approval.1.0.0"
SECRET = "a-console-test-secret-long-enough-for-hs256"


def said(response: httpx.Response) -> str:
    """The notice or error a redirect carries to the next page."""
    assert response.status_code == 303, response.text
    query = parse_qs(urlsplit(response.headers["location"]).query)
    return " ".join(query.get("notice", []) + query.get("error", []))


async def run_waiting(stub: Any, amount: int = 5) -> str:
    reply = await stub.Run(pb.RunRequest(workflow_id=APPROVAL, input=value({"amount": amount})))
    await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_WAITING})
    return str(reply.instance_id)


async def test_the_instances_page_lists_and_filters(redis: Redis, redis_url: str) -> None:
    async with console_sidecar(redis_url) as (_, stub, base), httpx.AsyncClient() as http:
        waiting = await run_waiting(stub)
        start = await http.get(f"{base}/console")
        assert start.status_code == 302 and start.headers["location"] == "/console/instances"
        listed = await http.get(f"{base}/console/instances")
        assert listed.status_code == 200
        assert f'data-instance="{waiting}"' in listed.text
        assert 'class="badge s-waiting">waiting' in listed.text
        assert "/do/0/askForApproval" in listed.text
        assert re.search(r"id=count>1<", listed.text)
        none = await http.get(f"{base}/console/instances", params={"status": "completed"})
        assert "no matching instances" in none.text and "id=count>0<" in none.text
        bad = await http.get(f"{base}/console/instances", params={"tag": "novalue"})
        assert "'novalue' is not key=value" in said(bad)
        unknown = await http.get(f"{base}/console/instances", params={"status": "done"})
        assert "status 'done' is not one of pending, running" in said(unknown)


async def test_an_instance_page_shows_its_diagram_and_timeline(
    redis: Redis, redis_url: str
) -> None:
    async with console_sidecar(redis_url) as (_, stub, base), httpx.AsyncClient() as http:
        instance_id = await run_waiting(stub, 7)
        shown = await http.get(f"{base}/console/instances/{instance_id}")
        assert shown.status_code == 200
        assert 'class="node kind-listen current" data-task="/do/0/askForApproval"' in shown.text
        assert "workflow.started" in shown.text and "task.started" in shown.text
        assert "&quot;amount&quot;: 7" in shown.text
        missing = await http.get(f"{base}/console/instances/00000000-0000-4000-8000-000000000000")
        assert missing.status_code == 404 and "does not exist" in missing.text


async def test_a_signal_from_the_page_completes_the_instance(redis: Redis, redis_url: str) -> None:
    async with console_sidecar(redis_url) as (_, stub, base), httpx.AsyncClient() as http:
        instance_id = await run_waiting(stub)
        page = f"{base}/console/instances/{instance_id}"
        foreign = await http.post(
            f"{page}/signal",
            data={"signal": "approve", "payload": "{}"},
            headers={"Origin": "http://elsewhere.example"},
        )
        assert foreign.status_code == 403
        status = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
        assert status.status == pb.WORKFLOW_STATUS_WAITING
        bad = await http.post(f"{page}/signal", data={"signal": "approve", "payload": "{"})
        assert said(bad).startswith("payload: not JSON")
        sent = await http.post(
            f"{page}/signal",
            data={"signal": "approve", "payload": '{"by": "grace"}'},
            headers={"Origin": base},
        )
        assert said(sent) == "signal approve sent"
        done = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        assert done.status == pb.WORKFLOW_STATUS_COMPLETED
        again = await http.post(f"{page}/cancel", data={"reason": "late"})
        assert "already completed" in said(again)


async def test_the_list_streams_changes(redis: Redis, redis_url: str) -> None:
    async with console_sidecar(redis_url) as (_, stub, base), httpx.AsyncClient() as http:
        first = await run_waiting(stub)
        url = f"{base}/console/instances/stream"
        async with http.stream("GET", url, params={"status": "waiting"}, timeout=30) as stream:
            assert stream.headers["content-type"] == "text/event-stream"
            lines = stream.aiter_lines()
            updates: list[dict[str, str]] = []

            async def next_update() -> dict[str, str]:
                async for line in lines:
                    if line.startswith("data: "):
                        return dict(json.loads(line[6:]))
                raise AssertionError("the stream ended")

            updates.append(await asyncio.wait_for(next_update(), 20))
            assert first in updates[0]["rows"] and updates[0]["count"] == "1"
            second = await run_waiting(stub)
            updates.append(await asyncio.wait_for(next_update(), 20))
            assert second in updates[1]["rows"] and updates[1]["count"] == "2"


async def test_the_instance_page_streams_each_change_it_is_told_of(
    redis: Redis, redis_url: str
) -> None:
    async with console_sidecar(redis_url) as (_, stub, base), httpx.AsyncClient() as http:
        instance_id = await run_waiting(stub)
        url = f"{base}/console/instances/{instance_id}/stream"
        async with http.stream("GET", url, timeout=30) as stream:
            assert stream.headers["content-type"] == "text/event-stream"

            async def watching() -> bool:
                return await change_subscribers(redis, instance_id) == 1

            # The view waits on the instance's changes (WatchInstance), not on a timer.
            await eventually(watching, what="the live view subscribed")
            await stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="seen live"))
            lines = stream.aiter_lines()

            async def next_update() -> dict[str, str]:
                async for line in lines:
                    if line.startswith("data: "):
                        return dict(json.loads(line[6:]))
                raise AssertionError("the stream ended")

            update = await asyncio.wait_for(next_update(), 20)
            assert "cancelled" in update["summary"] and "seen live" in update["summary"]
            assert "<h2>Input</h2>" in update["data"]


async def test_the_instance_page_is_sent_a_change_made_before_its_stream_opened(
    redis: Redis, redis_url: str
) -> None:
    async with console_sidecar(redis_url) as (_, stub, base), httpx.AsyncClient() as http:
        instance_id = await run_waiting(stub)
        shown = await http.get(f"{base}/console/instances/{instance_id}")
        found = re.search(r'data-stream="([^"]+)"', shown.text)
        assert found is not None
        # Cancelled between the page and its stream: the stream says so, buttons included.
        await stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason="raced"))
        url = f"{base}{found.group(1).replace('&amp;', '&')}"
        async with http.stream("GET", url, timeout=30) as stream:
            lines = stream.aiter_lines()

            async def next_update() -> dict[str, str]:
                async for line in lines:
                    if line.startswith("data: "):
                        return dict(json.loads(line[6:]))
                raise AssertionError("the stream ended")

            update = await asyncio.wait_for(next_update(), 10)
            assert "cancelled" in update["summary"]
            assert f"/console/instances/{instance_id}/delete" in update["actions"]
            assert "/suspend" not in update["actions"]


async def test_workflows_page_runs_from_the_generated_form(redis: Redis, redis_url: str) -> None:
    async with console_sidecar(redis_url) as (_, stub, base), httpx.AsyncClient() as http:
        listed = await http.get(f"{base}/console/workflows")
        assert APPROVAL in listed.text and "tests.steps.1.0.0" in listed.text
        shown = await http.get(f"{base}/console/workflows/{APPROVAL}")
        assert 'name="number:amount" min="0" required' in shown.text
        assert 'data-task="/do/0/askForApproval"' in shown.text
        refused = await http.post(
            f"{base}/console/workflows/{APPROVAL}/run", data={"number:amount": "-3"}
        )
        assert "minimum" in said(refused)
        started = await http.post(
            f"{base}/console/workflows/{APPROVAL}/run", data={"number:amount": "3"}
        )
        assert started.status_code == 303
        location = started.headers["location"]
        assert location.startswith("/console/instances/")
        instance_id = location.split("/")[3].split("?")[0]
        status = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
        assert status.workflow_id == APPROVAL
        missing = await http.get(f"{base}/console/workflows/tests.nothing.1.0.0")
        assert missing.status_code == 404


async def test_schedules_pause_and_resume(redis: Redis, redis_url: str) -> None:
    from okra_client.gen.schedule.v1 import schedule_pb2 as spb
    from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc

    async with console_sidecar(redis_url) as (sidecar, _, base), httpx.AsyncClient() as http:
        import grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            schedules = spb_grpc.ScheduleHostAPIStub(channel)
            created = await schedules.TriggerWorkflow(
                spb.TriggerWorkflowRequest(
                    workflow_id="tests.steps.1.0.0", input=value({}), cron_expression="0 6 * * *"
                )
            )
            schedule_id = created.schedule_id
            listed = await http.get(f"{base}/console/schedules")
            assert schedule_id in listed.text and "cron 0 6 * * *" in listed.text
            paused = await http.post(f"{base}/console/schedules/{schedule_id}/pause")
            assert paused.status_code == 303
            got = await schedules.GetSchedule(spb.GetScheduleRequest(schedule_id=schedule_id))
            assert got.schedule.paused
            await http.post(f"{base}/console/schedules/{schedule_id}/resume")
            got = await schedules.GetSchedule(spb.GetScheduleRequest(schedule_id=schedule_id))
            assert not got.schedule.paused


async def test_the_console_calls_as_the_signed_in_user(redis: Redis, redis_url: str) -> None:
    auth = AuthSettings(mode="required", hs256_secret=SECRET)
    async with console_sidecar(redis_url, auth=auth) as (_, _, base), httpx.AsyncClient() as http:
        anonymous = await http.get(f"{base}/console/instances")
        assert anonymous.status_code == 303
        assert anonymous.headers["location"].startswith("/console/login?error=")
        refused = await http.get(f"{base}/console/login", params={"error": "token expired"})
        assert refused.text.count("token expired") == 1
        form = await http.get(f"{base}/console/login")
        assert "name=token" in form.text
        token = jwt.encode({"sub": "ada", "exp": 4102444800}, SECRET)
        signed = await http.post(f"{base}/console/login", data={"token": token})
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
        listed = await http.get(f"{base}/console/instances")
        assert listed.status_code == 200 and "sign out" in listed.text
        await http.get(f"{base}/console/logout")
        assert (await http.get(f"{base}/console/instances")).status_code == 303


async def test_operator_buttons_suspend_resume_cancel_and_delete(
    redis: Redis, redis_url: str
) -> None:
    async with console_sidecar(redis_url) as (_, stub, base), httpx.AsyncClient() as http:
        instance_id = await run_waiting(stub)
        page = f"{base}/console/instances/{instance_id}"
        shown = await http.get(page)
        assert f'action="/console/instances/{instance_id}/suspend"' in shown.text
        assert "/resume" not in shown.text and "/delete" not in shown.text
        foreign = await http.post(f"{page}/suspend", headers={"Origin": "http://elsewhere.example"})
        assert foreign.status_code == 403
        status = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
        assert status.status == pb.WORKFLOW_STATUS_WAITING
        assert said(await http.post(f"{page}/suspend", data={"reason": "audit"})) == "suspended"
        status = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
        assert status.status == pb.WORKFLOW_STATUS_SUSPENDED
        shown = await http.get(page)
        assert f'action="/console/instances/{instance_id}/resume"' in shown.text
        assert "<input name=reason maxlength=1024>" in shown.text  # the Host API's limit
        assert "is suspended already" in said(await http.post(f"{page}/suspend"))
        # The refusal says what is wrong once, not again from its field violations.
        long = said(await http.post(f"{page}/resume", data={"reason": "r" * 1100}))
        assert long == "reason: is 1100 characters; at most 1024"
        assert said(await http.post(f"{page}/resume")) == "resumed"
        await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        assert "cancel it first" in said(await http.post(f"{page}/delete"))
        assert said(await http.post(f"{page}/cancel", data={"reason": "done"})) == "cancelled"
        shown = await http.get(page)
        assert f'action="/console/instances/{instance_id}/delete"' in shown.text
        assert "/suspend" not in shown.text and "/retry" not in shown.text
        deleted = await http.post(f"{page}/delete")
        assert said(deleted) == f"deleted {instance_id}"
        assert deleted.headers["location"].startswith("/console/instances?")
        assert (await http.get(page)).status_code == 404
        # An id from the path goes back quoted: its '?' starts no query of its own.
        odd = await http.post(f"{base}/console/instances/a%3Fb/suspend")
        assert odd.headers["location"].startswith("/console/instances/a%3Fb?error=")


async def test_a_failed_instance_offers_retry(redis: Redis, redis_url: str) -> None:
    async with console_sidecar(redis_url) as (_, stub, base), httpx.AsyncClient() as http:
        reply = await stub.Run(pb.RunRequest(workflow_id="tests.order.1.0.0", input=value({})))
        await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_FAILED})
        page = f"{base}/console/instances/{reply.instance_id}"
        shown = await http.get(page)
        assert f'action="/console/instances/{reply.instance_id}/retry"' in shown.text
        retried = await http.post(f"{page}/retry", data={"reason": "try again"})
        assert said(retried).startswith("runs again from /do/")
        history = await stub.GetHistory(
            pb.GetHistoryRequest(instance_id=reply.instance_id, limit=1000)
        )
        assert "workflow.retried" in [event.type for event in history.events]


async def test_a_completed_instance_offers_reset_to_the_tasks_it_started(
    redis: Redis, redis_url: str
) -> None:
    async with console_sidecar(redis_url) as (_, stub, base), httpx.AsyncClient() as http:
        reply = await stub.Run(
            pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({"n": 1}))
        )
        await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        page = f"{base}/console/instances/{reply.instance_id}"
        shown = await http.get(page)
        assert f'action="/console/instances/{reply.instance_id}/reset"' in shown.text
        assert "<option>/do/0/first</option><option>/do/1/second</option>" in shown.text
        reset = await http.post(f"{page}/reset", data={"task": "/do/1/second", "reason": "again"})
        assert said(reset) == "reset: runs again from /do/1/second"
        await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        history = await stub.GetHistory(
            pb.GetHistoryRequest(instance_id=reply.instance_id, limit=1000)
        )
        assert "workflow.reset" in [event.type for event in history.events]
        refused = await http.post(f"{page}/reset", data={"task": "/do/9/nope"})
        assert "is not a top-level task of tests.steps.1.0.0" in said(refused)


async def test_the_bulk_operations_page_lists_them_and_refuses_a_missing_one(
    redis: Redis, redis_url: str
) -> None:
    async with console_sidecar(redis_url) as (_, _stub, base), httpx.AsyncClient() as http:
        shown = await http.get(f"{base}/console/bulks")
        assert shown.status_code == 200 and "no bulk operations" in shown.text
        assert 'href="/console/bulks" class=here' in shown.text
        missing = "00000000-0000-4000-8000-000000000000"
        refused = await http.post(f"{base}/console/bulks/{missing}/cancel")
        assert said(refused) == f"bulk operation {missing} does not exist"


async def test_a_bulk_operation_is_dry_run_then_started_from_the_page(
    redis: Redis, redis_url: str
) -> None:
    async with console_sidecar(redis_url) as (_, stub, base), httpx.AsyncClient() as http:
        waiting = [await run_waiting(stub) for _ in range(2)]
        shown = await http.get(f"{base}/console/bulks")
        assert 'action="/console/bulks/start"' in shown.text
        start = f"{base}/console/bulks/start"
        fields = {"action": "cancel", "workflow": APPROVAL, "status": "waiting", "reason": "r"}
        dry = await http.post(start, data={**fields, "dry_run": "1"})
        assert "dry run: 2 instance(s) match; nothing was changed" in said(dry)
        assert all(i in said(dry) for i in waiting)
        # The form comes back as it was sent, for the real run.
        assert "status=waiting" in dry.headers["location"]
        for instance_id in waiting:
            status = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
            assert status.status == pb.WORKFLOW_STATUS_WAITING
        bad = await http.post(start, data={**fields, "action": "signal", "payload": "{"})
        assert said(bad).startswith("payload: not JSON")
        refused = await http.post(start, data={**fields, "action": "signal", "signal": "a b"})
        assert "'a b' is not a signal name" in said(refused)
        started = await http.post(start, data=fields)
        assert "on 2 instance(s)" in said(started)
        for instance_id in waiting:
            await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_CANCELLED})
