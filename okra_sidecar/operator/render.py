"""Output for people (aligned tables, key/value lists) and for scripts (JSON)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import click

__all__ = ["echo_json", "echo_record", "echo_table", "iso_time", "short_time"]

# Columns wider than this are cut with an ellipsis in tables; JSON output is never cut.
MAX_CELL = 60


def short_time(moment: datetime | None) -> str:
    """UTC to the second, e.g. `2026-12-06 10:12:16Z`; empty for no time."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso_time(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC, as the client's `to_json()` writes times, for JSON output."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def compact(data: Any) -> str:
    """A JSON value on one line, for a table cell."""
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _cut(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def echo_table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str) -> None:
    """An aligned table with a header row; `empty` is said when there are no rows."""
    if not rows:
        click.echo(empty)
        return
    cells = [[_cut(cell, MAX_CELL) for cell in row] for row in rows]
    widths = [max(len(columns[i]), *(len(row[i]) for row in cells)) for i in range(len(columns))]
    lines = [columns, *cells]
    for number, line in enumerate(lines):
        text = "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        click.echo(click.style(text.rstrip(), bold=True) if number == 0 else text.rstrip())


def echo_record(fields: Mapping[str, Any]) -> None:
    """`key: value` lines; a JSON value too wide for one line is indented below its key."""
    width = max(len(key) for key in fields)
    terminal = shutil.get_terminal_size((100, 24)).columns
    for key, item in fields.items():
        if item is None or item == "" or item == {} or item == []:
            continue
        label = click.style(f"{key}:".ljust(width + 1), bold=True)
        if isinstance(item, list) and all(isinstance(x, str | int | float) for x in item):
            text = ", ".join(str(x) for x in item)
        elif isinstance(item, dict | list):
            text = json.dumps(item, ensure_ascii=False)
            if len(text) + width + 2 > terminal:
                click.echo(label)
                for line in json.dumps(item, indent=2, ensure_ascii=False).splitlines():
                    click.echo(f"  {line}")
                continue
        else:
            text = str(item)
        click.echo(f"{label} {text}")


def echo_json(data: Any) -> None:
    """Indented JSON with a final newline, for `--output json`."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
