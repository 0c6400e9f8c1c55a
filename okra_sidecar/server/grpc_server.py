"""The gRPC servers: services, interceptors in order, and the plaintext health port."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from okra_client.gen.admin.v1 import admin_pb2 as admin_pb
from okra_client.gen.admin.v1 import admin_pb2_grpc as admin_pb_grpc
from okra_client.gen.schedule.v1 import schedule_pb2 as spb
from okra_client.gen.schedule.v1 import schedule_pb2_grpc as spb_grpc
from okra_client.gen.worker.v1 import worker_pb2 as wpb
from okra_client.gen.worker.v1 import worker_pb2_grpc as wpb_grpc
from okra_client.gen.workflow.v1 import operator_pb2 as opb
from okra_client.gen.workflow.v1 import operator_pb2_grpc as opb_grpc
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from okra_client.gen.workflow.v1 import workflow_pb2_grpc as pb_grpc

from okra_sidecar.api.chain import InterceptorChain
from okra_sidecar.api.decoding import MAX_REQUEST_BYTES
from okra_sidecar.api.operator_servicer import WorkflowOperatorServicer
from okra_sidecar.api.registration import GenericOnlyServer
from okra_sidecar.api.schedule_servicer import ScheduleHostServicer
from okra_sidecar.api.servicer import WorkflowHostServicer
from okra_sidecar.api.status import ErrorInterceptor
from okra_sidecar.api.task_worker import TaskWorkerServicer
from okra_sidecar.api.tracing import TelemetryInterceptor
from okra_sidecar.errors import StartupError
from okra_sidecar.server.parts import PolicyLayer
from okra_sidecar.startup import (
    LISTEN_SETTING,
)
from okra_sidecar.telemetry import Telemetry

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WorkflowHostAPI"].full_name
SCHEDULE_SERVICE_NAME = spb.DESCRIPTOR.services_by_name["ScheduleHostAPI"].full_name
ADMIN_SERVICE_NAME = admin_pb.DESCRIPTOR.services_by_name["PolicyAdminService"].full_name
TASK_WORKER_SERVICE = wpb.DESCRIPTOR.services_by_name["TaskWorker"].full_name
OPERATOR_SERVICE_NAME = opb.DESCRIPTOR.services_by_name["WorkflowOperatorAPI"].full_name
# Readiness is reported under each API service's name; liveness under "" (api/readiness.py).
READINESS_SERVICES = (
    SERVICE_NAME,
    SCHEDULE_SERVICE_NAME,
    ADMIN_SERVICE_NAME,
    TASK_WORKER_SERVICE,
    OPERATOR_SERVICE_NAME,
)
# The health port's options: requests up to the sidecar's limit, SO_REUSEPORT off.
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.so_reuseport", 0),
]
# The API port leaves the request size limit to ErrorInterceptor (api/decoding.py): with a
# limit set, grpc core puts a message-size filter in every call's stack, whose per-call state
# is about 1.5 KiB of each held WatchInstance stream.
API_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.so_reuseport", 0),
]


def build_server(
    *,
    servicer: WorkflowHostServicer,
    health_servicer: health_aio.HealthServicer,
    schedules: ScheduleHostServicer | None = None,
    listen: str,
    telemetry: Telemetry | None = None,
    policies: PolicyLayer | None = None,
    task_worker: TaskWorkerServicer | None = None,
    operator: WorkflowOperatorServicer | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with its interceptors, reflection and health, bound to `listen`.

    With `credentials` the port speaks TLS only (see api/tls.py), else plaintext.
    """
    # Interceptor order, outermost first: tracing and rpc metrics (so the span covers every
    # layer and their errors), errors (map OkraError to status), auth (the caller's identity
    # from the bearer token), policy (decides with that identity), then the servicer.
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if telemetry is not None and telemetry.active:
        interceptors.append(
            TelemetryInterceptor(tracer=telemetry.tracer, metrics=telemetry.metrics)
        )
    interceptors.append(ErrorInterceptor())
    if policies is not None:
        interceptors += [policies.auth, policies.policy]
    # One chain composes the layers once per method (see InterceptorChain for why).
    server = grpc.aio.server(
        interceptors=[InterceptorChain(interceptors)], options=API_GRPC_OPTIONS
    )
    # Generic handlers only, WorkflowHostAPI first (see GenericOnlyServer for why).
    target: Any = GenericOnlyServer(server)
    pb_grpc.add_WorkflowHostAPIServicer_to_server(servicer, target)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, target)
    if schedules is not None:
        spb_grpc.add_ScheduleHostAPIServicer_to_server(schedules, target)
    services = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
    if schedules is not None:
        services.append(SCHEDULE_SERVICE_NAME)
    if policies is not None:
        admin_pb_grpc.add_PolicyAdminServiceServicer_to_server(policies.admin, target)
        services.append(ADMIN_SERVICE_NAME)
    if task_worker is not None:
        wpb_grpc.add_TaskWorkerServicer_to_server(task_worker, target)
        services.append(TASK_WORKER_SERVICE)
    if operator is not None:
        opb_grpc.add_WorkflowOperatorAPIServicer_to_server(operator, target)
        services.append(OPERATOR_SERVICE_NAME)
    # What reflection.enable_server_reflection does for an aio server, through `target`.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(services), target
    )
    try:
        if credentials is not None:
            port = server.add_secure_port(listen, credentials)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as exc:  # taken since check_listen looked, or refused by gRPC alone
        raise StartupError(f"cannot listen on {listen}; check {LISTEN_SETTING}") from exc
    return server, port


def build_health_server(
    health_servicer: health_aio.HealthServicer, listen: str
) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with the health service only, for probes without a certificate."""
    server = grpc.aio.server(options=GRPC_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise StartupError(
            f"cannot listen on {listen}; check --health-listen (OKRA_HEALTH_LISTEN)"
        ) from exc
    return server, port
