"""The console's pages as HTML: instances, one instance, workflows, one workflow, schedules."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import yaml
from okra_client import HistoryEvent, WorkflowInfo, WorkflowInstance, WorkflowStatus
from okra_client.operator import BULK_ACTIONS, BulkOperation
from okra_client.schedules import Schedule

from okra_sidecar.api.request_checks import MAX_REASON
from okra_sidecar.console.html import badge, esc, pretty_json, when

# The Host API refuses a longer reason; the browser stops the typing there.
REASON_FIELD = f"<label>reason<input name=reason maxlength={MAX_REASON}></label>"

__all__ = [
    "InstanceFilters",
    "bulk_rows",
    "bulks_page",
    "instance_actions",
    "instance_data",
    "instance_page",
    "instance_rows",
    "instance_summary",
    "instances_page",
    "login_page",
    "schedules_page",
    "timeline_rows",
    "workflow_page",
    "workflows_page",
]

InstanceFilters = Mapping[str, str]
# A top-level task's pointer (a task of the workflow's root list): what Reset goes back to.
TOP_LEVEL_TASK_RE = re.compile(r"/do/\d+/[^/]+")
FILTER_FIELDS = ("workflow", "status", "tag", "correlation", "after", "before")


def instance_rows(instances: Sequence[WorkflowInstance]) -> str:
    if not instances:
        return "<tr><td colspan=9 class=muted>no matching instances</td></tr>"
    rows = []
    for i in instances:
        tags = ", ".join(f"{esc(k)}={esc(v)}" for k, v in sorted(i.tags.items()))
        rows.append(
            f'<tr data-instance="{esc(i.instance_id)}">'
            f'<td class=mono><a href="/console/instances/{esc(i.instance_id)}">'
            f"{esc(i.instance_id)}</a></td>"
            f"<td>{badge(i.status.value)}</td><td>{esc(i.workflow_id)}</td>"
            f"<td>{esc(i.version)}</td><td>{when(i.start_time)}</td><td>{when(i.end_time)}</td>"
            f"<td class=mono>{esc(i.current_step)}</td><td>{tags}</td>"
            f"<td>{esc(i.correlation_id)}</td></tr>"
        )
    return "".join(rows)


def _filter_form(filters: InstanceFilters, workflows: Sequence[WorkflowInfo]) -> str:
    ids = sorted({w.workflow_id for w in workflows})
    workflow_options = '<option value="">any</option>' + "".join(
        f"<option{' selected' if filters.get('workflow') == w else ''}>{esc(w)}</option>"
        for w in ids
    )
    status_options = '<option value="">any</option>' + "".join(
        f"<option{' selected' if filters.get('status') == s.value else ''}>{s.value}</option>"
        for s in WorkflowStatus
    )
    return (
        '<form class=filters method=get action="/console/instances">'
        f"<label>workflow<select name=workflow>{workflow_options}</select></label>"
        f"<label>status<select name=status>{status_options}</select></label>"
        f'<label>tag<input name=tag placeholder="key=value" value="{esc(filters.get("tag"))}">'
        "</label>"
        f'<label>correlation id<input name=correlation value="{esc(filters.get("correlation"))}">'
        "</label>"
        f"<label>started after<input type=datetime-local name=after step=1 "
        f'value="{esc(filters.get("after"))}"></label>'
        f"<label>started before<input type=datetime-local name=before step=1 "
        f'value="{esc(filters.get("before"))}"></label>'
        "<button type=submit>Filter</button>"
        '<a href="/console/instances">clear</a></form>'
    )


def instances_page(
    *,
    filters: InstanceFilters,
    instances: Sequence[WorkflowInstance],
    cursor: str | None,
    count: str,
    workflows: Sequence[WorkflowInfo],
) -> str:
    query = {k: v for k, v in filters.items() if k in FILTER_FIELDS and v}
    stream = "/console/instances/stream?" + urlencode(query)
    more = ""
    if cursor:
        more = (
            f'<p><a href="/console/instances?{esc(urlencode({**query, "cursor": cursor}))}">'
            "next page →</a></p>"
        )
    live = (
        "<span class=live>live</span>"
        if not filters.get("cursor")
        else "<span class=muted>a later page: not live</span>"
    )
    streaming = "" if filters.get("cursor") else f' data-stream="{esc(stream)}"'
    return (
        f"<h1>Instances <span class=muted id=count>{esc(count)}</span></h1>"
        f"{_filter_form(filters, workflows)}"
        f'<div class="card scroll"{streaming}>'
        f"{live}<table><thead><tr><th>instance</th><th>status</th><th>workflow</th>"
        "<th>version</th><th>started</th><th>ended</th><th>current step</th><th>tags</th>"
        f"<th>correlation id</th></tr></thead><tbody id=rows>{instance_rows(instances)}</tbody>"
        f"</table></div>{more}"
    )


def instance_summary(instance: WorkflowInstance) -> str:
    error = ""
    if instance.error is not None:
        e = instance.error
        error = (
            '<div class="notice bad"><strong>'
            f"{esc(e.title or 'failed')}</strong> (status {esc(e.status)})<br>{esc(e.detail)}"
            f'<br><span class="mono muted">{esc(e.type)} at {esc(e.instance)}</span></div>'
        )
    tags = ", ".join(f"{esc(k)}={esc(v)}" for k, v in sorted(instance.tags.items()))
    rows = [
        ("status", badge(instance.status.value)),
        (
            "workflow",
            f'<a href="/console/workflows/{esc(instance.workflow_id)}">'
            f"{esc(instance.workflow_id)}</a>",
        ),
        ("current step", f"<span class=mono>{esc(instance.current_step)}</span>"),
        ("started", when(instance.start_time)),
        ("ended", when(instance.end_time)),
        ("updated", when(instance.updated_at)),
        ("correlation id", esc(instance.correlation_id)),
        ("tags", tags),
        ("cancel reason", esc(instance.cancel_reason)),
    ]
    listed = "".join(
        f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows if v and v != "<span class=mono></span>"
    )
    return f"{error}<dl>{listed}</dl>"


def timeline_rows(events: Sequence[HistoryEvent]) -> str:
    """A row per history event; a task's completion says how long the task took."""
    started: dict[str, datetime] = {}
    rows = []
    for event in events:
        took = ""
        if event.task and event.time:
            if event.type == "task.started":
                started[event.task] = event.time
            elif event.task in started and event.type.startswith("task."):
                took = f"{(event.time - started.pop(event.task)).total_seconds():.3f} s"
        details = json.dumps(event.details, ensure_ascii=False) if event.details else ""
        rows.append(
            f'<tr><td>{when(event.time)}</td><td><span class="mono">{esc(event.type)}</span></td>'
            f"<td class=mono>{esc(event.task)}</td><td>{took}</td>"
            f'<td class="wrap mono">{esc(details)}</td></tr>'
        )
    return "".join(rows) or "<tr><td colspan=5 class=muted>no history</td></tr>"


def _action_form(base: str, action: str, label: str, confirm: str, *, reason: bool) -> str:
    """One operator button (a POST form), with a reason field when the action records one."""
    field = REASON_FIELD if reason else ""
    style = " class=danger" if action in ("cancel", "delete") else ""
    return (
        f'<form method=post action="{base}/{action}" data-confirm="{confirm}">'
        f"{field}<button type=submit{style}>{label}</button></form>"
    )


def _reset_form(base: str, events: Sequence[HistoryEvent]) -> str:
    """Reset to one of the top-level tasks the instance started (its history shows them)."""
    started = dict.fromkeys(
        e.task
        for e in events
        if e.type == "task.started" and TOP_LEVEL_TASK_RE.fullmatch(e.task or "")
    )
    if not started:
        return ""
    options = "".join(f"<option>{esc(task)}</option>" for task in started)
    return (
        f'<form method=post action="{base}/reset" data-confirm="Go back to this task? What '
        'ran since is not undone.">'
        f"<label>task<select name=task required>{options}</select></label>"
        f"{REASON_FIELD}<button type=submit>Reset to task</button></form>"
    )


def instance_actions(instance: WorkflowInstance, events: Sequence[HistoryEvent] = ()) -> str:
    """The buttons the instance's status allows; the live view sends them again when it changes."""
    base = f"/console/instances/{esc(instance.instance_id)}"
    forms: list[str] = []
    if instance.finished or instance.status is WorkflowStatus.WAITING:
        forms.append(_reset_form(base, events))
    if not instance.finished:
        forms.append(
            f'<form method=post action="{base}/signal" data-confirm="Send this signal?">'
            '<label>signal<input name=signal required placeholder="approve" '
            'pattern="[A-Za-z0-9_-]+"></label><label>payload (JSON)<textarea name=payload>{}'
            "</textarea></label><button type=submit>Send signal</button></form>"
        )
        if instance.status is WorkflowStatus.SUSPENDED:
            forms.append(
                _action_form(base, "resume", "Resume", "Resume this instance?", reason=True)
            )
        else:
            forms.append(
                _action_form(base, "suspend", "Suspend", "Suspend this instance?", reason=True)
            )
        forms.append(
            _action_form(base, "cancel", "Cancel instance", "Cancel this instance?", reason=True)
        )
    else:
        if instance.status is WorkflowStatus.FAILED:
            forms.append(
                _action_form(
                    base, "retry", "Retry from the failed task", "Run it again?", reason=True
                )
            )
        forms.append(
            _action_form(
                base,
                "delete",
                "Delete instance",
                "Delete this instance and its history?",
                reason=False,
            )
        )
    return "<div class=actions>" + "".join(forms) + "</div>"


def instance_data(instance: WorkflowInstance) -> str:
    """Its input, and its output and variables once it has them."""
    return "".join(
        f"<h2>{name}</h2>{pretty_json(value)}"
        for name, value in (
            ("Input", instance.input),
            ("Output", instance.output),
            ("Variables ($context)", instance.variables),
        )
        if value not in (None, {}) or name == "Input"
    )


def instance_page(
    *, instance: WorkflowInstance, events: Sequence[HistoryEvent], diagram: str
) -> str:
    # What the page shows, so that the live view sends any change made before it connected.
    shown = urlencode({"revision": instance.revision, "status": instance.status.value})
    stream = f"/console/instances/{esc(instance.instance_id)}/stream?{esc(shown)}"
    return (
        f"<h1>Instance <span class=mono>{esc(instance.instance_id)}</span></h1>"
        f'<div data-stream="{stream}"><span class=live>live</span></div>'
        f"<div class=grid><div class=card id=summary>{instance_summary(instance)}</div>"
        f'<div class=card><h2 style="margin-top:0">Actions</h2>'
        f"<div id=actions>{instance_actions(instance, events)}</div></div></div>"
        f'<div class="card scroll"><h2 style="margin-top:0">Diagram</h2>'
        f"<div id=diagram>{diagram}</div></div>"
        '<div class="card scroll"><h2 style="margin-top:0">Timeline</h2>'
        "<table><thead><tr><th>time</th><th>event</th><th>task</th><th>took</th>"
        f"<th>details</th></tr></thead><tbody id=timeline>{timeline_rows(events)}</tbody>"
        f"</table></div><div class=card id=data>{instance_data(instance)}</div>"
    )


def workflows_page(infos: Sequence[WorkflowInfo]) -> str:
    rows = (
        "".join(
            f'<tr><td><a href="/console/workflows/{esc(i.workflow_id)}">'
            f"{esc(i.workflow_id)}</a></td>"
            f"<td>{esc(i.version)}</td><td>{esc(', '.join(i.triggers))}</td><td>{esc(i.title)}</td>"
            f"<td class=wrap>{esc(i.summary)}</td></tr>"
            for i in infos
        )
        or "<tr><td colspan=5 class=muted>no workflows registered</td></tr>"
    )
    return (
        "<h1>Workflows</h1><div class='card scroll'><table><thead><tr><th>workflow</th>"
        "<th>version</th><th>triggers</th><th>title</th><th>summary</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
    )


def workflow_page(
    *, info: WorkflowInfo, document: Mapping[str, Any], diagram: str, form: str
) -> str:
    run = (
        f'<form method=post action="/console/workflows/{esc(info.workflow_id)}/run" '
        f'data-confirm="Run {esc(info.workflow_id)}?" class=actions><div class=actions>{form}</div>'
        "<div><button type=submit>Run</button></div></form>"
        if "manual" in info.triggers
        else "<p class=muted>This workflow is not started by hand on this sidecar "
        f"(its triggers: {esc(', '.join(info.triggers))}).</p>"
    )
    title = f"{esc(info.title)} <span class=muted>{esc(info.workflow_id)}</span>"
    return (
        f"<h1>{title if info.title else esc(info.workflow_id)}</h1><p>{esc(info.summary)}</p>"
        f'<div class=card><h2 style="margin-top:0">Run</h2>{run}</div>'
        f'<div class="card scroll"><h2 style="margin-top:0">Diagram</h2>{diagram}</div>'
        '<div class=card><h2 style="margin-top:0">Definition</h2>'
        f"<pre>{esc(yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True))}</pre>"
        "</div>"
    )


def schedules_page(schedules: Sequence[Schedule]) -> str:
    rows = []
    for s in schedules:
        action = "resume" if s.paused else "pause"
        what = (
            f"cron {s.cron_expression}" + (f" ({s.time_zone})" if s.time_zone else "")
            if s.cron_expression
            else f"every {s.every}"
            if s.every
            else f"after {s.after}"
            if s.after
            else ""
        )
        nxt = when(s.next_fire_times[0]) if s.next_fire_times else ""
        rows.append(
            f"<tr><td class=mono>{esc(s.schedule_id)}</td><td>{esc(s.workflow_id)}</td>"
            f"<td>{esc(what)}</td><td>{'paused' if s.paused else 'active'}</td><td>{nxt}</td>"
            f"<td>{when(s.last_fire_time)}</td><td>{s.fired_count}</td>"
            f"<td class=wrap>{esc(s.last_error)}</td>"
            f'<td><form method=post action="/console/schedules/{esc(s.schedule_id)}/{action}" '
            f'data-confirm="{action.title()} this schedule?">'
            f"<button class=secondary type=submit>{action}</button></form></td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan=9 class=muted>no schedules</td></tr>"
    return (
        "<h1>Schedules</h1><div class='card scroll'><table><thead><tr><th>schedule</th>"
        "<th>workflow</th><th>when</th><th>state</th><th>next fire</th><th>last fire</th>"
        f"<th>fired</th><th>last error</th><th></th></tr></thead><tbody>{body}</tbody></table>"
        "</div>"
    )


def bulk_rows(operations: Sequence[BulkOperation]) -> str:
    """A row per bulk operation with its progress, and a cancel button while it runs."""
    rows = []
    for op in operations:
        handled = op.done + op.skipped + op.failed
        reasons = ", ".join(f"{why}: {count}" for why, count in sorted(op.reasons.items()))
        cancel = ""
        if op.state == "running":
            cancel = (
                f'<form method=post action="/console/bulks/{esc(op.operation_id)}/cancel" '
                'data-confirm="Stop this bulk operation? What it did stays done.">'
                "<button class=danger type=submit>cancel</button></form>"
            )
        rows.append(
            f"<tr id=bulk-{esc(op.operation_id)}><td class=mono>{esc(op.operation_id)}</td>"
            f"<td>{esc(op.action)}</td><td>{badge(op.state)}</td>"
            f'<td><progress max="{max(op.matched, 1)}" value="{handled}"></progress> '
            f"<span class=progress>{handled} of {op.matched}</span></td>"
            f"<td>{op.done}</td><td>{op.skipped}</td><td>{op.failed}</td>"
            f"<td class=wrap>{esc(reasons)}</td><td class=wrap>{esc(op.reason)}</td>"
            f"<td>{when(op.created_at)}</td><td>{when(op.updated_at)}</td><td>{cancel}</td></tr>"
        )
    return "".join(rows) or "<tr><td colspan=12 class=muted>no bulk operations</td></tr>"


def _bulk_form(shown: InstanceFilters) -> str:
    """Start a bulk operation, or only count what it would act on (a dry run)."""

    def field(name: str, label: str, extra: str = "") -> str:
        return f'<label>{label}<input name={name} value="{esc(shown.get(name))}"{extra}></label>'

    def choice(name: str, options: Sequence[str], label: str) -> str:
        listed = "".join(
            f"<option{' selected' if shown.get(name) == o else ''}>{esc(o)}</option>"
            for o in options
        )
        return f"<label>{label}<select name={name}>{listed}</select></label>"

    return (
        '<form class=filters method=post action="/console/bulks/start" '
        'data-confirm="Start this bulk operation on every matching instance?">'
        f"{choice('action', list(BULK_ACTIONS), 'action')}"
        f"{field('workflow', 'workflow version')}"
        f"{choice('status', ['', *(s.value for s in WorkflowStatus)], 'status')}"
        f"{field('tag', 'tag', ' placeholder=key=value')}{field('correlation', 'correlation id')}"
        f"{field('reason', 'reason', f' maxlength={MAX_REASON}')}"
        f"{field('signal', 'signal (for signal)')}"
        f"{field('payload', 'payload (JSON, for signal)')}"
        f"{field('max_per_second', 'per second (0: no limit)', ' type=number min=0')}"
        "<button type=submit name=dry_run value=1 data-no-confirm>Dry run</button>"
        "<button type=submit class=danger>Start</button></form>"
    )


def bulks_page(operations: Sequence[BulkOperation], shown: InstanceFilters) -> str:
    """The bulk operations, newest first, following their progress live; a form to start one."""
    return (
        "<h1>Bulk operations</h1>"
        f'<div class=card><h2 style="margin-top:0">Start</h2>{_bulk_form(shown)}</div>'
        "<div class='card scroll' data-stream=/console/bulks/stream>"
        "<span class=live>live</span><table><thead><tr><th>operation</th>"
        "<th>action</th><th>state</th><th>progress</th><th>done</th><th>skipped</th>"
        "<th>failed</th><th>why skipped or failed</th><th>reason</th><th>started</th>"
        "<th>last progress</th><th></th></tr></thead>"
        f"<tbody id=bulks>{bulk_rows(operations)}</tbody></table></div>"
    )


def login_page(message: str = "") -> str:
    note = f'<div class="notice bad">{esc(message)}</div>' if message else ""
    return (
        f"<h1>Sign in</h1>{note}<div class=card><p>The console calls the sidecar as you: paste "
        "the bearer token (JWT) you would send to its gRPC API. It is kept for this browser "
        "session only.</p><form method=post action=/console/login class=actions>"
        "<label>token<textarea name=token required></textarea></label>"
        "<div><button type=submit>Sign in</button></div></form></div>"
    )
