"""The console in a real browser: what a person sees on each page, and a signal sent from one.

Screenshots land in a temporary folder; `OKRA_CONSOLE_SCREENSHOTS=docs/images` writes the
ones docs/console.md shows.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from okra_client import OkraClient
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from tests.console.browser import CHROMIUM, Browser, chromium
from tests.console.support import EXAMPLES, console_sidecar
from tests.helpers import Stub, value, wait_for_status

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="needs Debian's chromium package (apt-get install chromium); CI installs it",
)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    configured = os.environ.get("OKRA_CONSOLE_SCREENSHOTS")
    return Path(configured) if configured else tmp_path


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as running:
        yield running


APPROVAL = "examples.approval.1.0.0"
ORDER = "examples.order.1.0.0"


async def run_example(stub: Stub, workflow_id: str, data: dict[str, Any]) -> str:
    reply = await stub.Run(pb.RunRequest(workflow_id=workflow_id, input=value(data)))
    return str(reply.instance_id)


async def test_a_person_follows_an_instance_and_signals_it(
    redis: Redis, redis_url: str, browser: Browser, shots: Path
) -> None:
    async with console_sidecar(redis_url, workflows=EXAMPLES) as (_, stub, base):
        small = await run_example(stub, APPROVAL, {"requester": "lin", "amount": 20})
        await wait_for_status(stub, small, {pb.WORKFLOW_STATUS_COMPLETED})
        instance_id = await run_example(stub, APPROVAL, {"requester": "ada", "amount": 250})
        await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})

        await browser.open(f"{base}/console/instances")
        row = f"document.querySelector('tr[data-instance=\"{instance_id}\"]')"
        assert await browser.evaluate(f"{row}.querySelector('.badge').textContent") == "waiting"
        assert await browser.evaluate("document.querySelectorAll('#rows tr').length") == 2
        await browser.wait_for("document.querySelector('.live.on') !== null")
        # A new instance appears without a reload: the page follows the stream.
        later = await run_example(stub, APPROVAL, {"requester": "kim", "amount": 180})
        await browser.wait_for(f"document.querySelector('tr[data-instance=\"{later}\"]') !== null")
        await browser.screenshot(shots / "console-instances.png")

        await browser.open(f"{base}/console/instances/{instance_id}")
        current = "document.querySelector('svg.diagram .node.current').dataset.task"
        assert await browser.evaluate(current) == "/do/2/awaitDecision"
        visited = "document.querySelector('svg.diagram .node.visited').dataset.task"
        assert await browser.evaluate(visited) == "/do/0/triage"
        timeline = "[...document.querySelectorAll('#timeline tr')].map(r => r.cells[1].textContent)"
        assert "workflow.started" in await browser.evaluate(timeline)
        await browser.screenshot(shots / "console-instance.png")

        await browser.submit(
            "form[action$='/signal']",
            {"signal": "approve", "payload": '{"by": "grace", "comment": "fine"}'},
        )
        assert "signal approve sent" in await browser.evaluate("document.body.innerText")
        finished = await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        assert finished.status == pb.WORKFLOW_STATUS_COMPLETED
        badge = "document.querySelector('#summary .badge').textContent"
        await browser.wait_for(f"{badge} == 'completed'")
        assert await browser.evaluate("document.querySelector('svg.diagram .node.current')") is None
        # Its output appears without a reload too.
        assert "grace" in await browser.evaluate("document.getElementById('data').innerText")
        await browser.screenshot(shots / "console-instance-completed.png")


async def test_workflows_and_schedules_pages(
    redis: Redis, redis_url: str, browser: Browser, shots: Path
) -> None:
    async with console_sidecar(redis_url, workflows=EXAMPLES) as (sidecar, _, base):
        await browser.open(f"{base}/console/workflows")
        links = "[...document.querySelectorAll('main a')].map(a => a.textContent)"
        assert {APPROVAL, ORDER} <= set(await browser.evaluate(links))
        await browser.screenshot(shots / "console-workflows.png")

        await browser.open(f"{base}/console/workflows/{ORDER}")
        nodes = "[...document.querySelectorAll('svg.diagram .node')].map(n => n.dataset.task)"
        assert "/do/1/route" in await browser.evaluate(nodes)
        labels = "[...document.querySelectorAll('svg.diagram .edge-label')].map(t => t.textContent)"
        assert {"digital", "physical"} <= set(await browser.evaluate(labels))
        await browser.screenshot(shots / "console-workflow.png")

        await browser.open(f"{base}/console/workflows/{APPROVAL}")
        # The browser refuses what the schema refuses, before the sidecar is asked.
        invalid = (
            "(() => { const f = document.querySelector('form[action$=\"/run\"]');"
            " f.elements['number:amount'].value = '-1'; return f.checkValidity(); })()"
        )
        assert await browser.evaluate(invalid) is False
        await browser.submit(
            "form[action$='/run']", {"string:requester": "ada", "number:amount": "12"}
        )
        assert await browser.evaluate("location.pathname.startsWith('/console/instances/')")

        async with OkraClient(f"127.0.0.1:{sidecar.port}") as client:
            schedule_id = await client.schedules.trigger(
                APPROVAL,
                {"requester": "ops", "amount": 5},
                "0 6 * * 1-5",
                time_zone="Europe/Berlin",
            )
        await browser.open(f"{base}/console/schedules")
        rows = "[...document.querySelectorAll('tbody tr')].map(r => r.cells[0].textContent)"
        assert await browser.evaluate(rows) == [schedule_id]
        await browser.screenshot(shots / "console-schedules.png")


async def test_a_person_suspends_and_resumes_an_instance(
    redis: Redis, redis_url: str, browser: Browser
) -> None:
    async with console_sidecar(redis_url, workflows=EXAMPLES) as (_, stub, base):
        instance_id = await run_example(stub, APPROVAL, {"requester": "ada", "amount": 250})
        await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        await browser.open(f"{base}/console/instances/{instance_id}")
        badge = "document.querySelector('#summary .badge').textContent"
        await browser.submit("form[action$='/suspend']", {"reason": "audit"})
        assert "suspended" in await browser.evaluate("document.body.innerText")
        await browser.wait_for(f"{badge} == 'suspended'")
        suspended = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
        assert suspended.status == pb.WORKFLOW_STATUS_SUSPENDED
        assert (
            await browser.evaluate("document.querySelector(\"form[action$='/suspend']\")") is None
        )
        await browser.submit("form[action$='/resume']", {"reason": "audit done"})
        await browser.wait_for(f"{badge} == 'waiting'")
        await browser.submit("form[action$='/cancel']", {"reason": "not needed"})
        await browser.wait_for(f"{badge} == 'cancelled'")
        await browser.submit("form[action$='/delete']", {})
        assert await browser.evaluate("location.pathname") == "/console/instances"
        assert f"deleted {instance_id}" in await browser.evaluate("document.body.innerText")


async def test_a_person_follows_bulk_operations_and_cancels_one(
    redis: Redis, redis_url: str, browser: Browser, shots: Path
) -> None:
    async with console_sidecar(redis_url, workflows=EXAMPLES) as (sidecar, stub, base):
        small = [
            await run_example(stub, APPROVAL, {"requester": "lin", "amount": 250}) for _ in range(2)
        ]
        for instance_id in small:
            await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        # Orders without a shipping address fail: thirty to delete, one a second, so the
        # operation still runs when the person gets to it, however slow the machine.
        item = {"sku": "desk", "quantity": 1, "priceCents": 100}
        slow = [
            await run_example(
                stub, ORDER, {"orderId": f"B-{n}", "kind": "physical", "items": [item]}
            )
            for n in range(30)
        ]
        for instance_id in slow:
            await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_FAILED})
        async with OkraClient(f"127.0.0.1:{sidecar.port}") as client:
            done = await client.operator.start_bulk(
                "signal", workflow_id=APPROVAL, signal="approve", payload={"by": "bulk"}
            )
            for instance_id in small:
                await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
            running = await client.operator.start_bulk(
                "delete", workflow_id=ORDER, reason="cleanup", max_per_second=1
            )
        assert running.matched == len(slow)
        await browser.open(f"{base}/console/bulks")
        row = "document.querySelector('#bulk-{}')"
        state = f"{row}.querySelector('.badge').textContent"
        progress = f"{row}.querySelector('.progress').textContent"
        await browser.wait_for(f"{state.format(done.operation_id)} == 'completed'")
        assert await browser.evaluate(progress.format(done.operation_id)) == "2 of 2"
        assert await browser.evaluate(state.format(running.operation_id)) == "running"
        # Its progress moves on without a reload.
        shown = await browser.evaluate(progress.format(running.operation_id))
        await browser.wait_for(f"{progress.format(running.operation_id)} != {shown!r}")
        await browser.screenshot(shots / "console-bulks.png")
        await browser.submit(f"form[action$='/bulks/{running.operation_id}/cancel']", {})
        assert f"cancelled {running.operation_id}" in await browser.evaluate(
            "document.body.innerText"
        )
        assert await browser.evaluate(state.format(running.operation_id)) == "cancelled"
        # No cancel button once it has stopped, and fewer than all were deleted.
        assert (
            await browser.evaluate(f"{row.format(running.operation_id)}.querySelector('form')")
            is None
        )
        left = await stub.Query(pb.QueryRequest(workflow_id=ORDER))
        assert 0 < len(left.instances) <= len(slow)


async def test_the_console_still_loads_after_many_actions_on_a_live_page(
    redis: Redis, redis_url: str, browser: Browser
) -> None:
    # Each action leaves a live page behind; kept in the back-forward cache with its event
    # stream open, six of them took every connection Chromium allows to one host.
    async with console_sidecar(redis_url, workflows=EXAMPLES) as (_, stub, base):
        instance_id = await run_example(stub, APPROVAL, {"requester": "ada", "amount": 250})
        await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        await browser.open(f"{base}/console/instances/{instance_id}")
        badge = "document.querySelector('#summary .badge').textContent"
        async with asyncio.timeout(20):
            for _ in range(4):
                await browser.submit("form[action$='/suspend']", {"reason": "audit"})
                await browser.wait_for(f"{badge} == 'suspended'")
                await browser.submit("form[action$='/resume']", {"reason": "audit done"})
                await browser.wait_for(f"{badge} == 'waiting'")


async def test_long_text_wraps_instead_of_widening_the_page(
    redis: Redis, redis_url: str, browser: Browser
) -> None:
    async with console_sidecar(redis_url, workflows=EXAMPLES) as (_, stub, base):
        instance_id = await run_example(stub, APPROVAL, {"requester": "ada", "amount": 250})
        await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        reason = "<script>alert('x')</script>" + "c" * 990
        await stub.Cancel(pb.CancelRequest(instance_id=instance_id, reason=reason))
        await browser.open(f"{base}/console/instances/{instance_id}")
        assert reason in await browser.evaluate("document.getElementById('summary').innerText")
        assert await browser.evaluate("document.querySelectorAll('script').length") == 1
        width = "document.documentElement.scrollWidth <= window.innerWidth"
        assert await browser.evaluate(width), "the page scrolls sideways"


async def test_the_buttons_follow_a_change_made_elsewhere(
    redis: Redis, redis_url: str, browser: Browser
) -> None:
    async with console_sidecar(redis_url, workflows=EXAMPLES) as (sidecar, stub, base):
        instance_id = await run_example(stub, APPROVAL, {"requester": "ada", "amount": 250})
        await wait_for_status(stub, instance_id, {pb.WORKFLOW_STATUS_WAITING})
        await browser.open(f"{base}/console/instances/{instance_id}")
        await browser.wait_for("document.querySelector('.live.on') !== null")
        async with OkraClient(f"127.0.0.1:{sidecar.port}") as client:
            await client.operator.suspend(instance_id, "from the command line")
        await browser.wait_for("document.querySelector(\"form[action$='/resume']\") !== null")
        assert (
            await browser.evaluate("document.querySelector(\"form[action$='/suspend']\")") is None
        )
        await browser.submit("form[action$='/resume']", {"reason": "back"})
        assert "resumed" in await browser.evaluate("document.body.innerText")
