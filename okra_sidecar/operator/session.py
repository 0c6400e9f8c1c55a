"""How a command reaches the sidecar: address, token and TLS, and the exit code of a failure."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

import click
import grpc
from okra_client import OkraClient
from okra_client.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OkraRpcError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from okra_client.tls import ClientTls, open_channel

__all__ = ["ExitCode", "Target", "call_sidecar"]

T = TypeVar("T")


class ExitCode(IntEnum):
    """What `okra` exits with, so a script can tell the failures apart."""

    OK = 0
    FAILED = 1  # anything else: an internal error of the sidecar, a workflow that failed
    USAGE = 2  # bad flags or arguments, or a request the sidecar found invalid
    NOT_FOUND = 3  # no such instance, workflow or schedule
    REFUSED = 4  # not authenticated, denied by a policy, or over a limit
    PRECONDITION = 5  # the instance or schedule is not in a state that allows it
    UNAVAILABLE = 6  # the sidecar or its Redis cannot be reached, or the deadline passed


EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 failed, 2 bad usage or invalid request, 3 not found, "
    "4 refused (authentication, policy or limit), 5 not allowed in the current state, "
    "6 unavailable or timed out."
)

_EXIT_BY_ERROR: list[tuple[type[OkraRpcError], ExitCode]] = [
    (InvalidArgumentError, ExitCode.USAGE),
    (NotFoundError, ExitCode.NOT_FOUND),
    (UnauthenticatedError, ExitCode.REFUSED),
    (PermissionDeniedError, ExitCode.REFUSED),
    (ResourceExhaustedError, ExitCode.REFUSED),
    (FailedPreconditionError, ExitCode.PRECONDITION),
    (UnavailableError, ExitCode.UNAVAILABLE),
    (DeadlineExceededError, ExitCode.UNAVAILABLE),
]


def exit_code_of(error: OkraRpcError) -> ExitCode:
    for error_class, code in _EXIT_BY_ERROR:
        if isinstance(error, error_class):
            return code
    return ExitCode.FAILED


@dataclass(frozen=True)
class Target:
    """The sidecar to call and how; from the global options and their OKRA_* variables."""

    address: str
    token: str | None
    timeout_s: float
    tls: ClientTls | None = None  # None: plaintext

    def channel(self) -> grpc.aio.Channel:
        return open_channel(self.address, self.tls)

    def client(self, channel: grpc.aio.Channel) -> OkraClient:
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else []
        return OkraClient(channel=channel, timeout_s=self.timeout_s, metadata=metadata)


def call_sidecar(target: Target, work: Callable[[OkraClient], Awaitable[T]]) -> T:
    """Run `work` with a client on `target`; a refused call exits with its code and one line."""

    async def session() -> T:
        channel = target.channel()
        try:
            return await work(target.client(channel))
        finally:
            await channel.close()

    try:
        return asyncio.run(session())
    except OkraRpcError as error:
        click.echo(f"error: {_describe(error)}", err=True)
        sys.exit(exit_code_of(error))
    except TimeoutError:
        click.echo(f"error: no answer from {target.address} within the deadline", err=True)
        sys.exit(ExitCode.UNAVAILABLE)
    except KeyboardInterrupt:
        sys.exit(130)


def _describe(error: OkraRpcError) -> str:
    text = f"{error.code.name}: {error.message}"
    for violation in error.field_violations:
        line = f"{violation.field}: {violation.description}"
        if line != error.message:  # a lone violation is often the message itself
            text += f"\n  {line}"
    if error.retry_delay_s is not None:
        text += f"\n  retry after {error.retry_delay_s:g}s"
    return text
