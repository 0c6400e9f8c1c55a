"""`okra`: the operator's command line (`okra --help`)."""

from __future__ import annotations

from pathlib import Path

import click
from click.shell_completion import get_completion_class
from okra_client import DEFAULT_TARGET
from okra_client.tls import ClientTls

from okra_sidecar import __version__
from okra_sidecar.operator.bulk import bulk
from okra_sidecar.operator.context import OUTPUT_CHOICE, Options
from okra_sidecar.operator.instances import instances
from okra_sidecar.operator.schedules import schedules
from okra_sidecar.operator.session import EXIT_CODES_HELP, Target
from okra_sidecar.operator.workflows import workflows

__all__ = ["main", "okra"]

COMPLETE_VAR = "_OKRA_COMPLETE"
FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.option(
    "--address",
    envvar="OKRA_ADDRESS",
    default=DEFAULT_TARGET,
    show_default=True,
    help="the sidecar's HOST:PORT [env OKRA_ADDRESS]",
)
@click.option(
    "--token", envvar="OKRA_TOKEN", help="bearer token sent with every call [env OKRA_TOKEN]"
)
@click.option(
    "-o",
    "--output",
    type=OUTPUT_CHOICE,
    default="table",
    show_default=True,
    envvar="OKRA_OUTPUT",
    help="tables for people, JSON for scripts [env OKRA_OUTPUT]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    envvar="OKRA_TIMEOUT",
    help="seconds each call may take [env OKRA_TIMEOUT]",
)
@click.option("--tls", "tls_on", is_flag=True, help="use TLS with the system's root certificates")
@click.option(
    "--tls-ca",
    type=FILE,
    envvar="OKRA_TLS_CA",
    help="CA to verify the sidecar by (implies TLS) [env OKRA_TLS_CA]",
)
@click.option(
    "--tls-cert",
    type=FILE,
    envvar="OKRA_TLS_CERT",
    help="client certificate for mTLS [env OKRA_TLS_CERT]",
)
@click.option(
    "--tls-key", type=FILE, envvar="OKRA_TLS_KEY", help="its private key [env OKRA_TLS_KEY]"
)
@click.option("--tls-server-name", help="name to verify the sidecar's certificate against")
@click.version_option(__version__, prog_name="okra")
@click.pass_context
def okra(
    ctx: click.Context,
    address: str,
    token: str | None,
    output: str,
    timeout: float,
    tls_on: bool,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_server_name: str | None,
) -> None:
    """Operate workflow instances through a sidecar's gRPC API.

    \b
    Examples:
      okra workflows list
      okra instances list --status waiting
      okra instances signal INSTANCE_ID approve --payload '{"by": "grace"}'
    """
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together (mutual TLS needs both)")
    tls = None
    if tls_on or tls_ca or tls_cert:
        tls = ClientTls(
            ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key, server_name=tls_server_name
        )
    target = Target(address=address, token=token, timeout_s=timeout, tls=tls)
    ctx.obj = Options(target=target, output=output)


@okra.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    \b
    Examples:
      eval "$(okra completion bash)"          # in ~/.bashrc
      okra completion fish > ~/.config/fish/completions/okra.fish
    """
    completion_class = get_completion_class(shell)
    assert completion_class is not None  # the choices are the shells click knows
    click.echo(completion_class(okra, {}, "okra", COMPLETE_VAR).source())


okra.add_command(workflows)
okra.add_command(instances)
okra.add_command(schedules)
okra.add_command(bulk)


def main() -> None:
    okra(prog_name="okra", complete_var=COMPLETE_VAR)
