"""Settings from defaults, a YAML file, OKRA_* variables and flags, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from okra_sidecar.config import ConfigError, Settings, parse_duration


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
