"""OpenTelemetry for the sidecar: traces, metrics and logs, and the hooks other layers call.

Hooks for the layers below the rpc interceptor (auth, policy, servicer):
`set_caller(identity)`, `note_policy_denial(policy)`, `annotate(**okra_attributes)` and
`record_error(exc, server_fault=...)` act on the call in flight. Outgoing calls (HTTP, gRPC,
worker tasks) carry the trace with `inject_traceparent(carrier)`.
"""

from okra_sidecar.telemetry.metrics import ClusterGauges, SidecarMetrics
from okra_sidecar.telemetry.providers import Telemetry
from okra_sidecar.telemetry.tracing import (
    annotate,
    current_carrier,
    dump_carrier,
    event_trace_fields,
    extract_context,
    inject_traceparent,
    note_policy_denial,
    record_error,
    set_caller,
)

__all__ = [
    "ClusterGauges",
    "SidecarMetrics",
    "Telemetry",
    "annotate",
    "current_carrier",
    "dump_carrier",
    "event_trace_fields",
    "extract_context",
    "inject_traceparent",
    "note_policy_denial",
    "record_error",
    "set_caller",
]
