"""The console's HTTP side: aiohttp routes under /console, server-sent events for live pages.

Every read and write goes through the sidecar's gRPC API as the signed-in user
(`ConsoleGateway`), so what a page shows and what its buttons do is what that user's token and
the policies allow. The token is kept in a session cookie (HttpOnly, SameSite=Strict), and a
form posted from another origin is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlparse

import grpc
from aiohttp import web
from okra_client import HistoryEvent, OkraClient, WorkflowInstance, WorkflowStatus
from okra_client.errors import OkraRpcError
from okra_client.operator import BULK_ACTIONS

from okra_sidecar.console import pages
from okra_sidecar.console.diagram import render_svg
from okra_sidecar.console.forms import FormError, input_form, input_from_form
from okra_sidecar.console.gateway import ConsoleGateway
from okra_sidecar.console.graph import task_graph
from okra_sidecar.console.html import esc, page
from okra_sidecar.errors import NotFoundError
from okra_sidecar.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

__all__ = ["TOKEN_COOKIE", "console_routes"]

TOKEN_COOKIE = "okra_console_token"
PAGE_SIZE = 50
STATUSES = tuple(s.value for s in WorkflowStatus)
LIST_REFRESH_S = 1.0
# A stream ends after this long; the browser's EventSource reconnects by itself.
STREAM_MAX_S = 600.0
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _token(request: web.Request) -> str | None:
    return request.cookies.get(TOKEN_COOKIE) or None


def _client(request: web.Request) -> OkraClient:
    gateway: ConsoleGateway = request.app[GATEWAY]
    return gateway.client(_token(request))


def _html(
    request: web.Request, title: str, body: str, section: str, status: int = 200
) -> web.Response:
    notice = ""
    if request.query.get("notice"):
        notice = f'<div class="notice good">{esc(request.query["notice"])}</div>'
    if request.query.get("error"):
        notice += f'<div class="notice bad">{esc(request.query["error"])}</div>'
    text = page(
        title=title,
        body=body,
        section=section,
        signed_in=_token(request) is not None,
        notice=notice,
    )
    return web.Response(text=text, content_type="text/html", status=status)


def _back(path: str, **message: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"{path}?{urlencode(message)}" if message else path)


def _instance_page(instance_id: str) -> str:
    # Quoted: an id from the request's path goes back into a Location header.
    return "/console/instances/" + quote(instance_id, safe="")


def rpc_errors(section: str) -> Callable[[Handler], Handler]:
    """A refused call becomes a page that says why (or the sign-in page, if unauthenticated)."""

    def wrap(handler: Handler) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except OkraRpcError as error:
                if error.code == grpc.StatusCode.UNAUTHENTICATED:
                    raise _back("/console/login", error=error.message) from None
                status = HTTP_STATUS.get(error.code, 500)
                body = (
                    f"<h1>{esc(error.code.name.replace('_', ' ').lower())}</h1>"
                    f'<div class="notice bad">{esc(error.message)}</div>'
                )
                return _html(request, "error", body, section, status)

        return handle

    return wrap


@contextlib.contextmanager
def back_on_refusal(path: str, **kept: str) -> Iterator[None]:
    """A refused action goes back to `path` (with `kept` in its query) saying why; no token at
    all goes to sign-in."""
    try:
        yield
    except OkraRpcError as error:
        if error.code == grpc.StatusCode.UNAUTHENTICATED:
            raise
        # The sidecar's message usually says the same already: add only what it leaves out.
        details = "; ".join(
            said
            for said in (f"{v.field}: {v.description}" for v in error.field_violations)
            if said not in error.message
        )
        message = f"{error.message}{' — ' + details if details else ''}"
        raise _back(path, error=message, **kept) from None


def _same_origin(request: web.Request) -> None:
    """Refuse a form posted from another site (the cookie is SameSite=Strict as well)."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if origin and urlparse(origin).netloc != request.host:
        raise web.HTTPForbidden(text="a console form may only be posted from the console")


# -- filters --------------------------------------------------------------------------------


def _time(value: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise FormError(f"{value!r} is not a time such as 2026-12-06T10:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _query_args(filters: Mapping[str, str]) -> dict[str, Any]:
    tags = {}
    if filters.get("tag"):
        key, sep, value = filters["tag"].partition("=")
        if not sep or not key:
            raise FormError(f"tag {filters['tag']!r} is not key=value")
        tags[key] = value
    status = filters.get("status") or ""
    if status and status not in STATUSES:
        raise FormError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    return {
        "workflow_id": filters.get("workflow") or None,
        "status": [status] if status else [],
        "tags": tags,
        "correlation_id": filters.get("correlation") or None,
        "started_after": _time(filters.get("after", "")),
        "started_before": _time(filters.get("before", "")),
    }


async def _count(client: OkraClient, args: dict[str, Any]) -> str:
    return f"{await client.count(**args):,}"


# -- pages ----------------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/console/instances")


@rpc_errors("instances")
async def instances(request: web.Request) -> web.StreamResponse:
    client = _client(request)
    filters = dict(request.query)
    workflows = await client.list_workflows()
    try:
        args = _query_args(filters)
    except FormError as error:
        raise _back("/console/instances", error=str(error)) from None
    found = await client.query(**args, limit=PAGE_SIZE, cursor=filters.get("cursor") or None)
    body = pages.instances_page(
        filters=filters,
        instances=found.instances,
        cursor=found.cursor,
        count=await _count(client, args),
        workflows=workflows,
    )
    return _html(request, "Instances", body, "instances")


async def _sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, update: Mapping[str, str]) -> None:
    await response.write(f"data: {json.dumps(update)}\n\n".encode())


async def _closing(request: web.Request, seconds: float) -> bool:
    """Wait `seconds`, or less if the admin port is shutting down (then True)."""
    closing = request.app[CLOSING]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closing.wait(), seconds)
    return closing.is_set()


async def instances_stream(request: web.Request) -> web.StreamResponse:
    """The first page of the list, sent again whenever it changes."""
    client = _client(request)
    try:
        args = _query_args(dict(request.query))
    except FormError as error:
        raise web.HTTPBadRequest(text=str(error)) from None
    response = await _sse(request)
    last = None
    with contextlib.suppress(ConnectionError, OkraRpcError, TimeoutError):
        async with asyncio.timeout(STREAM_MAX_S):
            while True:
                found = await client.query(**args, limit=PAGE_SIZE)
                rows = pages.instance_rows(found.instances)
                if rows != last:
                    last = rows
                    await _send(response, {"rows": rows, "count": await _count(client, args)})
                if await _closing(request, LIST_REFRESH_S):
                    break
    return response


async def _diagram(
    request: web.Request, instance: WorkflowInstance, events: list[HistoryEvent]
) -> str:
    gateway: ConsoleGateway = request.app[GATEWAY]
    try:
        registered = await gateway.registry.get(instance.workflow_id)
    except NotFoundError:
        return "<p class=muted>The definition of this version is no longer registered.</p>"
    visited = {e.task for e in events if e.task}
    return render_svg(
        task_graph(registered.definition.document),
        visited=visited,
        current=instance.current_step,
    )


async def _history(client: OkraClient, instance_id: str) -> list[HistoryEvent]:
    return [event async for event in client.history(instance_id, page_size=1000)]


@rpc_errors("instances")
async def instance(request: web.Request) -> web.StreamResponse:
    client = _client(request)
    instance_id = request.match_info["instance_id"]
    found = await client.get_status(instance_id)
    events = await _history(client, instance_id)
    body = pages.instance_page(
        instance=found, events=events, diagram=await _diagram(request, found, events)
    )
    return _html(request, f"Instance {instance_id}", body, "instances")


async def instance_stream(request: web.Request) -> web.StreamResponse:
    """The instance's summary, diagram and timeline, sent again whenever it changes.

    The changes come from WatchInstance, as the sidecar commits them: nothing polls. Once the
    instance has finished the stream stays open (so the browser does not reconnect) and reads
    nothing, until the admin port closes or STREAM_MAX_S pass.
    """
    client = _client(request)
    instance_id = request.match_info["instance_id"]
    # The revision and status the page shows; without them, the first message is taken as shown.
    revision = request.query.get("revision", "")
    shown: int | None = int(revision) if revision.isdigit() else None
    status = request.query.get("status")
    response = await _sse(request)

    async def forward() -> None:
        nonlocal shown, status
        async for found in client.watch(instance_id, timeout_s=STREAM_MAX_S):
            if shown is not None and found.revision != shown:
                events = await _history(client, instance_id)
                update = {
                    "summary": pages.instance_summary(found),
                    "diagram": await _diagram(request, found, events),
                    "timeline": pages.timeline_rows(events),
                    "data": pages.instance_data(found),
                }
                # Only on a new status: a person may be typing a reason into these forms.
                if found.status.value != status:
                    update["actions"] = pages.instance_actions(found, events)
                await _send(response, update)
            shown, status = found.revision, found.status.value

    forwarding = asyncio.ensure_future(forward())
    closing = asyncio.ensure_future(_closing(request, STREAM_MAX_S))
    try:
        await asyncio.wait({forwarding, closing}, return_when=asyncio.FIRST_COMPLETED)
        if forwarding.done() and not closing.done():
            failed = forwarding.exception()
            if failed is None:
                await closing  # finished: nothing more will change
            elif not isinstance(failed, ConnectionError | OkraRpcError | TimeoutError):
                raise failed
    finally:
        await cancel_and_wait([forwarding, closing])
    return response


@rpc_errors("instances")
async def signal(request: web.Request) -> web.StreamResponse:
    _same_origin(request)
    instance_id = request.match_info["instance_id"]
    form = await request.post()
    path = _instance_page(instance_id)
    try:
        payload = json.loads(str(form.get("payload") or "null"))
    except json.JSONDecodeError as exc:
        raise _back(path, error=f"payload: not JSON ({exc.msg})") from None
    name = str(form.get("signal") or "")
    with back_on_refusal(path):
        await _client(request).signal(instance_id, name, payload)
    raise _back(path, notice=f"signal {name} sent")


@rpc_errors("instances")
async def cancel(request: web.Request) -> web.StreamResponse:
    _same_origin(request)
    instance_id = request.match_info["instance_id"]
    form = await request.post()
    path = _instance_page(instance_id)
    with back_on_refusal(path):
        await _client(request).cancel(instance_id, str(form.get("reason") or "") or None)
    raise _back(path, notice="cancelled")


@rpc_errors("instances")
async def operate(request: web.Request) -> web.StreamResponse:
    """Suspend, resume, retry, reset or delete one instance, as the signed-in user."""
    _same_origin(request)
    instance_id = request.match_info["instance_id"]
    action = request.match_info["action"]
    form = await request.post()
    reason = str(form.get("reason") or "")
    path = _instance_page(instance_id)
    operator = _client(request).operator
    with back_on_refusal(path):
        if action == "suspend":
            await operator.suspend(instance_id, reason)
        elif action == "resume":
            await operator.resume(instance_id, reason)
        elif action == "retry":
            task = await operator.retry(instance_id, reason)
            raise _back(path, notice=f"runs again from {task}")
        elif action == "reset":
            task = str(form.get("task") or "")
            await operator.reset(instance_id, task, reason)
            raise _back(path, notice=f"reset: runs again from {task}")
        else:
            await operator.delete(instance_id)
            raise _back("/console/instances", notice=f"deleted {instance_id}")
    raise _back(path, notice="suspended" if action == "suspend" else "resumed")


@rpc_errors("workflows")
async def workflows(request: web.Request) -> web.StreamResponse:
    infos = await _client(request).list_workflows()
    return _html(request, "Workflows", pages.workflows_page(infos), "workflows")


@rpc_errors("workflows")
async def workflow(request: web.Request) -> web.StreamResponse:
    workflow_id = request.match_info["workflow_id"]
    # Only what this caller may see: ListWorkflows applies the policies.
    infos = await _client(request).list_workflows()
    info = next((i for i in infos if i.workflow_id == workflow_id), None)
    gateway: ConsoleGateway = request.app[GATEWAY]
    if info is None:
        body = (
            f'<h1>Not found</h1><div class="notice bad">No workflow {esc(workflow_id)} is '
            "registered that you may see.</div>"
        )
        return _html(request, "not found", body, "workflows", 404)
    definition = (await gateway.registry.get(workflow_id)).definition
    body = pages.workflow_page(
        info=info,
        document=definition.document,
        diagram=render_svg(task_graph(definition.document)),
        form=input_form(definition.input_schema),
    )
    return _html(request, workflow_id, body, "workflows")


@rpc_errors("workflows")
async def run(request: web.Request) -> web.StreamResponse:
    _same_origin(request)
    workflow_id = request.match_info["workflow_id"]
    path = "/console/workflows/" + quote(workflow_id, safe="")
    form = await request.post()
    try:
        data = input_from_form({k: str(v) for k, v in form.items()})
    except FormError as error:
        raise _back(path, error=str(error)) from None
    with back_on_refusal(path):
        instance_id = await _client(request).run(workflow_id, data)
    raise _back(_instance_page(instance_id), notice="started")


@rpc_errors("schedules")
async def schedules(request: web.Request) -> web.StreamResponse:
    found = [s async for s in _client(request).schedules.list(next_fire_count=1)]
    return _html(request, "Schedules", pages.schedules_page(found), "schedules")


@rpc_errors("schedules")
async def schedule_action(request: web.Request) -> web.StreamResponse:
    _same_origin(request)
    schedule_id = request.match_info["schedule_id"]
    action = request.match_info["action"]
    client = _client(request).schedules
    with back_on_refusal("/console/schedules"):
        if action == "pause":
            await client.pause(schedule_id)
        else:
            await client.resume(schedule_id)
    raise _back("/console/schedules", notice=f"{action}d {schedule_id}")


@rpc_errors("bulks")
async def bulks(request: web.Request) -> web.StreamResponse:
    found = await _client(request).operator.list_bulk()
    body = pages.bulks_page(found, dict(request.query))
    return _html(request, "Bulk operations", body, "bulks")


@rpc_errors("bulks")
async def start_bulk(request: web.Request) -> web.StreamResponse:
    """Start a bulk operation from the form, or dry-run it; the form comes back filled in."""
    _same_origin(request)
    posted = await request.post()
    dry_run = "dry_run" in posted
    form = {k: str(v) for k, v in posted.items() if k != "dry_run"}
    kept = {k: v for k, v in form.items() if v}
    if form.get("action") not in BULK_ACTIONS:
        raise _back("/console/bulks", error=f"action: use one of {', '.join(BULK_ACTIONS)}")
    try:
        args = _query_args(form)
        payload = json.loads(form.get("payload") or "null")
        per_second = int(form.get("max_per_second") or 0)
    except FormError as error:
        raise _back("/console/bulks", error=str(error), **kept) from None
    except json.JSONDecodeError as exc:
        raise _back("/console/bulks", error=f"payload: not JSON ({exc.msg})", **kept) from None
    except ValueError:
        raise _back("/console/bulks", error="per second: not a whole number", **kept) from None
    with back_on_refusal("/console/bulks", **kept):
        started = await _client(request).operator.start_bulk(
            form["action"],
            **args,
            reason=form.get("reason", ""),
            signal=form.get("signal", ""),
            payload=payload,
            dry_run=dry_run,
            max_per_second=per_second,
        )
    if not dry_run:
        notice = f"started {started.operation_id} on {started.matched} instance(s)"
        raise _back("/console/bulks", notice=notice)
    limit = f" (a real run may act on {started.max_instances})" if started.over_limit else ""
    sample = ", ".join(started.sample_instance_ids)
    notice = f"dry run: {started.matched} instance(s) match{limit}; nothing was changed. {sample}"
    raise _back("/console/bulks", notice=notice, **kept)


async def bulks_stream(request: web.Request) -> web.StreamResponse:
    """The bulk operations' rows, sent again whenever their progress changes."""
    operator = _client(request).operator
    response = await _sse(request)
    last = None
    with contextlib.suppress(ConnectionError, OkraRpcError, TimeoutError):
        async with asyncio.timeout(STREAM_MAX_S):
            while True:
                rows = pages.bulk_rows(await operator.list_bulk())
                if rows != last:
                    last = rows
                    await _send(response, {"bulks": rows})
                if await _closing(request, LIST_REFRESH_S):
                    break
    return response


@rpc_errors("bulks")
async def cancel_bulk(request: web.Request) -> web.StreamResponse:
    _same_origin(request)
    operation_id = request.match_info["operation_id"]
    with back_on_refusal("/console/bulks"):
        await _client(request).operator.cancel_bulk(operation_id)
    raise _back("/console/bulks", notice=f"cancelled {operation_id}")


async def login_form(request: web.Request) -> web.StreamResponse:
    # The frame shows the error of the query string already.
    return _html(request, "Sign in", pages.login_page(), "")


async def login(request: web.Request) -> web.StreamResponse:
    _same_origin(request)
    form = await request.post()
    token = str(form.get("token") or "").strip()
    response = web.HTTPSeeOther("/console/instances")
    # A session cookie: gone when the browser closes; scripts cannot read it.
    response.set_cookie(TOKEN_COOKIE, token, path="/console", httponly=True, samesite="Strict")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/console/login")
    response.del_cookie(TOKEN_COOKIE, path="/console")
    raise response


GATEWAY = web.AppKey("gateway", ConsoleGateway)
# Set when the admin port shuts down, so open event streams end at once.
CLOSING = web.AppKey("closing", asyncio.Event)


async def _end_streams(app: web.Application) -> None:
    app[CLOSING].set()


def console_routes(app: web.Application, gateway: ConsoleGateway) -> None:
    """Add the console's routes to `app` (the admin port's application)."""
    app[GATEWAY] = gateway
    app[CLOSING] = asyncio.Event()
    app.on_shutdown.append(_end_streams)
    app.router.add_routes(
        [
            web.get("/console", index),
            web.get("/console/", index),
            web.get("/console/login", login_form),
            web.post("/console/login", login),
            web.get("/console/logout", logout),
            web.get("/console/instances", instances),
            web.get("/console/instances/stream", instances_stream),
            web.get("/console/instances/{instance_id}", instance),
            web.get("/console/instances/{instance_id}/stream", instance_stream),
            web.post("/console/instances/{instance_id}/signal", signal),
            web.post("/console/instances/{instance_id}/cancel", cancel),
            web.post(
                "/console/instances/{instance_id}/{action:suspend|resume|retry|reset|delete}",
                operate,
            ),
            web.get("/console/workflows", workflows),
            web.get("/console/workflows/{workflow_id}", workflow),
            web.post("/console/workflows/{workflow_id}/run", run),
            web.get("/console/schedules", schedules),
            web.post("/console/schedules/{schedule_id}/{action:pause|resume}", schedule_action),
            web.get("/console/bulks", bulks),
            web.get("/console/bulks/stream", bulks_stream),
            web.post("/console/bulks/start", start_bulk),
            web.post("/console/bulks/{operation_id}/cancel", cancel_bulk),
        ]
    )
