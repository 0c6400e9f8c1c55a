"""GenericOnlyServer: a generated add_*_to_server adds its generic handler and nothing else."""

from __future__ import annotations

from typing import Any
from unittest import mock

import grpc
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from okra_sidecar.api.registration import GenericOnlyServer


class RecordingServer:
    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.append(service)


def test_generated_registration_keeps_the_generic_handler_and_drops_registered_methods() -> None:
    server = RecordingServer()
    # The generated function only looks the servicer's methods up; a Mock has them all.
    target: Any = GenericOnlyServer(server)  # type: ignore[arg-type]
    pb_grpc.add_WorkflowHostAPIServicer_to_server(mock.Mock(), target)
    assert server.registered == []
    [handler] = server.generic
    run: Any = mock.Mock(method="/okra.workflow.v1.WorkflowHostAPI/Run")
    unknown: Any = mock.Mock(method="/okra.workflow.v1.WorkflowHostAPI/Nope")
    assert handler.service(run) is not None
    assert handler.service(unknown) is None
