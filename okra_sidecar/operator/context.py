"""The global options every command receives: which sidecar, and how to print."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import click

from okra_sidecar.operator.session import Target

__all__ = ["OUTPUT_CHOICE", "Options", "pass_options"]

OUTPUT_CHOICE = click.Choice(["table", "json"])


@dataclass(frozen=True)
class Options:
    target: Target
    output: str

    @property
    def json(self) -> bool:
        return self.output == "json"


def pass_options(command: Callable[..., None]) -> Callable[..., None]:
    """Hand the command the global Options; `-o/--output` may also follow the command."""

    def with_options(
        ctx: click.Context, /, *args: Any, output_here: str | None, **kwargs: Any
    ) -> None:
        options = ctx.find_object(Options)
        assert options is not None  # the `okra` group always sets it
        if output_here is not None:
            options = replace(options, output=output_here)
        command(options, *args, **kwargs)

    # click takes the command's help from its docstring.
    with_options.__doc__ = command.__doc__
    with_options.__name__ = command.__name__
    output_option = click.option(
        "-o",
        "--output",
        "output_here",
        type=OUTPUT_CHOICE,
        default=None,
        help="table or json (the global -o, given here instead)",
    )
    return output_option(click.pass_context(with_options))
