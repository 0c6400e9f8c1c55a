"""Option types shared by the commands: JSON values, KEY=VALUE tags, times and query filters."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from okra_client import Json, WorkflowStatus

__all__ = ["JSON_VALUE", "TAG", "TIME", "query_filters", "tags_of"]

F = TypeVar("F", bound=Callable[..., Any])


class JsonValueType(click.ParamType[Json, str]):
    """A JSON value given inline (`'{"a": 1}'`) or read from a file (`@input.json`)."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Json:
        if not isinstance(value, str):
            return value
        text = value
        if value.startswith("@"):
            try:
                text = Path(value[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                self.fail(f"cannot read {value[1:]}: {exc.strerror}", param, ctx)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            self.fail(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", param, ctx)


class TagType(click.ParamType[tuple[str, str], str]):
    """A tag as KEY=VALUE."""

    name = "key=value"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, sep, item = str(value).partition("=")
        if not sep or not key:
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        return key, item


class TimeType(click.ParamType[datetime, str]):
    """An ISO 8601 time such as `2026-12-06T10:00:00Z`; without a zone it is UTC."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time such as 2026-12-06T10:00:00Z", param, ctx)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


JSON_VALUE = JsonValueType()
TAG = TagType()
TIME = TimeType()
STATUS_CHOICE = click.Choice([s.value for s in WorkflowStatus], case_sensitive=False)


def tags_of(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(pairs)


def query_filters(command: F) -> F:
    """Query's filters as options: workflow, status, tags, correlation id and start times."""
    options = [
        click.option("--workflow", "workflow_id", help="only this version: namespace.name.version"),
        click.option(
            "--status",
            "statuses",
            multiple=True,
            type=STATUS_CHOICE,
            help="only these statuses (repeat for several)",
        ),
        click.option("--tag", "tags", multiple=True, type=TAG, help="KEY=VALUE (repeatable)"),
        click.option("--correlation-id", help="only instances with this correlation id"),
        click.option("--started-after", type=TIME, help="started at or after this time"),
        click.option("--started-before", type=TIME, help="started before this time"),
    ]
    for option in reversed(options):
        command = option(command)
    return command
