"""The console's page frame: layout, stylesheet, a little script, and escaping helpers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import escape
from typing import Any

__all__ = ["badge", "esc", "page", "pretty_json", "when"]

STYLE = """
:root { color-scheme: light dark; --bg:#f7f8fa; --fg:#1d2330; --muted:#667085; --card:#fff;
  --line:#e3e6ec; --accent:#3056d3; --ok:#1a7f4b; --bad:#c0352b; --warn:#b26b00; --idle:#667085;
  --run:#3056d3; --visited:#dcefe3; --current:#ffe08a; --active:#e6ecff; }
@media (prefers-color-scheme: dark) { :root { --bg:#12151b; --fg:#e6e9ef; --muted:#98a2b3;
  --card:#1a1f28; --line:#2c3340; --accent:#8aa6ff; --ok:#5fd39a; --bad:#ff7b72; --warn:#f2b15a;
  --idle:#98a2b3; --run:#8aa6ff; --visited:#1f3a2b; --current:#6b5614; --active:#26304a; } }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  background:var(--bg); color:var(--fg); }
header { display:flex; gap:1.5rem; align-items:center; padding:.6rem 1.5rem;
  background:var(--card); border-bottom:1px solid var(--line); }
header .brand { font-weight:700; letter-spacing:.02em; }
header nav a { color:var(--muted); text-decoration:none; margin-right:1rem; }
header nav a.here { color:var(--fg); font-weight:600; border-bottom:2px solid var(--accent); }
header .who { margin-left:auto; color:var(--muted); font-size:12px; }
main { padding:1.2rem 1.5rem; max-width:1400px; }
h1 { font-size:20px; margin:.2rem 0 1rem; } h2 { font-size:16px; margin:1.4rem 0 .6rem; }
a { color:var(--accent); }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:1rem;
  margin-bottom:1rem; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:.45rem .6rem; border-bottom:1px solid var(--line);
  white-space:nowrap; vertical-align:top; }
th { color:var(--muted); font-weight:600; font-size:12px; text-transform:uppercase; }
td.wrap { white-space:normal; }
/* A long word (an id, a payload, a reason) wraps instead of widening the page. */
td.wrap, dd, .notice, pre { overflow-wrap:anywhere; }
code, pre, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; }
pre { margin:0; white-space:pre-wrap; word-break:break-word; }
.badge { display:inline-block; padding:.05rem .5rem; border-radius:999px; font-size:12px;
  font-weight:600; border:1px solid currentColor; }
.s-completed { color:var(--ok); } .s-failed { color:var(--bad); }
.s-cancelled { color:var(--idle); }
.s-waiting { color:var(--warn); } .s-running, .s-pending { color:var(--run); }
.s-suspended { color:var(--idle); }
form.filters { display:flex; flex-wrap:wrap; gap:.5rem; align-items:end; margin-bottom:1rem; }
label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); gap:.2rem; }
input, select, textarea { font:inherit; color:var(--fg); background:var(--bg);
  border:1px solid var(--line); border-radius:6px; padding:.35rem .5rem; }
textarea { font-family:ui-monospace,monospace; font-size:12px; min-width:22rem; min-height:5rem; }
button { font:inherit; border:1px solid var(--accent); background:var(--accent); color:#fff;
  border-radius:6px; padding:.35rem .9rem; cursor:pointer; }
button.secondary { background:transparent; color:var(--accent); }
button.danger { background:var(--bad); border-color:var(--bad); }
.grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(320px,1fr)); gap:1rem; }
dl { display:grid; grid-template-columns:max-content 1fr; gap:.3rem 1rem; margin:0; }
dt { color:var(--muted); } dd { margin:0; }
.muted { color:var(--muted); } .error { color:var(--bad); }
.notice { padding:.6rem .8rem; border-radius:6px; margin-bottom:1rem;
  border:1px solid var(--line); }
.notice.bad { border-color:var(--bad); color:var(--bad); }
.notice.good { border-color:var(--ok); color:var(--ok); }
.live { font-size:12px; color:var(--muted); } .live.on::before { content:"● "; color:var(--ok); }
.actions { display:flex; flex-wrap:wrap; gap:1rem; }
.actions form { display:flex; flex-direction:column; gap:.4rem; }
svg.diagram { max-width:100%; height:auto; }
svg.diagram text { font:12px system-ui,sans-serif; text-anchor:middle; fill:var(--fg); }
svg.diagram text.kind { font-size:10px; fill:var(--muted); }
svg.diagram .node rect { fill:var(--card); stroke:var(--muted); stroke-width:1.2; }
svg.diagram .node.visited rect { fill:var(--visited); stroke:var(--ok); }
svg.diagram .node.active rect { fill:var(--active); stroke:var(--accent); }
svg.diagram .node.current rect { fill:var(--current); stroke:var(--warn); stroke-width:2.5; }
svg.diagram .edge path { fill:none; stroke:var(--muted); stroke-width:1.2; }
svg.diagram .arrowhead { fill:var(--muted); }
svg.diagram .edge-label { text-anchor:start; font-size:10px; fill:var(--muted); }
svg.diagram .group rect { fill:none; stroke:var(--line); stroke-dasharray:5 4; }
svg.diagram .group text { text-anchor:start; font-size:10px; fill:var(--muted); }
"""

# Replaces the element of each server-sent event's name with the HTML the event carries.
SCRIPT = """
// On the document, so that forms a live update puts in the page ask as well.
document.addEventListener('submit', e => {
  const f = e.target;
  const quiet = e.submitter && 'noConfirm' in e.submitter.dataset;  // a dry run changes nothing
  const asks = f.dataset && f.dataset.confirm && !quiet;
  if (asks && !confirm(f.dataset.confirm)) e.preventDefault(); });
const live = document.querySelector('[data-stream]');
if (live && window.EventSource) {
  const badge = document.querySelector('.live');
  const source = new EventSource(live.dataset.stream);
  source.onopen = () => badge && badge.classList.add('on');
  source.onerror = () => badge && badge.classList.remove('on');
  source.onmessage = e => {
    const update = JSON.parse(e.data);
    for (const [id, html] of Object.entries(update)) {
      const el = document.getElementById(id); if (el) el.innerHTML = html; }
  };
  // A page left for the back-forward cache keeps its stream open otherwise, and a few of them
  // take every connection the browser allows to the console: the next page never loads.
  addEventListener('pagehide', () => source.close());
  addEventListener('pageshow', e => { if (e.persisted) location.reload(); });
}
"""

NAV = (
    ("instances", "Instances"),
    ("workflows", "Workflows"),
    ("schedules", "Schedules"),
    ("bulks", "Bulk operations"),
)


def esc(value: Any) -> str:
    return escape("" if value is None else str(value))


def when(moment: datetime | None) -> str:
    """UTC to the second, in a <time> element that carries the exact instant."""
    if moment is None:
        return ""
    utc = moment.astimezone(UTC)
    return f'<time datetime="{utc.isoformat()}">{utc.strftime("%Y-%m-%d %H:%M:%S")}</time>'


def badge(status: str) -> str:
    return f'<span class="badge s-{esc(status)}">{esc(status)}</span>'


def pretty_json(data: Any) -> str:
    return f"<pre>{esc(json.dumps(data, indent=2, ensure_ascii=False))}</pre>"


def page(*, title: str, body: str, section: str, signed_in: bool, notice: str = "") -> str:
    links = "".join(
        f'<a href="/console/{key}"{" class=here" if key == section else ""}>{label}</a>'
        for key, label in NAV
    )
    who = (
        '<a href="/console/logout">sign out</a>'
        if signed_in
        else '<a href="/console/login">sign in with a token</a>'
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)} · okra console</title><style>{STYLE}</style></head><body>"
        f"<header><span class=brand>okra</span><nav>{links}</nav><span class=who>{who}</span>"
        f"</header><main>{notice}{body}</main><script>{SCRIPT}</script></body></html>"
    )
