"""A bare grpc.aio echo service: the transport's own limit, measured like the sidecar.

Run as `python -m bench.echo --listen HOST:PORT`; it serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

SERVICE = "okra.bench.v1.Echo"
METHOD = f"/{SERVICE}/Echo"
HOLD_METHOD = f"/{SERVICE}/Hold"
READY_LINE = "echo listening on"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


async def _hold(
    request: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    """Answer once, then hold the stream open until the caller cancels it: what a held
    stream costs grpc.aio itself, with nothing of ours on it."""
    yield request
    await asyncio.get_running_loop().create_future()


# What `--unlimited` sets: the sidecar's API port leaves the request size limit to its own
# layer, so grpc core keeps no message-size filter per call (okra_sidecar/api/decoding.py).
UNLIMITED_OPTIONS = [("grpc.max_receive_message_length", -1)]


def build_echo_server(listen: str, *, unlimited: bool = False) -> tuple[grpc.aio.Server, int]:
    """An unstarted server with a unary method that returns its request bytes unchanged, and
    a server-streaming one that answers with them once and then holds the stream."""
    # No serializers: the handler sees and returns the raw bytes, so no protobuf work at all.
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Hold": grpc.unary_stream_rpc_method_handler(_hold),
        },
    )
    server = grpc.aio.server(options=UNLIMITED_OPTIONS if unlimited else None)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return server, port


def echo_caller(channel: grpc.aio.Channel, payload: bytes) -> Callable[[int], Awaitable[bytes]]:
    """The call `drive` makes against the echo server: the same payload every time."""
    method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)

    def call(index: int) -> Awaitable[bytes]:
        return method(payload)

    return call


async def serve(listen: str, *, unlimited: bool = False) -> None:
    server, port = build_echo_server(listen, unlimited=unlimited)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host = listen.rpartition(":")[0]
    print(f"{READY_LINE} {host}:{port}", flush=True)
    await stop.wait()
    await server.stop(None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free)")
    parser.add_argument(
        "--unlimited",
        action="store_true",
        help="no request size limit in grpc core, as on the sidecar's API port",
    )
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, unlimited=args.unlimited))
    return 0


if __name__ == "__main__":
    sys.exit(main())
