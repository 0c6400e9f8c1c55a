"""Settings: frozen dataclasses built once from flags, OKRA_* variables and a YAML file.

config_sources.py says which key each variable, flag and file entry sets, and converts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from okra_sidecar.config_sources import (
    SETTINGS,
    ConfigError,
    read_sources,
)


@dataclass(frozen=True)
class HostSettings:
    """The WorkflowHostAPIConfig: limits and switches for the API."""

    max_concurrent_instances: int = 0  # 0: no limit
    max_instance_duration_s: float | None = None
    enable_manual_triggers: bool = True
    retention_days: int = 30
    default_timeout_s: float | None = None
    max_input_bytes: int = 1024 * 1024
    # Instances one instance may start a minute (children, triggered by its events, Runs from
    # its gRPC calls); 0: no bound. See policy/causation.py.
    max_caused_per_minute: int = 1000
    max_input_depth: int = 32


@dataclass(frozen=True)
class ServerSettings:
    listen: str = "127.0.0.1:50051"
    grace_s: float = 10.0
    # A plaintext port serving only the health service, for probes that cannot present a
    # client certificate (the kubelet's gRPC probe); None: no such port.
    health_listen: str | None = None
    # Silences the warning about a non-loopback listener without TLS or required auth.
    insecure: bool = False


@dataclass(frozen=True)
class TlsSettings:
    """TLS on the gRPC port; a client CA makes it mutual (a client certificate is required)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None


@dataclass(frozen=True)
class RedisSettings:
    url: str | None = None  # None: start an embedded redis-server
    data_dir: Path = Path(".okra")
    key_prefix: str = "okra:"
    partitions: int = 8
    durability: str = "memory"
    # How long the start waits for an unreachable Redis, with backoff; None: until it answers.
    wait_s: float | None = None


@dataclass(frozen=True)
class EngineSettings:
    concurrency: int = 64
    # 0: turns run in the serving process; N: in N child processes (engine/runtime/processes.py).
    # Only a child's expressions can be bounded: jq holds the GIL, nothing in-process stops it.
    processes: int = 1
    claim_idle_ms: int = 30_000
    timer_interval_ms: int = 100
    max_steps_per_turn: int = 1000
    read_block_ms: int = 1000
    # After a read that found less than a full batch, wait this long before the next one
    # (readLingerMs), so that work arriving meanwhile is read, loaded and committed together;
    # the outbox relay does the same after a short read of the outboxes.
    read_linger_ms: int = 2
    # The largest definition file loaded (maxDefinitionBytes); larger ones stop the start.
    max_definition_bytes: int = 1024 * 1024
    # Budgets an engine child's parent enforces (engine/runtime/watchdog.py); 0 lifts one.
    expression_timeout_ms: int = 1000
    turn_timeout_ms: int = 10_000
    # How far an engine child's data segment may grow past its size once started (MiB).
    memory_mb: int = 256
    # Retries of a turn whose engine process died in it, before its instance fails.
    crash_retries: int = 2
    # An evaluation running this long in a regular engine process (or one that crashes it)
    # moves its instance to the slow lane, an engine process of its own where the budgets
    # apply in full; the others' turns wait at most this long for it (0: no slow lane).
    slow_expression_ms: int = 100
    # Keep one engine process started ahead, idle, to replace the next that dies at once.
    spare: bool = True
    # Every consumer refreshes its heartbeat this often; one missing for three periods is
    # dead, and what it left pending is taken over (store/liveness.py).
    heartbeat_ms: int = 1000


@dataclass(frozen=True)
class ScheduleSettings:
    """The scheduler and retention loops every sidecar runs."""

    tick_ms: int = 250  # how often the scheduler looks for due schedules
    batch: int = 100  # most schedules one tick takes on
    # A fire time found later than this was missed (no sidecar was up): the schedule's
    # catch-up policy decides whether it still fires.
    misfire_grace_s: float = 60.0
    retention_interval_s: float = 60.0  # how often finished instances past retention are purged
    retention_batch: int = 100  # instances purged per Redis call


@dataclass(frozen=True)
class TelemetrySettings:
    """Traces, metrics and logs; the standard OTEL_* variables set most of it.

    Exporters default to `none`: a sidecar started on a laptop sends nothing anywhere and pays
    nothing for tracing. `otlp_*_endpoint` left None means the exporter's own default.
    """

    service_name: str = "okra-sidecar"
    service_namespace: str = ""
    resource_attributes: tuple[tuple[str, str], ...] = ()
    traces_exporter: str = "none"
    metrics_exporter: str = "none"
    otlp_protocol: str = "grpc"
    otlp_traces_protocol: str | None = None
    otlp_metrics_protocol: str | None = None
    otlp_endpoint: str | None = None
    otlp_traces_endpoint: str | None = None
    otlp_metrics_endpoint: str | None = None
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    metric_export_interval_s: float = 60.0
    # The span batch processor (OTEL_BSP_*). The defaults favour throughput over the SDK's
    # (5000 ms, 2048, 512); None leaves the export timeout to the exporter (10 s).
    bsp_schedule_delay_ms: int = 1000
    bsp_max_queue_size: int = 16384
    bsp_max_export_batch_size: int = 2048
    bsp_export_timeout_ms: int | None = None
    admin_listen: str | None = None  # None: no Prometheus scrape endpoint
    gauge_interval_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "auto"

    @property
    def tracing(self) -> bool:
        return self.traces_exporter != "none"

    @property
    def metrics(self) -> bool:
        return self.metrics_exporter != "none" or self.admin_listen is not None


@dataclass(frozen=True)
class AuthSettings:
    """JWT bearer tokens: where the keys come from and what every token must say."""

    mode: str = "optional"  # required: no token -> UNAUTHENTICATED; optional: claims empty
    issuer: str | None = None
    audience: str | None = None
    hs256_secret: str | None = None
    public_key_file: Path | None = None  # PEM; RS256 or ES256 by the key's type
    jwks_file: Path | None = None
    # Keys from a URL, or from an OIDC issuer's discovery document (policy/jwks.py); the
    # issuer is also the `iss` tokens must carry unless `issuer` says otherwise.
    jwks_url: str | None = None
    oidc_issuer: str | None = None
    jwks_ca_file: Path | None = None  # CAs for those URLs; None: the system's
    jwks_refresh_s: float = 600.0  # keys older than this are fetched again
    jwks_min_interval_s: float = 30.0  # the least time between two fetches
    leeway_s: int = 30


@dataclass(frozen=True)
class PolicySettings:
    """CEL policy inputs beyond the policy file: `env` and the admin rpc's claim."""

    env_allow: tuple[str, ...] = ("DEPLOYMENT_ENV",)
    # The allow-listed variables' values, captured once by Settings.load.
    env: dict[str, str] = field(default_factory=dict)
    admin_claim: str = "okra_policy_admin"
    audit_max_length: int = 100_000
    watch_interval_s: float = 0.5  # how often the policy file is checked for changes


@dataclass(frozen=True)
class EffectSettings:
    """The executors of outside work: calls, child runs, worker tasks and the event router.

    `http_hosts` sends calls for a host elsewhere (host -> base URL; see executors/hosts.py).
    A worker task whose worker sends no heartbeat for `task_lease_ms` goes to another worker.
    """

    concurrency: int = 64
    call_timeout_s: float = 30.0
    # The longest a definition's call may ask for (its `timeout`); longer ones are cut to it.
    max_call_timeout_s: float = 300.0
    # The share of `concurrency` the calls of one workflow may hold at once.
    workflow_share: float = 0.5
    http_hosts: tuple[tuple[str, str], ...] = ()
    task_lease_ms: int = 30_000
    # Where workflows' HTTP, OpenAPI and gRPC calls may go (executors/outbound.py): host globs
    # and CIDRs. Link-local, cloud metadata and the sidecar's own Redis are always denied.
    outbound_allow: tuple[str, ...] = ()
    outbound_deny: tuple[str, ...] = ()
    # Folders `file://` proto files may be read from, besides the workflows folder.
    proto_paths: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    host: HostSettings = field(default_factory=HostSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    effects: EffectSettings = field(default_factory=EffectSettings)
    workflows_dir: Path | None = None
    policies_file: Path | None = None

    @classmethod
    def load(cls, *, flags: Mapping[str, str | None], environ: Mapping[str, str]) -> Settings:
        """Defaults, then the YAML config file, then OKRA_* variables, then flags."""
        values = read_sources(flags=flags, environ=environ)
        settings = build_settings(values)
        check_tls(settings.tls)
        # Policies see only allow-listed variables, read here and nowhere else.
        allowed = {name: environ[name] for name in settings.policy.env_allow if name in environ}
        return replace(settings, policy=replace(settings.policy, env=allowed))


def check_tls(tls: TlsSettings) -> None:
    """A certificate needs its key, and a client CA needs TLS to check clients with."""
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError(
            "tls: give both the certificate and its private key "
            "(--tls-cert and --tls-key, or OKRA_TLS_CERT_FILE and OKRA_TLS_KEY_FILE)"
        )
    if tls.client_ca_file is not None and tls.cert_file is None:
        raise ConfigError(
            "tls: a client CA (--tls-client-ca) needs the server's own certificate and key "
            "(--tls-cert and --tls-key)"
        )


def unbounded_engine(engine: EngineSettings) -> str | None:
    """Why budgets cannot hold with these engine settings, or None when they can.

    Only an engine child's parent can stop jq (it holds the GIL), so turns in the serving
    process (`engineProcesses: 0`) would let any definition freeze the sidecar whatever the
    budgets say; that is allowed only when the budgets are lifted on purpose.
    """
    if engine.processes > 0 or not (engine.expression_timeout_ms or engine.turn_timeout_ms):
        return None
    return (
        "engineProcesses: 0 takes turns in the serving process, where expressionTimeoutMs "
        f"({engine.expression_timeout_ms}) and turnTimeoutMs ({engine.turn_timeout_ms}) cannot "
        "be enforced: one definition's expression could freeze the sidecar. Set "
        "engineProcesses to 1 or more, or, to run only definitions you trust without "
        "budgets, set expressionTimeoutMs: 0 and turnTimeoutMs: 0"
    )


def build_settings(values: Mapping[str, tuple[object, str]]) -> Settings:
    sections: dict[str | None, dict[str, Any]] = {}
    for key, (raw, origin) in values.items():
        section, attribute, convert = SETTINGS[key]
        sections.setdefault(section, {})[attribute] = convert(raw, origin)
    settings = Settings(**sections.get(None, {}))
    for section in (f.name for f in fields(Settings)):
        if section in sections:
            current = getattr(settings, section)
            settings = replace(settings, **{section: replace(current, **sections[section])})
    telemetry = settings.telemetry
    if telemetry.bsp_max_export_batch_size > telemetry.bsp_max_queue_size:
        # As the SDK's batch processor: a batch larger than the queue could never fill.
        origin = values.get("bspMaxExportBatchSize", (None, "bspMaxExportBatchSize"))[1]
        raise ConfigError(
            f"{origin}: a batch of {telemetry.bsp_max_export_batch_size} spans exceeds the "
            f"queue of {telemetry.bsp_max_queue_size} (OTEL_BSP_MAX_QUEUE_SIZE); lower it"
        )
    unbounded = unbounded_engine(settings.engine)
    if unbounded is not None:
        raise ConfigError(unbounded)
    return settings
