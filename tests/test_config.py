"""Settings from defaults, a YAML file, OKRA_* variables and flags, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from okra_sidecar.config import Settings
from okra_sidecar.config_sources import ConfigError, parse_duration


def test_defaults() -> None:
    settings = Settings.load(flags={}, environ={})
    assert settings.server.listen == "127.0.0.1:50051"
    assert settings.redis.url is None
    assert settings.host.max_input_bytes == 1024 * 1024
    assert settings.host.enable_manual_triggers is True


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "okra.yaml"
    config.write_text(
        "listen: 0.0.0.0:6000\n"
        "redisUrl: redis://file:6379/0\n"
        "workflowHostAPI:\n"
        "  maxConcurrentInstances: 50\n"
        "  maxInstanceDuration: 2h\n"
        "  enableManualTriggers: false\n"
        "  retentionDays: 7\n"
        "  defaultTimeout: PT30S\n"
    )
    settings = Settings.load(
        flags={"config": str(config), "listen": "127.0.0.1:7000"},
        environ={"OKRA_REDIS_URL": "redis://env:6379/0", "OKRA_LISTEN": "127.0.0.1:6500"},
    )
    assert settings.server.listen == "127.0.0.1:7000"
    assert settings.redis.url == "redis://env:6379/0"
    host = settings.host
    assert host.max_concurrent_instances == 50
    assert host.max_instance_duration_s == 7200
    assert host.enable_manual_triggers is False
    assert host.retention_days == 7
    assert host.default_timeout_s == 30


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "okra.yaml"
    config.write_text("workflows: flows\n")
    settings = Settings.load(flags={}, environ={"OKRA_CONFIG": str(config)})
    assert settings.workflows_dir == Path("flows")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OKRA_MAX_CONCURRENT_INSTANCES": "many"}, "OKRA_MAX_CONCURRENT_INSTANCES: expected a"),
        ({"OKRA_LISTEN": "50051"}, "OKRA_LISTEN: expected HOST:PORT"),
        ({"OKRA_DURABILITY": "disk"}, "OKRA_DURABILITY: must be memory, aof or replicas"),
        ({"OKRA_ENABLE_MANUAL_TRIGGERS": "maybe"}, "OKRA_ENABLE_MANUAL_TRIGGERS: expected true"),
        ({"OKRA_PARTITIONS": "0"}, "OKRA_PARTITIONS: must be at least 1"),
    ],
)
def test_bad_variable_is_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(flags={}, environ=environ)


def test_bad_config_file(tmp_path: Path) -> None:
    config = tmp_path / "okra.yaml"
    config.write_text("workflowHostAPI:\n  maxConcurrentInstance: 5\n")
    with pytest.raises(ConfigError, match="unknown setting 'maxConcurrentInstance'"):
        Settings.load(flags={"config": str(config)}, environ={})
    with pytest.raises(ConfigError, match="No such file"):
        Settings.load(flags={"config": str(tmp_path / "missing.yaml")}, environ={})
    config.write_text("listen: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Settings.load(flags={"config": str(config)}, environ={})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        ("250ms", 0.25),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("P1DT1S", 86401.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, name="x") == seconds


@pytest.mark.parametrize("text", ["soon", "P", "-5s", 0, True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ConfigError, match="x:"):
        parse_duration(text, name="x")


def test_auth_and_policy_settings(tmp_path: Path) -> None:
    config = tmp_path / "okra.yaml"
    config.write_text(
        "serviceName: orders\n"
        "authMode: required\n"
        "authIssuer: https://issuer.example\n"
        "policyEnv: [DEPLOYMENT_ENV, REGION]\n"
    )
    settings = Settings.load(
        flags={"config": str(config)},
        environ={
            "OKRA_SERVICE_NAMESPACE": "app",
            "OKRA_AUTH_AUDIENCE": "okra",
            "DEPLOYMENT_ENV": "production",
            "HOME": "/home/someone",
        },
    )
    assert (settings.telemetry.service_name, settings.telemetry.service_namespace) == (
        "orders",
        "app",
    )
    assert settings.auth.mode == "required"
    assert (settings.auth.issuer, settings.auth.audience) == ("https://issuer.example", "okra")
    # Policies see allow-listed variables only, and only those that are set.
    assert settings.policy.env == {"DEPLOYMENT_ENV": "production"}
    assert Settings.load(flags={}, environ={"OKRA_SERVICE_NAME": "svc"}).telemetry.service_name == (
        "svc"
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OKRA_AUTH_MODE": "maybe"}, "OKRA_AUTH_MODE: must be required or optional"),
        ({"OKRA_POLICY_ENV": "A,B-C"}, "OKRA_POLICY_ENV: 'B-C' is not an environment variable"),
    ],
)
def test_bad_auth_or_policy_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(flags={}, environ=environ)


def test_tls_probe_and_exposure_settings(tmp_path: Path) -> None:
    config = tmp_path / "okra.yaml"
    config.write_text(
        "tls:\n  certFile: /tls/tls.crt\n  keyFile: /tls/tls.key\n"
        "insecure: true\nhealthListen: 0.0.0.0:50052\nredisWait: 30s\n"
    )
    settings = Settings.load(flags={"config": str(config)}, environ={})
    assert settings.tls.cert_file == Path("/tls/tls.crt")
    assert settings.tls.key_file == Path("/tls/tls.key")
    assert settings.tls.enabled and not settings.tls.mutual
    assert settings.server.insecure is True
    assert settings.server.health_listen == "0.0.0.0:50052"
    assert settings.redis.wait_s == 30
    settings = Settings.load(
        flags={"tls_client_ca": "/ca/flag.crt", "redis_wait": "5s"},
        environ={
            "OKRA_TLS_CERT_FILE": "/env/tls.crt",
            "OKRA_TLS_KEY_FILE": "/env/tls.key",
            "OKRA_TLS_CLIENT_CA_FILE": "/env/ca.crt",
            "OKRA_HEALTH_LISTEN": "127.0.0.1:9",
            "OKRA_INSECURE": "false",
            "OKRA_REDIS_WAIT": "1m",
        },
    )
    assert settings.tls.cert_file == Path("/env/tls.crt")
    assert settings.tls.client_ca_file == Path("/ca/flag.crt") and settings.tls.mutual
    assert settings.redis.wait_s == 5
    assert Settings.load(flags={}, environ={}).redis.wait_s is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OKRA_TLS_CERT_FILE": "/tls.crt"}, "give both the certificate and its private key"),
        ({"OKRA_TLS_KEY_FILE": "/tls.key"}, "give both the certificate and its private key"),
        ({"OKRA_TLS_CLIENT_CA_FILE": "/ca.crt"}, "needs the server's own certificate"),
        ({"OKRA_REDIS_WAIT": "soon"}, "OKRA_REDIS_WAIT: 'soon' is not a duration"),
        ({"OKRA_INSECURE": "perhaps"}, "OKRA_INSECURE: expected true or false"),
    ],
)
def test_bad_tls_or_probe_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(flags={}, environ=environ)


def test_tls_in_the_file_must_be_a_mapping(tmp_path: Path) -> None:
    config = tmp_path / "okra.yaml"
    config.write_text("tls: /tls.crt\n")
    with pytest.raises(ConfigError, match="tls must be a mapping"):
        Settings.load(flags={"config": str(config)}, environ={})
    config.write_text("tls:\n  certfile: /tls.crt\n")
    with pytest.raises(ConfigError, match="unknown setting 'tlsCertfile'"):
        Settings.load(flags={"config": str(config)}, environ={})


def test_span_batching_variables() -> None:
    telemetry = Settings.load(
        flags={},
        environ={
            "OTEL_BSP_SCHEDULE_DELAY": "250",
            "OTEL_BSP_MAX_QUEUE_SIZE": "100",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10",
            "OTEL_BSP_EXPORT_TIMEOUT": "3000",
        },
    ).telemetry
    assert (
        telemetry.bsp_schedule_delay_ms,
        telemetry.bsp_max_queue_size,
        telemetry.bsp_max_export_batch_size,
        telemetry.bsp_export_timeout_ms,
    ) == (250, 100, 10, 3000)
    with pytest.raises(ConfigError, match="OTEL_BSP_MAX_EXPORT_BATCH_SIZE: a batch of 20000"):
        Settings.load(flags={}, environ={"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "20000"})
    with pytest.raises(ConfigError, match="OTEL_BSP_SCHEDULE_DELAY: must be at least 1"):
        Settings.load(flags={}, environ={"OTEL_BSP_SCHEDULE_DELAY": "0"})


def test_in_process_turns_need_the_budgets_lifted_on_purpose() -> None:
    with pytest.raises(ConfigError, match="engineProcesses: 0 takes turns in the serving") as err:
        Settings.load(flags={}, environ={"OKRA_ENGINE_PROCESSES": "0"})
    assert "expressionTimeoutMs (1000) and turnTimeoutMs (10000)" in str(err.value)
    with pytest.raises(ConfigError, match="set expressionTimeoutMs: 0 and turnTimeoutMs: 0"):
        Settings.load(
            flags={}, environ={"OKRA_ENGINE_PROCESSES": "0", "OKRA_EXPRESSION_TIMEOUT_MS": "0"}
        )
    lifted = {
        "OKRA_ENGINE_PROCESSES": "0",
        "OKRA_EXPRESSION_TIMEOUT_MS": "0",
        "OKRA_TURN_TIMEOUT_MS": "0",
    }
    assert Settings.load(flags={}, environ=lifted).engine.processes == 0
    budgeted = Settings.load(flags={}, environ={"OKRA_ENGINE_PROCESSES": "1"}).engine
    assert budgeted.expression_timeout_ms == 1000
