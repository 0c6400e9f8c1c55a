"""`okra workflows`: the registered workflow versions."""

from __future__ import annotations

import click
from okra_client import OkraClient, WorkflowInfo

from okra_sidecar.operator.context import Options, pass_options
from okra_sidecar.operator.render import echo_json, echo_record, echo_table
from okra_sidecar.operator.session import ExitCode, call_sidecar

__all__ = ["workflows"]


def info_json(info: WorkflowInfo) -> dict[str, object]:
    return {
        "workflowId": info.workflow_id,
        "namespace": info.namespace,
        "name": info.name,
        "version": info.version,
        "triggers": info.triggers,
        "title": info.title,
        "summary": info.summary,
    }


@click.group()
def workflows() -> None:
    """The workflow versions registered with the sidecars sharing this Redis."""


@workflows.command("list")
@pass_options
def list_workflows(options: Options) -> None:
    """Every workflow version this caller may run, with its triggers.

    \b
    Example:
      okra workflows list
    """

    async def fetch(client: OkraClient) -> list[WorkflowInfo]:
        return await client.list_workflows()

    infos = call_sidecar(options.target, fetch)
    if options.json:
        echo_json([info_json(info) for info in infos])
        return
    echo_table(
        ["WORKFLOW", "VERSION", "TRIGGERS", "TITLE"],
        [[i.workflow_id, i.version, ", ".join(i.triggers), i.title] for i in infos],
        empty="no workflows registered",
    )


@workflows.command("show")
@click.argument("workflow_id")
@pass_options
def show_workflow(options: Options, workflow_id: str) -> None:
    """One workflow: every version of `namespace.name`, or one `namespace.name.version`.

    \b
    Example:
      okra workflows show examples.order
    """

    async def fetch(client: OkraClient) -> list[WorkflowInfo]:
        return await client.list_workflows()

    infos = call_sidecar(options.target, fetch)
    matches = [i for i in infos if workflow_id in (i.workflow_id, f"{i.namespace}.{i.name}")]
    if not matches:
        click.echo(
            f"error: no workflow {workflow_id} is registered (see `okra workflows list`)", err=True
        )
        raise SystemExit(ExitCode.NOT_FOUND)
    if options.json:
        echo_json([info_json(info) for info in matches])
        return
    for number, info in enumerate(matches):
        if number:
            click.echo()
        echo_record(info_json(info))
