"""Adding services to a grpc.aio server as generic handlers only, without registered methods.

The `add_*Servicer_to_server` functions that grpcio-tools generates register every method
with the C core as well. grpc.aio's server then keeps one pending request per registered
method and, for every incoming call, `asyncio.wait`s on all of them: with the sidecar's ~25
methods that wait was the largest single cost of an rpc in the serving process (callgrind:
about a tenth of its instructions per Run). Served as generic handlers only, a call waits
on one request, as a bare echo server does; a method is found by a dict lookup instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

__all__ = ["GenericOnlyServer"]


class GenericOnlyServer:
    """Stands in for the server when calling a generated `add_*_to_server` function.

    It forwards the service's generic handler to the real server and drops the registration
    of its methods; everything else a generated function needs is those two calls.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """Registered methods are what this class leaves out (see the module docstring)."""
