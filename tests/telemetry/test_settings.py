"""TelemetrySettings from OTEL_* and OKRA_* variables, the config file and flags, and the
resource and exporters they make."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from okra_sidecar.config import Settings, TelemetrySettings
from okra_sidecar.config_sources import ConfigError
from okra_sidecar.telemetry import Telemetry
from okra_sidecar.telemetry.providers import build_resource, scrape_listen
from okra_sidecar.telemetry.tracing import build_sampler, build_span_exporter


def test_defaults_send_nothing_and_cost_nothing() -> None:
    settings = Settings.load(flags={}, environ={}).telemetry
    assert settings == TelemetrySettings()
    assert (settings.traces_exporter, settings.metrics_exporter) == ("none", "none")
    assert settings.admin_listen is None and settings.log_format == "auto"
    telemetry = Telemetry.create(settings, instance_id="x")
    assert telemetry.tracer is None and telemetry.meter_provider is None
    assert not telemetry.active


def test_standard_variables_are_honoured() -> None:
    settings = Settings.load(
        flags={},
        environ={
            "OTEL_SERVICE_NAME": "orders-sidecar",
            "OTEL_RESOURCE_ATTRIBUTES": "service.namespace=shop,team=a%20b,deployment=prod",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_METRIC_EXPORT_INTERVAL": "15000",
            "OKRA_LOG_LEVEL": "debug",
            "OKRA_LOG_FORMAT": "text",
        },
    ).telemetry
    assert settings.service_name == "orders-sidecar"
    assert dict(settings.resource_attributes)["team"] == "a b"
    assert settings.traces_exporter == "otlp" and settings.otlp_protocol == "http/protobuf"
    assert settings.sampler_arg == 0.25 and settings.metric_export_interval_s == 15.0
    assert (settings.log_level, settings.log_format) == ("DEBUG", "text")
    assert scrape_listen(settings) == "127.0.0.1:9464"
    assert "0.25" in build_sampler(settings).get_description()
    exporter = build_span_exporter(settings)
    assert isinstance(exporter, HttpSpanExporter)
    assert exporter._endpoint == "http://collector:4318/v1/traces"
    resource = build_resource(settings, instance_id="host-1").attributes
    assert resource["service.name"] == "orders-sidecar"
    assert resource["service.namespace"] == "shop"
    assert resource["service.instance.id"] == "host-1"
    assert resource["telemetry.sdk.language"] == "python"


def test_okra_settings_win_and_flags_win_over_them(tmp_path: Path) -> None:
    config = tmp_path / "okra.yaml"
    config.write_text(
        "tracesExporter: console\nadminListen: 0.0.0.0:9000\n"
        "resourceAttributes: {service.name: from-file, region: eu}\n"
    )
    settings = Settings.load(
        flags={"config": str(config), "admin_listen": "127.0.0.1:9100", "log_level": "error"},
        environ={"OKRA_ADMIN_LISTEN": "127.0.0.1:9200"},
    ).telemetry
    assert settings.admin_listen == "127.0.0.1:9100" and settings.log_level == "ERROR"
    assert isinstance(build_span_exporter(settings), ConsoleSpanExporter)
    # A service.name among the resource attributes counts when OTEL_SERVICE_NAME is unset.
    assert build_resource(settings, instance_id="i").attributes["service.name"] == "from-file"


def test_otel_sdk_disabled_turns_every_exporter_off() -> None:
    settings = Settings.load(
        flags={},
        environ={
            "OTEL_SDK_DISABLED": "true",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
        },
    ).telemetry
    assert (settings.traces_exporter, settings.metrics_exporter) == ("none", "none")


def test_grpc_endpoint_per_signal() -> None:
    settings = TelemetrySettings(
        traces_exporter="otlp",
        otlp_endpoint="http://general:4317",
        otlp_traces_endpoint="http://traces:4317",
    )
    exporter = build_span_exporter(settings)
    assert isinstance(exporter, GrpcSpanExporter)
    exporter.shutdown()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: must be one of none, otlp"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL: must be"),
        ({"OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG: expected a number from 0"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER: must be one of"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "OTEL_RESOURCE_ATTRIBUTES: expected key=value"),
        ({"OKRA_ADMIN_LISTEN": "9464"}, "OKRA_ADMIN_LISTEN: expected HOST:PORT"),
        ({"OKRA_LOG_LEVEL": "loud"}, "OKRA_LOG_LEVEL: must be DEBUG"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "0"}, "OTEL_METRIC_EXPORT_INTERVAL: must be at least 1"),
        ({"OTEL_SDK_DISABLED": "perhaps"}, "OTEL_SDK_DISABLED: expected true or false"),
    ],
)
def test_bad_values_name_their_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(flags={}, environ=environ)
