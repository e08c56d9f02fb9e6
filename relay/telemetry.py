"""The relay's metrics pushed with OpenTelemetry: the same Prometheus registry `/metrics` serves, read
at each export and sent over OTLP (the `otel` extra: `pip install 'secure-export[otel]'`).

On when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set, as the Container Apps
environment's managed OpenTelemetry agent does for its apps; off otherwise. Each metric is defined once,
in the Prometheus registry; this module only translates. Counters become OpenTelemetry cumulative
counters, gauges gauges, and a histogram its `_count` and `_sum` counters (OpenTelemetry has no
asynchronous histogram to observe a Prometheus one through).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

log = logging.getLogger("relay.telemetry")

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
METRICS_ENDPOINT = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
METRICS_PROTOCOL = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
INTERVAL = "OTEL_METRIC_EXPORT_INTERVAL"  # milliseconds, as the OpenTelemetry specification has it
SERVICE_NAME = "OTEL_SERVICE_NAME"
# The OpenTelemetry specification's defaults.
DEFAULT_PROTOCOL = "http/protobuf"
DEFAULT_INTERVAL_MS = 60000
DEFAULT_SERVICE_NAME = "secure-export-relay"
PROTOCOLS = ("http/protobuf", "grpc")
EXTRA_HINT = "install the relay with its otel extra: pip install 'secure-export[otel]'"


class TelemetryError(ValueError):
    """An OTEL_* variable the relay cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class ExportSettings:
    endpoint: str  # the full metrics URL (http/protobuf) or the gRPC target
    protocol: str
    interval_ms: int
    service_name: str


def export_settings(env: Mapping[str, str]) -> ExportSettings | None:
    """What to export to, from the standard OTEL_* variables; None when no endpoint is set."""
    protocol = env.get(METRICS_PROTOCOL) or env.get(PROTOCOL) or DEFAULT_PROTOCOL
    if protocol not in PROTOCOLS:
        name = METRICS_PROTOCOL if env.get(METRICS_PROTOCOL) else PROTOCOL
        raise TelemetryError(f"{name}={protocol!r} is not supported; use one of {', '.join(PROTOCOLS)}")
    if env.get(METRICS_ENDPOINT):
        name, endpoint = METRICS_ENDPOINT, env[METRICS_ENDPOINT]  # used as given
    elif env.get(ENDPOINT):
        name, base = ENDPOINT, env[ENDPOINT]
        # For OTLP/HTTP the base gets the signal's path; a gRPC target is used as given.
        endpoint = base.rstrip("/") + "/v1/metrics" if protocol == "http/protobuf" else base
    else:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TelemetryError(f"{name}={endpoint!r} is not an http:// or https:// URL")
    raw_interval = env.get(INTERVAL) or str(DEFAULT_INTERVAL_MS)
    try:
        interval_ms = int(raw_interval)
    except ValueError:
        raise TelemetryError(f"{INTERVAL}={raw_interval!r} is not a whole number of milliseconds") from None
    if interval_ms < 1000:
        raise TelemetryError(f"{INTERVAL}={interval_ms} is under 1000 ms; the relay exports at most once a second")
    return ExportSettings(endpoint=endpoint, protocol=protocol, interval_ms=interval_ms,
                          service_name=env.get(SERVICE_NAME) or DEFAULT_SERVICE_NAME)


class MetricsExport:
    """A running OTLP export of `registry`. `flush` sends now; `stop` sends a last time and ends."""

    def __init__(self, registry: CollectorRegistry, settings: ExportSettings, *, instance: str = "") -> None:
        try:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.resources import Resource
        except ImportError as exc:
            raise TelemetryError(f"{ENDPOINT} is set but OpenTelemetry is not installed ({exc.name}): "
                                 f"{EXTRA_HINT}; or unset the variable") from None
        self.settings = settings
        self._registry = registry
        reader = PeriodicExportingMetricReader(_exporter(settings), export_interval_millis=settings.interval_ms)
        attributes = {"service.name": settings.service_name}
        if instance:
            attributes["service.instance.id"] = instance
        self._provider = MeterProvider(resource=Resource.create(attributes), metric_readers=[reader])
        meter = self._provider.get_meter("relay")
        for family in registry.collect():
            _observe(meter, family.name, family.type, family.documentation, self._samples)

    def _samples(self, family: str) -> list[tuple[str, Mapping[str, str], float]]:
        for metric in self._registry.collect():
            if metric.name == family:
                return [(s.name, s.labels, s.value) for s in metric.samples]
        return []

    def flush(self, timeout_ms: int = 10000) -> bool:
        return self._provider.force_flush(timeout_millis=timeout_ms)

    def stop(self) -> None:
        self._provider.shutdown()


def _exporter(settings: ExportSettings) -> Any:
    try:
        if settings.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

            return Grpc(endpoint=settings.endpoint, insecure=settings.endpoint.startswith("http://"))
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

        return Http(endpoint=settings.endpoint)
    except ImportError as exc:
        raise TelemetryError(f"OTLP over {settings.protocol} needs {exc.name}: {EXTRA_HINT}") from None


def _observe(meter: Any, family: str, kind: str, help_text: str,
             samples: Callable[[str], list[tuple[str, Mapping[str, str], float]]]) -> None:
    """One asynchronous instrument per Prometheus series suffix of `family`."""
    from opentelemetry.metrics import Observation

    def callback(suffix: str) -> Callable[[Any], Iterable[Observation]]:
        def observe(options: Any) -> Iterable[Observation]:
            wanted = family + suffix
            return [Observation(value, dict(labels)) for name, labels, value in samples(family) if name == wanted]

        return observe

    if kind == "counter":
        meter.create_observable_counter(family, [callback("_total")], description=help_text)
    elif kind == "gauge":
        meter.create_observable_gauge(family, [callback("")], description=help_text)
    elif kind == "histogram":
        meter.create_observable_counter(family + "_count", [callback("_count")], description=help_text)
        meter.create_observable_counter(family + "_sum", [callback("_sum")], description=help_text)
    # Other kinds (summary, info, enum) are not used by the relay.
