"""Telemetry: the tracer and meter providers of one sidecar, built from TelemetrySettings.

Providers are per sidecar, never the global ones, so two sidecars in one process (tests) keep
their own resource and exporters. With every exporter `none` there is no provider at all:
the rpc interceptor is not installed and the engine makes no spans.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.sdk.version import __version__ as sdk_version
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from okra_sidecar import __version__
from okra_sidecar.config import TelemetrySettings
from okra_sidecar.telemetry.metrics import METER_NAME, SidecarMetrics
from okra_sidecar.telemetry.spans import LiteTracer, SpanSink
from okra_sidecar.telemetry.tracing import TRACER_NAME, build_sampler, build_tracer_provider
from okra_sidecar.telemetry.turns import TurnTracer

DEFAULT_SERVICE_NAME = "okra-sidecar"
PROMETHEUS_DEFAULT_LISTEN = "127.0.0.1:9464"


def build_resource(settings: TelemetrySettings, *, instance_id: str) -> Resource:
    """service.* and telemetry.sdk.* attributes, with OTEL_RESOURCE_ATTRIBUTES merged in.

    OTEL_SERVICE_NAME wins over a `service.name` in the attributes, as the spec says.
    """
    given = dict(settings.resource_attributes)
    attributes: dict[str, str] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version,
        **given,
        "service.name": (
            settings.service_name
            if settings.service_name != DEFAULT_SERVICE_NAME
            else given.get("service.name", DEFAULT_SERVICE_NAME)
        ),
        "service.version": __version__,
        "service.instance.id": given.get("service.instance.id", instance_id),
    }
    namespace = settings.service_namespace or given.get("service.namespace", "")
    if namespace:
        attributes["service.namespace"] = namespace
    return Resource(attributes)


def scrape_listen(settings: TelemetrySettings) -> str | None:
    """Where /metrics is served, if anywhere: the admin port, or Prometheus' usual one."""
    if settings.admin_listen:
        return settings.admin_listen
    return PROMETHEUS_DEFAULT_LISTEN if settings.metrics_exporter == "prometheus" else None


def build_metric_exporter(settings: TelemetrySettings) -> MetricExporter | None:
    if settings.metrics_exporter == "console":
        return ConsoleMetricExporter(out=sys.stdout)
    if settings.metrics_exporter != "otlp":
        return None
    protocol = settings.otlp_metrics_protocol or settings.otlp_protocol
    endpoint = settings.otlp_metrics_endpoint
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter(endpoint=endpoint or settings.otlp_endpoint)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    if endpoint is None and settings.otlp_endpoint:
        endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/metrics"
    return HttpMetricExporter(endpoint=endpoint)


@dataclass
class Telemetry:
    """What the sidecar's parts use: a tracer (None when tracing is off) and the metrics."""

    tracer: Tracer | None = None
    metrics: SidecarMetrics = field(default_factory=SidecarMetrics)
    tracer_provider: TracerProvider | None = None
    span_processor: SpanProcessor | None = None  # feeds every processor of the provider
    meter_provider: MeterProvider | None = None
    registry: CollectorRegistry | None = None  # for the Prometheus scrape endpoint
    # True when an rpc interceptor is worth installing (spans or rpc metrics are wanted).
    active: bool = False

    @property
    def turns(self) -> TurnTracer:
        sink = self.tracer.sink if isinstance(self.tracer, LiteTracer) else None
        return TurnTracer(tracer=self.tracer, metrics=self.metrics, sink=sink)

    @classmethod
    def create(
        cls,
        settings: TelemetrySettings,
        *,
        instance_id: str,
        span_processors: Sequence[SpanProcessor] = (),
        metric_readers: Sequence[MetricReader] = (),
    ) -> Telemetry:
        """Providers for `settings`, plus extra processors and readers (tests use in-memory
        ones); a Telemetry that does nothing when no exporter is configured."""
        resource = build_resource(settings, instance_id=instance_id)
        built = build_tracer_provider(settings, resource, processors=tuple(span_processors))
        tracer_provider, span_processor = built if built is not None else (None, None)
        readers = list(metric_readers)
        exporter = build_metric_exporter(settings)
        if exporter is not None:
            readers.append(
                PeriodicExportingMetricReader(
                    exporter, export_interval_millis=settings.metric_export_interval_s * 1000
                )
            )
        registry = None
        if scrape_listen(settings) is not None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            registry = CollectorRegistry(auto_describe=True)
            readers.append(PrometheusMetricReader(registry=registry))
        meter_provider = (
            MeterProvider(resource=resource, metric_readers=readers) if readers else None
        )
        tracer = None
        if tracer_provider is not None and span_processor is not None:
            # Our spans go straight to the provider's processors (see telemetry/spans.py).
            tracer = LiteTracer(
                sampler=build_sampler(settings),
                sink=SpanSink(
                    emit=span_processor.on_end,
                    resource=resource,
                    scope=InstrumentationScope(TRACER_NAME, __version__),
                ),
            )
        metrics = SidecarMetrics(
            meter_provider.get_meter(METER_NAME, __version__) if meter_provider else None
        )
        return cls(
            tracer=tracer,
            metrics=metrics,
            tracer_provider=tracer_provider,
            span_processor=span_processor,
            meter_provider=meter_provider,
            registry=registry,
            active=tracer is not None or meter_provider is not None,
        )

    def shutdown(self) -> None:
        """Flush what is buffered and stop the exporters."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


__all__ = ["Telemetry", "build_resource", "scrape_listen"]
