"""`okra bulk`: start, follow, cancel and list bulk operations over many instances."""

from __future__ import annotations

from typing import Any

import click
from okra_client import BulkOperation, BulkStart, Json, OkraClient
from okra_client.operator import BULK_ACTIONS

from okra_sidecar.operator.context import Options, pass_options
from okra_sidecar.operator.instances import query_kwargs
from okra_sidecar.operator.params import JSON_VALUE, query_filters
from okra_sidecar.operator.render import echo_json, echo_record, echo_table, short_time
from okra_sidecar.operator.session import call_sidecar

__all__ = ["bulk"]

COLUMNS = [
    *("OPERATION", "ACTION", "STATE", "MATCHED", "DONE", "SKIPPED", "FAILED"),
    *("CREATED", "UPDATED"),
]


def _row(operation: BulkOperation) -> list[str]:
    return [
        operation.operation_id,
        operation.action,
        operation.state,
        *(str(n) for n in (operation.matched, operation.done, operation.skipped)),
        str(operation.failed),
        short_time(operation.created_at),
        short_time(operation.updated_at),
    ]


@click.group()
def bulk() -> None:
    """Bulk operations: one action on every instance a filter matches, in the background."""


@bulk.command("start")
@click.argument("action", type=click.Choice(sorted(BULK_ACTIONS)))
@query_filters
@click.option("--reason", help="recorded with each instance's change")
@click.option("--signal", "signal_name", help="for `signal`: the signal's name")
@click.option("--payload", type=JSON_VALUE, help="for `signal`: JSON, or @file.json")
@click.option("--dry-run", is_flag=True, help="only count the matches and show a sample")
@click.option(
    "--max-per-second", type=click.IntRange(0, 10_000), default=0, help="pace (0: no limit)"
)
@pass_options
def start_bulk(
    options: Options,
    action: str,
    reason: str | None,
    signal_name: str | None,
    payload: Json,
    dry_run: bool,
    max_per_second: int,
    **filters: Any,
) -> None:
    """Apply ACTION to every instance the filters match.

    \b
    Examples:
      okra bulk start cancel --workflow examples.order.1.0.0 --status waiting --dry-run
      okra bulk start signal --tag batch=7 --signal approve --payload '{"by": "ops"}'
    """

    async def begin(client: OkraClient) -> BulkStart:
        return await client.operator.start_bulk(
            action,
            reason=reason or "",
            signal=signal_name or "",
            payload=payload,
            dry_run=dry_run,
            max_per_second=max_per_second,
            **query_kwargs(**filters),
        )

    started = call_sidecar(options.target, begin)
    if options.json:
        echo_json(
            {
                "operationId": started.operation_id or None,
                "matched": started.matched,
                "sampleInstanceIds": started.sample_instance_ids,
                "maxInstances": started.max_instances,
            }
        )
        return
    instances = "1 instance" if started.matched == 1 else f"{started.matched} instances"
    if dry_run:
        click.echo(
            f"{instances} {'matches' if started.matched == 1 else 'match'}; nothing was changed"
        )
        if started.over_limit:
            click.echo(
                f"a real run would be refused: {started.matched} is over the limit of "
                f"{started.max_instances} instances per bulk operation; narrow the filter "
                "or split the work"
            )
        for instance_id in started.sample_instance_ids:
            click.echo(f"  {instance_id}")
        return
    click.echo(f"bulk operation {started.operation_id} started on {instances}")


@bulk.command("get")
@click.argument("operation_id")
@pass_options
def get_bulk(options: Options, operation_id: str) -> None:
    """How far a bulk operation got: matched, done, skipped and failed, and why.

    \b
    Example:
      okra bulk get 0b6c2f9e-5d4a-4c1e-9a57-3f2d8e1c7b40 -o json
    """

    async def fetch(client: OkraClient) -> BulkOperation:
        return await client.operator.get_bulk(operation_id)

    operation = call_sidecar(options.target, fetch)
    if options.json:
        echo_json(operation.to_json())
        return
    fields: dict[str, Any] = {
        "operation": operation.operation_id,
        "action": operation.action,
        "state": operation.state,
        "matched": operation.matched,
        "done": operation.done,
        "skipped": operation.skipped,
        "failed": operation.failed,
        "created": short_time(operation.created_at),
        "updated": short_time(operation.updated_at),
    }
    if operation.reasons:
        fields["reasons"] = operation.reasons
    if operation.reason:
        fields["reason"] = operation.reason
    echo_record(fields)


@bulk.command("cancel")
@click.argument("operation_id")
@pass_options
def cancel_bulk(options: Options, operation_id: str) -> None:
    """Stop a running bulk operation; what it did stays done.

    \b
    Example:
      okra bulk cancel 0b6c2f9e-5d4a-4c1e-9a57-3f2d8e1c7b40
    """

    async def cancel(client: OkraClient) -> None:
        await client.operator.cancel_bulk(operation_id)

    call_sidecar(options.target, cancel)
    if options.json:
        echo_json({"operationId": operation_id, "cancelled": True})
    else:
        click.echo(f"bulk operation {operation_id} cancelled")


@bulk.command("list")
@pass_options
def list_bulk(options: Options) -> None:
    """The latest bulk operations, newest first.

    \b
    Example:
      okra bulk list
    """

    async def fetch(client: OkraClient) -> list[BulkOperation]:
        return await client.operator.list_bulk()

    operations = call_sidecar(options.target, fetch)
    if options.json:
        echo_json({"operations": [o.to_json() for o in operations]})
        return
    echo_table(COLUMNS, [_row(o) for o in operations], empty="no bulk operations")
