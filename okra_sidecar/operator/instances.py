"""`okra instances`: list, count, read, start, signal, cancel and watch instances."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import click
from okra_client import (
    HistoryEvent,
    Json,
    OkraClient,
    QueryPage,
    SignalResult,
    WorkflowInstance,
)

from okra_sidecar.operator.context import Options, pass_options
from okra_sidecar.operator.params import JSON_VALUE, TAG, query_filters, tags_of
from okra_sidecar.operator.render import (
    compact,
    echo_json,
    echo_record,
    echo_table,
    iso_time,
    short_time,
)
from okra_sidecar.operator.session import call_sidecar

__all__ = ["instances", "query_kwargs"]

# Query's largest page: `count` reads matching instances in pages of this size.


def instance_json(instance: WorkflowInstance) -> dict[str, Json]:
    """The instance as grpcurl shows it (camelCase), with the whole RFC 7807 error."""
    data = instance.to_json()
    if instance.error is not None:
        data["error"] = dataclasses.asdict(instance.error)
    if instance.updated_at is not None:
        data["updatedAt"] = iso_time(instance.updated_at)
    if instance.cancel_reason:
        data["cancelReason"] = instance.cancel_reason
    data["revision"] = instance.revision
    return data


def event_json(event: HistoryEvent) -> dict[str, Json]:
    data: dict[str, Json] = {"id": event.id, "type": event.type, "time": iso_time(event.time)}
    if event.task:
        data["task"] = event.task
    if event.details:
        data["details"] = event.details
    return data


def _row(instance: WorkflowInstance) -> list[str]:
    return [
        instance.instance_id,
        instance.workflow_id,
        instance.status.value,
        instance.current_step or "",
        short_time(instance.start_time),
        short_time(instance.end_time),
        instance.correlation_id or "",
        compact(instance.tags) if instance.tags else "",
    ]


COLUMNS = ["INSTANCE", "WORKFLOW", "STATUS", "STEP", "STARTED", "ENDED", "CORRELATION", "TAGS"]


@click.group()
def instances() -> None:
    """Workflow instances: find them, read them, and act on them."""


def query_kwargs(
    workflow_id: str | None,
    statuses: tuple[str, ...],
    tags: tuple[tuple[str, str], ...],
    correlation_id: str | None,
    started_after: datetime | None,
    started_before: datetime | None,
) -> dict[str, Any]:
    return {
        "workflow_id": workflow_id,
        "status": list(statuses),
        "tags": tags_of(tags),
        "correlation_id": correlation_id,
        "started_after": started_after,
        "started_before": started_before,
    }


@instances.command("list")
@query_filters
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--cursor", help="the cursor a previous page printed, for the next page")
@pass_options
def list_instances(options: Options, limit: int, cursor: str | None, **filters: Any) -> None:
    """One page of the matching instances, newest first.

    \b
    Examples:
      okra instances list --status waiting
      okra instances list --workflow examples.order.1.0.0 --tag region=eu -o json
    """

    async def fetch(client: OkraClient) -> QueryPage:
        return await client.query(**query_kwargs(**filters), limit=limit, cursor=cursor)

    page = call_sidecar(options.target, fetch)
    if options.json:
        echo_json({"instances": [instance_json(i) for i in page.instances], "cursor": page.cursor})
        return
    echo_table(COLUMNS, [_row(i) for i in page.instances], empty="no matching instances")
    if page.cursor:
        click.echo(f"more: --cursor {page.cursor}", err=True)


@instances.command("count")
@query_filters
@pass_options
def count_instances(options: Options, **filters: Any) -> None:
    """How many instances match the filters, exactly (Count).

    \b
    Example:
      okra instances count --status failed
    """

    async def count(client: OkraClient) -> int:
        return await client.count(**query_kwargs(**filters))

    total = call_sidecar(options.target, count)
    if options.json:
        echo_json({"count": total})
    else:
        click.echo(total)


@instances.command("get")
@click.argument("instance_id")
@pass_options
def get_instance(options: Options, instance_id: str) -> None:
    """One instance: status, step, input, output, error, variables and tags.

    \b
    Example:
      okra instances get 0b6c2f9e-5d4a-4c1e-9a57-3f2d8e1c7b40
    """

    async def fetch(client: OkraClient) -> WorkflowInstance:
        return await client.get_status(instance_id)

    instance = call_sidecar(options.target, fetch)
    if options.json:
        echo_json(instance_json(instance))
    else:
        echo_record(instance_json(instance))


@instances.command("history")
@click.argument("instance_id")
@pass_options
def instance_history(options: Options, instance_id: str) -> None:
    """Everything an instance did, oldest first: its tasks, waits, signals and end.

    \b
    Example:
      okra instances history 0b6c2f9e-5d4a-4c1e-9a57-3f2d8e1c7b40
    """

    async def fetch(client: OkraClient) -> list[HistoryEvent]:
        return [event async for event in client.history(instance_id)]

    events = call_sidecar(options.target, fetch)
    if options.json:
        echo_json([event_json(e) for e in events])
        return
    echo_table(
        ["TIME", "EVENT", "TASK", "DETAILS"],
        [[short_time(e.time), e.type, e.task or "", compact(e.details or None)] for e in events],
        empty="no history",
    )


@instances.command("start")
@click.argument("workflow_id")
@click.option("--input", "input_", type=JSON_VALUE, default="{}", help="JSON, or @FILE")
@click.option("--correlation-id", help="an id of yours to find the instance by")
@click.option("--tag", "tags", multiple=True, type=TAG, help="KEY=VALUE (repeatable)")
@click.option("--request-id", help="idempotency key: a repeat returns the same instance")
@pass_options
def start_instance(
    options: Options,
    workflow_id: str,
    input_: Json,
    correlation_id: str | None,
    tags: tuple[tuple[str, str], ...],
    request_id: str | None,
) -> None:
    """Run a workflow: start an instance and print its id.

    \b
    Example:
      okra instances start examples.approval --input '{"requester": "ada", "amount": 250}'
    """

    async def start(client: OkraClient) -> str:
        return await client.run(
            workflow_id,
            input_,
            correlation_id=correlation_id,
            tags=tags_of(tags),
            request_id=request_id,
        )

    instance_id = call_sidecar(options.target, start)
    if options.json:
        echo_json({"instanceId": instance_id})
    else:
        click.echo(instance_id)


@instances.command("signal")
@click.argument("instance_id")
@click.argument("signal")
@click.option("--payload", type=JSON_VALUE, default="null", help="JSON, or @FILE")
@click.option("--signal-id", help="idempotency key: a repeat is delivered once")
@pass_options
def signal_instance(
    options: Options, instance_id: str, signal: str, payload: Json, signal_id: str | None
) -> None:
    """Deliver a signal, with a JSON payload, to an instance.

    \b
    Example:
      okra instances signal 0b6c2f9e-5d4a-4c1e-9a57-3f2d8e1c7b40 approval \\
        --payload '{"approved": true}'
    """

    async def deliver(client: OkraClient) -> SignalResult:
        return await client.signal(instance_id, signal, payload, signal_id=signal_id)

    result = call_sidecar(options.target, deliver)
    if options.json:
        echo_json({"signalId": result.signal_id, "duplicate": result.duplicate})
    else:
        note = " (a repeat: delivered before)" if result.duplicate else ""
        click.echo(f"signal {result.signal_id} delivered{note}")


@instances.command("cancel")
@click.argument("instance_id")
@click.option("--reason", help="recorded on the instance and in its history")
@pass_options
def cancel_instance(options: Options, instance_id: str, reason: str | None) -> None:
    """Cancel a pending, running, waiting or suspended instance.

    \b
    Example:
      okra instances cancel 0b6c2f9e-5d4a-4c1e-9a57-3f2d8e1c7b40 --reason "duplicate order"
    """

    async def cancel(client: OkraClient) -> None:
        await client.cancel(instance_id, reason)

    call_sidecar(options.target, cancel)
    if options.json:
        echo_json({"instanceId": instance_id, "cancelled": True})
    else:
        click.echo(f"instance {instance_id} cancelled")


@instances.command("suspend")
@click.argument("instance_id")
@click.option("--reason", help="recorded in the instance's history")
@pass_options
def suspend_instance(options: Options, instance_id: str, reason: str | None) -> None:
    """Pause a pending, running or waiting instance: it runs no task until resumed, and keeps
    the signals and timers that reach it meanwhile.

    \b
    Example:
      okra instances suspend 0b6c2f9e-5d4a-4c1e-9a57-3f2d8e1c7b40 --reason "audit"
    """

    async def suspend(client: OkraClient) -> None:
        await client.operator.suspend(instance_id, reason or "")

    call_sidecar(options.target, suspend)
    _done(options, instance_id, "suspended")


@instances.command("resume")
@click.argument("instance_id")
@click.option("--reason", help="recorded in the instance's history")
@pass_options
def resume_instance(options: Options, instance_id: str, reason: str | None) -> None:
    """Let a suspended instance carry on where it stopped.

    \b
    Example:
      okra instances resume 0b6c2f9e-5d4a-4c1e-9a57-3f2d8e1c7b40
    """

    async def resume(client: OkraClient) -> None:
        await client.operator.resume(instance_id, reason or "")

    call_sidecar(options.target, resume)
    _done(options, instance_id, "resumed")


@instances.command("retry")
@click.argument("instance_id")
@click.option("--reason", help="recorded in the instance's history")
@click.option("--variables", type=JSON_VALUE, help="JSON object of $context entries to set first")
@pass_options
def retry_instance(options: Options, instance_id: str, reason: str | None, variables: Json) -> None:
    """Run a failed instance again from the task that failed it.

    \b
    Example:
      okra instances retry 0b6c2f9e-5d4a-4c1e-9a57-3f2d8e1c7b40 --reason "payments are back"
    """

    if variables is not None and not isinstance(variables, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--variables")

    async def retry(client: OkraClient) -> str:
        return await client.operator.retry(instance_id, reason or "", variables=variables)

    task = call_sidecar(options.target, retry)
    if options.json:
        echo_json({"instanceId": instance_id, "retried": True, "task": task})
    else:
        click.echo(f"instance {instance_id} runs again from {task}")


@instances.command("reset")
@click.argument("instance_id")
@click.option(
    "--task", required=True, help="JSON pointer of a top-level task, as current_step shows it"
)
@click.option("--reason", help="recorded in the instance's history")
@pass_options
def reset_instance(options: Options, instance_id: str, task: str, reason: str | None) -> None:
    """Take an ended or waiting instance back to one of its top-level tasks.

    It runs on from there with the data and $context it had when it first reached that task;
    what the tasks after it did is not undone.

    \b
    Example:
      okra instances reset 0b6c2f9e-5d4a-4c1e-9a57-3f2d8e1c7b40 --task /do/1/charge
    """

    async def reset(client: OkraClient) -> str:
        return (await client.operator.reset(instance_id, task, reason or "")).value

    previous = call_sidecar(options.target, reset)
    if options.json:
        echo_json({"instanceId": instance_id, "reset": True, "task": task, "previous": previous})
    else:
        click.echo(f"instance {instance_id} ({previous}) runs again from {task}")


@instances.command("delete")
@click.argument("instance_id")
@pass_options
def delete_instance(options: Options, instance_id: str) -> None:
    """Delete a completed, failed or cancelled instance with its history.

    \b
    Example:
      okra instances delete 0b6c2f9e-5d4a-4c1e-9a57-3f2d8e1c7b40
    """

    async def delete(client: OkraClient) -> None:
        await client.operator.delete(instance_id)

    call_sidecar(options.target, delete)
    _done(options, instance_id, "deleted")


def _done(options: Options, instance_id: str, what: str) -> None:
    if options.json:
        echo_json({"instanceId": instance_id, what: True})
    else:
        click.echo(f"instance {instance_id} {what}")


@instances.command("watch")
@click.argument("instance_id")
@pass_options
def watch_instance(options: Options, instance_id: str) -> None:
    """Print a line each time an instance changes, until it finishes.

    One line (one JSON object with -o json) per change the sidecar commits, streamed by
    WatchInstance as it happens: nothing polls.

    \b
    Example:
      okra instances watch 0b6c2f9e-5d4a-4c1e-9a57-3f2d8e1c7b40
    """

    async def watch(client: OkraClient) -> None:
        async for instance in client.watch(instance_id):
            if options.json:
                click.echo(compact(instance_json(instance)))
            else:
                step = f" at {instance.current_step}" if instance.current_step else ""
                click.echo(f"{short_time(instance.updated_at)}  {instance.status.value}{step}")

    call_sidecar(options.target, watch)
