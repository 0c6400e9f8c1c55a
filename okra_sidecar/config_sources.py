"""Where settings come from: each key's converter, OKRA_* variable and flag, the YAML file."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from okra_sidecar.store.urls import check_redis_url

DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")


ISO_DURATION_RE = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(ValueError):
    """A setting with a bad value; the message names where it came from."""


def parse_duration(value: object, *, name: str) -> float:
    """Seconds from `30`, `"30s"`, `"5m"`, `"2h"`, `"1d"`, `"250ms"` or ISO 8601 `"PT1H"`."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        plain, iso = DURATION_RE.match(text), ISO_DURATION_RE.match(text)
        if plain:
            seconds = float(plain.group(1)) * UNIT_SECONDS[plain.group(2)]
        elif iso and text not in ("P", "PT"):
            parts = {k: float(v) for k, v in iso.groupdict().items() if v}
            seconds = (
                parts.get("d", 0) * 86400
                + parts.get("h", 0) * 3600
                + parts.get("m", 0) * 60
                + parts.get("s", 0)
            )
        else:
            raise ConfigError(
                f"{name}: {text!r} is not a duration (use e.g. 30s, 5m, 2h, 1d or PT1H)"
            )
    if seconds <= 0:
        raise ConfigError(f"{name}: a duration must be positive, got {value!r}")
    return seconds


EXPORTERS = ("none", "otlp", "console")


OTLP_PROTOCOLS = ("grpc", "http/protobuf")


SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


# auto: text on a terminal, JSON lines otherwise (for a log collector).
LOG_FORMATS = ("auto", "json", "text")


REDIS_SCHEMES = ("redis", "rediss", "unix")


# Every setting by its dotted key: (section, attribute, converter).
def _bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _int(minimum: int) -> Any:
    def convert(value: object, name: str) -> int:
        try:
            number = int(str(value))
        except ValueError:
            raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
        if number < minimum:
            raise ConfigError(f"{name}: must be at least {minimum}, got {number}")
        return number

    return convert


def _str(value: object, name: str) -> str:
    return str(value)


def _redis_url(value: object, name: str) -> str:
    text = str(value).strip()
    scheme, sep, _ = text.partition("://")
    if not sep or scheme.lower() not in REDIS_SCHEMES:
        raise ConfigError(
            f"{name}: {text!r} is not a Redis URL; write redis://HOST:PORT/DB "
            "(rediss:// for TLS, unix:///path/to/redis.sock for a socket)"
        )
    try:
        check_redis_url(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return text


def _path(value: object, name: str) -> Path:
    return Path(str(value))


def _seconds(value: object, name: str) -> float:
    return parse_duration(value, name=name)


def _durability(value: object, name: str) -> str:
    if value not in ("memory", "aof", "replicas"):
        raise ConfigError(f"{name}: must be memory, aof or replicas, got {value!r}")
    return str(value)


def _choice(options: tuple[str, ...]) -> Any:
    def convert(value: object, name: str) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ConfigError(f"{name}: must be one of {', '.join(options)}, got {value!r}")
        return text

    return convert


def _metrics_exporter(value: object, name: str) -> str:
    # `prometheus` is the standard name for a pull exporter: here, the admin port's /metrics.
    return _choice((*EXPORTERS, "prometheus"))(value, name)  # type: ignore[no-any-return]


def _ratio(value: object, name: str) -> float:
    try:
        ratio = float(str(value))
    except ValueError:
        raise ConfigError(f"{name}: expected a number from 0 to 1, got {value!r}") from None
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"{name}: expected a number from 0 to 1, got {value!r}")
    return ratio


def _milliseconds(value: object, name: str) -> float:
    return _int(1)(value, name) / 1000  # type: ignore[no-any-return]


def _log_level(value: object, name: str) -> str:
    level = str(value).strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"{name}: must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
    return level


def _resource_attributes(value: object, name: str) -> tuple[tuple[str, str], ...]:
    """`key=value,key2=value2` (OTEL_RESOURCE_ATTRIBUTES; values may be percent-encoded)."""
    if isinstance(value, dict):
        return tuple((str(k), str(v)) for k, v in value.items())
    pairs = []
    for item in str(value).split(","):
        if not item.strip():
            continue
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{name}: expected key=value pairs separated by commas, got {item!r}")
        pairs.append((key.strip(), unquote(text.strip())))
    return tuple(pairs)


def _auth_mode(value: object, name: str) -> str:
    if value not in ("required", "optional"):
        raise ConfigError(f"{name}: must be required or optional, got {value!r}")
    return str(value)


def _names(value: object, name: str) -> tuple[str, ...]:
    """A list of names, from a YAML list or a comma-separated string."""
    items = value if isinstance(value, list) else str(value).split(",")
    names = tuple(str(item).strip() for item in items if str(item).strip())
    for item in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", item):
            raise ConfigError(f"{name}: {item!r} is not an environment variable name")
    return names


HOST_GLOB_RE = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9.*-]{0,252}$")


def check_outbound_pattern(pattern: str) -> str | None:
    """Why `pattern` is neither an address or CIDR nor a host glob, or None when it is one."""
    try:
        ipaddress.ip_network(pattern, strict=False)
        return None
    except ValueError:
        pass
    if HOST_GLOB_RE.match(pattern):
        return None
    return f"{pattern!r} is neither an address or CIDR (10.0.0.0/8) nor a host (*.example.com)"


def _outbound_patterns(value: object, name: str) -> tuple[str, ...]:
    """Host globs and CIDRs, from a YAML list or a comma-separated string."""
    items = value if isinstance(value, list) else str(value).split(",")
    patterns = tuple(str(item).strip() for item in items if str(item).strip())
    for pattern in patterns:
        problem = check_outbound_pattern(pattern)
        if problem:
            raise ConfigError(f"{name}: {problem}")
    return patterns


def _paths(value: object, name: str) -> tuple[Path, ...]:
    items = value if isinstance(value, list) else str(value).split(",")
    return tuple(Path(str(item).strip()) for item in items if str(item).strip())


def _http_hosts(value: object, name: str) -> tuple[tuple[str, str], ...]:
    """`host=target,...` or a YAML mapping; executors/hosts.py says what a target may be."""
    items = (
        [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else str(value).split(",")
    )
    pairs = []
    for item in items:
        host, sep, target = item.strip().partition("=")
        if not item.strip():
            continue
        if not sep or not host.strip() or not target.strip():
            raise ConfigError(
                f"{name}: expected host=target pairs separated by commas, got {item!r}"
            )
        pairs.append((host.strip().lower(), target.strip()))
    return tuple(pairs)


def _key_url(value: object, name: str) -> str:
    """An https:// URL of token keys; http:// only on loopback, where nothing can intercept."""
    text = str(value).strip()
    parts = urlsplit(text)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme == "https" and parts.hostname or parts.scheme == "http" and loopback:
        return text
    raise ConfigError(
        f"{name}: expected an https:// URL (http:// only on localhost), got {value!r}"
    )


def _listen(value: object, name: str) -> str:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")
    return str(value)


SETTINGS: dict[str, tuple[str | None, str, Any]] = {
    "listen": ("server", "listen", _listen),
    "graceSeconds": ("server", "grace_s", _seconds),
    "healthListen": ("server", "health_listen", _listen),
    "insecure": ("server", "insecure", _bool),
    "tlsCertFile": ("tls", "cert_file", _path),
    "tlsKeyFile": ("tls", "key_file", _path),
    "tlsClientCaFile": ("tls", "client_ca_file", _path),
    "redisWait": ("redis", "wait_s", _seconds),
    "redisUrl": ("redis", "url", _redis_url),
    "dataDir": ("redis", "data_dir", _path),
    "keyPrefix": ("redis", "key_prefix", _str),
    "partitions": ("redis", "partitions", _int(1)),
    "durability": ("redis", "durability", _durability),
    "engineConcurrency": ("engine", "concurrency", _int(1)),
    "engineProcesses": ("engine", "processes", _int(0)),
    "claimIdleMs": ("engine", "claim_idle_ms", _int(100)),
    "timerIntervalMs": ("engine", "timer_interval_ms", _int(1)),
    "readLingerMs": ("engine", "read_linger_ms", _int(0)),
    "maxStepsPerTurn": ("engine", "max_steps_per_turn", _int(1)),
    "maxDefinitionBytes": ("engine", "max_definition_bytes", _int(1)),
    "expressionTimeoutMs": ("engine", "expression_timeout_ms", _int(0)),
    "turnTimeoutMs": ("engine", "turn_timeout_ms", _int(0)),
    "engineMemoryMb": ("engine", "memory_mb", _int(0)),
    "turnCrashRetries": ("engine", "crash_retries", _int(0)),
    "slowExpressionMs": ("engine", "slow_expression_ms", _int(0)),
    "engineSpare": ("engine", "spare", _bool),
    "heartbeatMs": ("engine", "heartbeat_ms", _int(50)),
    "maxConcurrentInstances": ("host", "max_concurrent_instances", _int(0)),
    "maxInstanceDuration": ("host", "max_instance_duration_s", _seconds),
    "enableManualTriggers": ("host", "enable_manual_triggers", _bool),
    "retentionDays": ("host", "retention_days", _int(1)),
    "defaultTimeout": ("host", "default_timeout_s", _seconds),
    "maxInputBytes": ("host", "max_input_bytes", _int(1)),
    "maxInputDepth": ("host", "max_input_depth", _int(1)),
    "scheduleTickMs": ("schedule", "tick_ms", _int(10)),
    "scheduleMisfireGrace": ("schedule", "misfire_grace_s", _seconds),
    "retentionInterval": ("schedule", "retention_interval_s", _seconds),
    "serviceName": ("telemetry", "service_name", _str),
    "serviceNamespace": ("telemetry", "service_namespace", _str),
    "resourceAttributes": ("telemetry", "resource_attributes", _resource_attributes),
    "tracesExporter": ("telemetry", "traces_exporter", _choice(EXPORTERS)),
    "metricsExporter": ("telemetry", "metrics_exporter", _metrics_exporter),
    "otlpProtocol": ("telemetry", "otlp_protocol", _choice(OTLP_PROTOCOLS)),
    "otlpTracesProtocol": ("telemetry", "otlp_traces_protocol", _choice(OTLP_PROTOCOLS)),
    "otlpMetricsProtocol": ("telemetry", "otlp_metrics_protocol", _choice(OTLP_PROTOCOLS)),
    "otlpEndpoint": ("telemetry", "otlp_endpoint", _str),
    "otlpTracesEndpoint": ("telemetry", "otlp_traces_endpoint", _str),
    "otlpMetricsEndpoint": ("telemetry", "otlp_metrics_endpoint", _str),
    "tracesSampler": ("telemetry", "sampler", _choice(SAMPLERS)),
    "tracesSamplerArg": ("telemetry", "sampler_arg", _ratio),
    "metricExportIntervalMs": ("telemetry", "metric_export_interval_s", _milliseconds),
    "bspScheduleDelayMs": ("telemetry", "bsp_schedule_delay_ms", _int(1)),
    "bspMaxQueueSize": ("telemetry", "bsp_max_queue_size", _int(1)),
    "bspMaxExportBatchSize": ("telemetry", "bsp_max_export_batch_size", _int(1)),
    "bspExportTimeoutMs": ("telemetry", "bsp_export_timeout_ms", _int(1)),
    "adminListen": ("telemetry", "admin_listen", _listen),
    "gaugeInterval": ("telemetry", "gauge_interval_s", _seconds),
    "logLevel": ("telemetry", "log_level", _log_level),
    "logFormat": ("telemetry", "log_format", _choice(LOG_FORMATS)),
    "authMode": ("auth", "mode", _auth_mode),
    "authIssuer": ("auth", "issuer", _str),
    "authAudience": ("auth", "audience", _str),
    "authHs256Secret": ("auth", "hs256_secret", _str),
    "authPublicKeyFile": ("auth", "public_key_file", _path),
    "authJwksFile": ("auth", "jwks_file", _path),
    "authJwksUrl": ("auth", "jwks_url", _key_url),
    "authOidcIssuer": ("auth", "oidc_issuer", _key_url),
    "authJwksCaFile": ("auth", "jwks_ca_file", _path),
    "authJwksRefresh": ("auth", "jwks_refresh_s", _seconds),
    "authJwksMinInterval": ("auth", "jwks_min_interval_s", _seconds),
    "authLeewaySeconds": ("auth", "leeway_s", _int(0)),
    "policyEnv": ("policy", "env_allow", _names),
    "policyAdminClaim": ("policy", "admin_claim", _str),
    "auditMaxLength": ("policy", "audit_max_length", _int(1)),
    "policyWatchInterval": ("policy", "watch_interval_s", _seconds),
    "effectConcurrency": ("effects", "concurrency", _int(1)),
    "callTimeout": ("effects", "call_timeout_s", _seconds),
    "maxCallTimeout": ("effects", "max_call_timeout_s", _seconds),
    "effectWorkflowShare": ("effects", "workflow_share", _ratio),
    "httpHosts": ("effects", "http_hosts", _http_hosts),
    "taskLeaseMs": ("effects", "task_lease_ms", _int(100)),
    "maxCausedPerMinute": ("host", "max_caused_per_minute", _int(0)),
    "outboundAllow": ("effects", "outbound_allow", _outbound_patterns),
    "outboundDeny": ("effects", "outbound_deny", _outbound_patterns),
    "protoPaths": ("effects", "proto_paths", _paths),
    "workflows": (None, "workflows_dir", _path),
    "policies": (None, "policies_file", _path),
}


ENV_VARIABLES = {
    "OKRA_LISTEN": "listen",
    "OKRA_REDIS_URL": "redisUrl",
    "OKRA_REDIS_WAIT": "redisWait",
    "OKRA_HEALTH_LISTEN": "healthListen",
    "OKRA_INSECURE": "insecure",
    "OKRA_TLS_CERT_FILE": "tlsCertFile",
    "OKRA_TLS_KEY_FILE": "tlsKeyFile",
    "OKRA_TLS_CLIENT_CA_FILE": "tlsClientCaFile",
    "OKRA_DATA_DIR": "dataDir",
    "OKRA_KEY_PREFIX": "keyPrefix",
    "OKRA_PARTITIONS": "partitions",
    "OKRA_DURABILITY": "durability",
    "OKRA_ENGINE_CONCURRENCY": "engineConcurrency",
    "OKRA_ENGINE_PROCESSES": "engineProcesses",
    "OKRA_CLAIM_IDLE_MS": "claimIdleMs",
    "OKRA_READ_LINGER_MS": "readLingerMs",
    "OKRA_EXPRESSION_TIMEOUT_MS": "expressionTimeoutMs",
    "OKRA_TURN_TIMEOUT_MS": "turnTimeoutMs",
    "OKRA_SLOW_EXPRESSION_MS": "slowExpressionMs",
    "OKRA_ENGINE_MEMORY_MB": "engineMemoryMb",
    "OKRA_ENGINE_SPARE": "engineSpare",
    "OKRA_HEARTBEAT_MS": "heartbeatMs",
    "OKRA_MAX_CONCURRENT_INSTANCES": "maxConcurrentInstances",
    "OKRA_MAX_INPUT_BYTES": "maxInputBytes",
    "OKRA_MAX_INPUT_DEPTH": "maxInputDepth",
    "OKRA_MAX_DEFINITION_BYTES": "maxDefinitionBytes",
    "OKRA_ENABLE_MANUAL_TRIGGERS": "enableManualTriggers",
    "OKRA_MAX_INSTANCE_DURATION": "maxInstanceDuration",
    "OKRA_RETENTION_DAYS": "retentionDays",
    "OKRA_SCHEDULE_TICK_MS": "scheduleTickMs",
    "OKRA_SCHEDULE_MISFIRE_GRACE": "scheduleMisfireGrace",
    "OKRA_RETENTION_INTERVAL": "retentionInterval",
    "OKRA_WORKFLOWS": "workflows",
    "OKRA_POLICIES": "policies",
    # The standard OpenTelemetry variables, by their specified names.
    "OTEL_SERVICE_NAME": "serviceName",
    "OTEL_RESOURCE_ATTRIBUTES": "resourceAttributes",
    "OTEL_TRACES_EXPORTER": "tracesExporter",
    "OTEL_METRICS_EXPORTER": "metricsExporter",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "otlpProtocol",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "otlpTracesProtocol",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "otlpMetricsProtocol",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "otlpEndpoint",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "otlpTracesEndpoint",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "otlpMetricsEndpoint",
    "OTEL_TRACES_SAMPLER": "tracesSampler",
    "OTEL_TRACES_SAMPLER_ARG": "tracesSamplerArg",
    "OTEL_METRIC_EXPORT_INTERVAL": "metricExportIntervalMs",
    "OTEL_BSP_SCHEDULE_DELAY": "bspScheduleDelayMs",
    "OTEL_BSP_MAX_QUEUE_SIZE": "bspMaxQueueSize",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "bspMaxExportBatchSize",
    "OTEL_BSP_EXPORT_TIMEOUT": "bspExportTimeoutMs",
    "OKRA_SERVICE_NAMESPACE": "serviceNamespace",
    "OKRA_SERVICE_NAME": "serviceName",
    "OKRA_AUTH_MODE": "authMode",
    "OKRA_AUTH_ISSUER": "authIssuer",
    "OKRA_AUTH_AUDIENCE": "authAudience",
    "OKRA_AUTH_HS256_SECRET": "authHs256Secret",
    "OKRA_AUTH_PUBLIC_KEY_FILE": "authPublicKeyFile",
    "OKRA_AUTH_JWKS_FILE": "authJwksFile",
    "OKRA_AUTH_JWKS_URL": "authJwksUrl",
    "OKRA_AUTH_OIDC_ISSUER": "authOidcIssuer",
    "OKRA_AUTH_JWKS_CA_FILE": "authJwksCaFile",
    "OKRA_POLICY_ENV": "policyEnv",
    "OKRA_POLICY_ADMIN_CLAIM": "policyAdminClaim",
    "OKRA_AUDIT_MAX_LENGTH": "auditMaxLength",
    "OKRA_ADMIN_LISTEN": "adminListen",
    "OKRA_GAUGE_INTERVAL": "gaugeInterval",
    "OKRA_LOG_LEVEL": "logLevel",
    "OKRA_LOG_FORMAT": "logFormat",
    "OKRA_EFFECT_CONCURRENCY": "effectConcurrency",
    "OKRA_CALL_TIMEOUT": "callTimeout",
    "OKRA_MAX_CALL_TIMEOUT": "maxCallTimeout",
    "OKRA_EFFECT_WORKFLOW_SHARE": "effectWorkflowShare",
    "OKRA_HTTP_HOSTS": "httpHosts",
    "OKRA_TASK_LEASE_MS": "taskLeaseMs",
    "OKRA_MAX_CAUSED_PER_MINUTE": "maxCausedPerMinute",
    "OKRA_OUTBOUND_ALLOW": "outboundAllow",
    "OKRA_OUTBOUND_DENY": "outboundDeny",
    "OKRA_PROTO_PATHS": "protoPaths",
}


FLAG_KEYS = {
    "listen": "listen",
    "redis_url": "redisUrl",
    "redis_wait": "redisWait",
    "health_listen": "healthListen",
    "tls_cert": "tlsCertFile",
    "tls_key": "tlsKeyFile",
    "tls_client_ca": "tlsClientCaFile",
    "workflows": "workflows",
    "policies": "policies",
    "data_dir": "dataDir",
    "admin_listen": "adminListen",
    "log_level": "logLevel",
    "log_format": "logFormat",
}


def read_config_file(path: Path) -> dict[str, tuple[object, str]]:
    """Settings from a YAML file: top-level keys, and the host API's under `workflowHostAPI`."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    flat = dict(document)
    host = flat.pop("workflowHostAPI", None) or {}
    if not isinstance(host, dict):
        raise ConfigError(f"config file {path}: workflowHostAPI must be a mapping")
    flat.update(host)
    # `tls: {certFile, keyFile, clientCaFile}` is the nested spelling of tlsCertFile, ...
    tls = flat.pop("tls", None) or {}
    if not isinstance(tls, dict):
        raise ConfigError(f"config file {path}: tls must be a mapping (certFile, keyFile, ...)")
    flat.update({f"tls{key[:1].upper()}{key[1:]}": value for key, value in tls.items()})
    unknown = sorted(set(flat) - set(SETTINGS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting {unknown[0]!r} "
            f"(known: {', '.join(sorted(SETTINGS))})"
        )
    return {key: (value, f"{path}: {key}") for key, value in flat.items()}


def read_sources(
    *, flags: Mapping[str, str | None], environ: Mapping[str, str]
) -> dict[str, tuple[object, str]]:
    """Each key's raw value and where it came from: the YAML config file, then OKRA_*
    variables, then flags, each overriding the one before."""
    config_path = flags.get("config") or environ.get("OKRA_CONFIG")
    values: dict[str, Any] = {}
    if config_path:
        values.update(read_config_file(Path(config_path)))
    for var, key in ENV_VARIABLES.items():
        if var in environ and environ[var] != "":
            values[key] = (environ[var], var)
    if _bool(environ.get("OTEL_SDK_DISABLED", "false"), "OTEL_SDK_DISABLED"):
        for key in ("tracesExporter", "metricsExporter"):
            values[key] = ("none", "OTEL_SDK_DISABLED")
    for flag, key in FLAG_KEYS.items():
        if flags.get(flag):
            values[key] = (flags[flag], f"--{flag.replace('_', '-')}")
    return values
