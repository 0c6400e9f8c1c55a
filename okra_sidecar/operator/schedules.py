"""`okra schedules`: list, trigger, pause, resume and delete schedules."""

from __future__ import annotations

from datetime import datetime

import click
from okra_client import Json, OkraClient
from okra_client.schedules import CatchUpPolicy, OverlapPolicy, Schedule

from okra_sidecar.operator.context import Options, pass_options
from okra_sidecar.operator.params import JSON_VALUE, TAG, TIME, tags_of
from okra_sidecar.operator.render import echo_json, echo_record, echo_table, short_time
from okra_sidecar.operator.session import call_sidecar

__all__ = ["schedules"]


def _when(schedule: Schedule) -> str:
    if schedule.cron_expression:
        zone = f" ({schedule.time_zone})" if schedule.time_zone else ""
        return f"cron {schedule.cron_expression}{zone}"
    if schedule.every is not None:
        return f"every {schedule.every.total_seconds():g}s"
    if schedule.after is not None:
        return f"after {schedule.after.total_seconds():g}s"
    return ""


@click.group()
def schedules() -> None:
    """Schedules that start instances: from TriggerWorkflow and from definitions."""


@schedules.command("list")
@click.option("--workflow", "workflow_id", help="only schedules of this workflow id")
@pass_options
def list_schedules(options: Options, workflow_id: str | None) -> None:
    """Every schedule with its next fire time.

    \b
    Example:
      okra schedules list
    """

    async def fetch(client: OkraClient) -> list[Schedule]:
        return [s async for s in client.schedules.list(workflow_id=workflow_id)]

    found = call_sidecar(options.target, fetch)
    if options.json:
        echo_json([s.to_json() for s in found])
        return
    echo_table(
        ["SCHEDULE", "WORKFLOW", "WHEN", "STATE", "NEXT", "FIRED", "LAST ERROR"],
        [
            [
                s.schedule_id,
                s.workflow_id,
                _when(s),
                "paused" if s.paused else "active",
                short_time(s.next_fire_times[0]) if s.next_fire_times else "",
                str(s.fired_count),
                s.last_error,
            ]
            for s in found
        ],
        empty="no schedules",
    )


def _show(options: Options, schedule: Schedule) -> None:
    if options.json:
        echo_json(schedule.to_json())
    else:
        echo_record(schedule.to_json())


@schedules.command("get")
@click.argument("schedule_id")
@pass_options
def get_schedule(options: Options, schedule_id: str) -> None:
    """One schedule and its next five fire times.

    \b
    Example:
      okra schedules get workflow:examples.nightly-report
    """

    async def fetch(client: OkraClient) -> Schedule:
        return await client.schedules.get(schedule_id)

    _show(options, call_sidecar(options.target, fetch))


@schedules.command("trigger")
@click.argument("workflow_id")
@click.option("--cron", "cron_expression", required=True, help="e.g. '0 6 * * *' or @daily")
@click.option("--input", "input_", type=JSON_VALUE, default="{}", help="JSON, or @FILE")
@click.option("--time-zone", help="IANA zone the expression is read in; default UTC")
@click.option("--start", "start_time", type=TIME, help="no firing before this time")
@click.option("--end", "end_time", type=TIME, help="no firing after this time")
@click.option("--overlap", type=click.Choice([p.value for p in OverlapPolicy]))
@click.option("--catch-up", type=click.Choice([p.value for p in CatchUpPolicy]))
@click.option("--tag", "tags", multiple=True, type=TAG, help="KEY=VALUE (repeatable)")
@click.option("--request-id", help="idempotency key: a repeat returns the same schedule")
@pass_options
def trigger_schedule(
    options: Options,
    workflow_id: str,
    cron_expression: str,
    input_: Json,
    time_zone: str | None,
    start_time: datetime | None,
    end_time: datetime | None,
    overlap: str | None,
    catch_up: str | None,
    tags: tuple[tuple[str, str], ...],
    request_id: str | None,
) -> None:
    """Create a schedule that runs a workflow on a cron expression; prints its id.

    \b
    Example:
      okra schedules trigger examples.approval --cron '0 6 * * *' --time-zone Europe/Berlin \\
        --input '{"requester": "ada", "amount": 20}'
    """

    async def trigger(client: OkraClient) -> str:
        return await client.schedules.trigger(
            workflow_id,
            input_,
            cron_expression,
            time_zone=time_zone,
            start_time=start_time,
            end_time=end_time,
            overlap=OverlapPolicy(overlap) if overlap else None,
            catch_up=CatchUpPolicy(catch_up) if catch_up else None,
            tags=tags_of(tags),
            request_id=request_id,
        )

    schedule_id = call_sidecar(options.target, trigger)
    if options.json:
        echo_json({"scheduleId": schedule_id})
    else:
        click.echo(schedule_id)


@schedules.command("pause")
@click.argument("schedule_id")
@pass_options
def pause_schedule(options: Options, schedule_id: str) -> None:
    """Stop a schedule firing until it is resumed.

    \b
    Example:
      okra schedules pause workflow:examples.nightly-report
    """

    async def pause(client: OkraClient) -> Schedule:
        return await client.schedules.pause(schedule_id)

    _show(options, call_sidecar(options.target, pause))


@schedules.command("resume")
@click.argument("schedule_id")
@pass_options
def resume_schedule(options: Options, schedule_id: str) -> None:
    """Let a paused schedule fire again from its next fire time.

    \b
    Example:
      okra schedules resume workflow:examples.nightly-report
    """

    async def resume(client: OkraClient) -> Schedule:
        return await client.schedules.resume(schedule_id)

    _show(options, call_sidecar(options.target, resume))


@schedules.command("delete")
@click.argument("schedule_id")
@pass_options
def delete_schedule(options: Options, schedule_id: str) -> None:
    """Delete a schedule made by `trigger` (a definition's can only be paused).

    \b
    Example:
      okra schedules delete 6f1c1a52-8a39-4d43-a1f0-2b8f0f5f3d11
    """

    async def delete(client: OkraClient) -> None:
        await client.schedules.delete(schedule_id)

    call_sidecar(options.target, delete)
    if options.json:
        echo_json({"scheduleId": schedule_id, "deleted": True})
    else:
        click.echo(f"schedule {schedule_id} deleted")
