"""The relay's OpenTelemetry export (the `otel` extra: `pip install 'secure-export[otel]'`): its metrics and
its traces, each sent over OTLP when its endpoint is set.

Metrics: on when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set, as the Container
Apps environment's managed OpenTelemetry agent does for its apps; off otherwise. Each metric is defined once,
in the Prometheus registry `/metrics` serves; this module only translates, reading the registry at each
export. Counters become OpenTelemetry cumulative counters, gauges gauges, and a histogram its `_count` and
`_sum` counters (OpenTelemetry has no asynchronous histogram to observe a Prometheus one through).

Traces: on when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set. `Tracing` makes
the few spans the relay has (intake's server span, delivery's span per claimed event and a client span per
target call) and turns a span into the W3C `traceparent` the store keeps with the event, so the delivery,
whichever replica runs it and however much later, joins the trace intake began. Off, nothing is built:
intake and delivery hold None and make no span, and the SDK is never imported.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

log = logging.getLogger("relay.telemetry")

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
METRICS_ENDPOINT = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
METRICS_PROTOCOL = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
INTERVAL = "OTEL_METRIC_EXPORT_INTERVAL"  # milliseconds, as the OpenTelemetry specification has it
SERVICE_NAME = "OTEL_SERVICE_NAME"
# The OpenTelemetry specification's defaults.
DEFAULT_PROTOCOL = "http/protobuf"
DEFAULT_INTERVAL_MS = 60000
DEFAULT_SERVICE_NAME = "secure-export-relay"
PROTOCOLS = ("http/protobuf", "grpc")
EXTRA_HINT = "install the relay with its otel extra: pip install 'secure-export[otel]'"
# Each signal's path under a base OTEL_EXPORTER_OTLP_ENDPOINT (OTLP/HTTP), and its exporter class.
_SIGNALS = {"metrics": ("/v1/metrics", "metric_exporter", "OTLPMetricExporter"),
            "traces": ("/v1/traces", "trace_exporter", "OTLPSpanExporter")}


class TelemetryError(ValueError):
    """An OTEL_* variable the relay cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class ExportSettings:
    endpoint: str  # the full metrics URL (http/protobuf) or the gRPC target
    protocol: str
    interval_ms: int
    service_name: str


@dataclass(frozen=True, slots=True)
class TraceSettings:
    endpoint: str  # the full traces URL (http/protobuf) or the gRPC target
    protocol: str
    service_name: str


def _signal_target(env: Mapping[str, str], signal: str) -> tuple[str, str] | None:
    """(endpoint, protocol) of one signal ("metrics" or "traces") from the standard OTEL_* variables, None
    when no endpoint is set: the signal's own endpoint as given, else the base one with the signal's path."""
    own_endpoint = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    own_protocol = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    protocol = env.get(own_protocol) or env.get(PROTOCOL) or DEFAULT_PROTOCOL
    if protocol not in PROTOCOLS:
        name = own_protocol if env.get(own_protocol) else PROTOCOL
        raise TelemetryError(f"{name}={protocol!r} is not supported; use one of {', '.join(PROTOCOLS)}")
    if env.get(own_endpoint):
        name, endpoint = own_endpoint, env[own_endpoint]  # used as given
    elif env.get(ENDPOINT):
        name, base = ENDPOINT, env[ENDPOINT]
        # For OTLP/HTTP the base gets the signal's path; a gRPC target is used as given.
        endpoint = base.rstrip("/") + _SIGNALS[signal][0] if protocol == "http/protobuf" else base
    else:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TelemetryError(f"{name}={endpoint!r} is not an http:// or https:// URL")
    return endpoint, protocol


def export_settings(env: Mapping[str, str]) -> ExportSettings | None:
    """What to export metrics to, from the standard OTEL_* variables; None when no endpoint is set."""
    target = _signal_target(env, "metrics")
    if target is None:
        return None
    raw_interval = env.get(INTERVAL) or str(DEFAULT_INTERVAL_MS)
    try:
        interval_ms = int(raw_interval)
    except ValueError:
        raise TelemetryError(f"{INTERVAL}={raw_interval!r} is not a whole number of milliseconds") from None
    if interval_ms < 1000:
        raise TelemetryError(f"{INTERVAL}={interval_ms} is under 1000 ms; the relay exports at most once a second")
    return ExportSettings(endpoint=target[0], protocol=target[1], interval_ms=interval_ms,
                          service_name=env.get(SERVICE_NAME) or DEFAULT_SERVICE_NAME)


def trace_settings(env: Mapping[str, str]) -> TraceSettings | None:
    """What to export spans to, from the standard OTEL_* variables; None (tracing off) when no endpoint is set."""
    target = _signal_target(env, "traces")
    if target is None:
        return None
    return TraceSettings(endpoint=target[0], protocol=target[1],
                         service_name=env.get(SERVICE_NAME) or DEFAULT_SERVICE_NAME)


def _resource(service_name: str, instance: str) -> Any:
    from opentelemetry.sdk.resources import Resource

    attributes = {"service.name": service_name}
    if instance:
        attributes["service.instance.id"] = instance
    return Resource.create(attributes)


class MetricsExport:
    """A running OTLP export of `registry`. `flush` sends now; `stop` sends a last time and ends."""

    def __init__(self, registry: CollectorRegistry, settings: ExportSettings, *, instance: str = "") -> None:
        try:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        except ImportError as exc:
            raise TelemetryError(f"{ENDPOINT} is set but OpenTelemetry is not installed ({exc.name}): "
                                 f"{EXTRA_HINT}; or unset the variable") from None
        self.settings = settings
        self._registry = registry
        reader = PeriodicExportingMetricReader(_exporter("metrics", settings.endpoint, settings.protocol),
                                               export_interval_millis=settings.interval_ms)
        self._provider = MeterProvider(resource=_resource(settings.service_name, instance), metric_readers=[reader])
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


def _exporter(signal: str, endpoint: str, protocol: str) -> Any:
    _path, module, cls = _SIGNALS[signal]
    transport = "grpc" if protocol == "grpc" else "http"
    try:
        exporter = getattr(importlib.import_module(f"opentelemetry.exporter.otlp.proto.{transport}.{module}"), cls)
    except ImportError as exc:
        raise TelemetryError(f"OTLP over {protocol} needs {exc.name}: {EXTRA_HINT}") from None
    if transport == "grpc":
        return exporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    return exporter(endpoint=endpoint)


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


# -- traces ------------------------------------------------------------------------------------------

SPAN_KINDS = ("server", "consumer", "client", "internal")


class Tracing:
    """The relay's spans, exported over OTLP in batches once `start`ed; `flush` sends now, `stop` sends
    what is left and ends. Spans are made with this provider only: the process-wide OpenTelemetry
    globals are left alone (two relays in one test process each keep their own)."""

    def __init__(self, settings: TraceSettings, *, instance: str = "") -> None:
        try:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.trace import SpanKind, Status, StatusCode, get_current_span
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise TelemetryError(f"{ENDPOINT} is set but OpenTelemetry is not installed ({exc.name}): "
                                 f"{EXTRA_HINT}; or unset the variable") from None
        self.settings = settings
        self._exporter = _exporter("traces", settings.endpoint, settings.protocol)  # checked now, at start
        # The SDK's own OTEL_TRACES_SAMPLER (default: parent-based, always on) and OTEL_BSP_* apply.
        self._provider = TracerProvider(resource=_resource(settings.service_name, instance))
        self._tracer = self._provider.get_tracer("relay")
        self._kinds = {k: getattr(SpanKind, k.upper()) for k in SPAN_KINDS}
        self._error = lambda description: Status(StatusCode.ERROR, description)
        self._current = get_current_span
        self._propagator = TraceContextTextMapPropagator()

    def start(self) -> None:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._provider.add_span_processor(BatchSpanProcessor(self._exporter))

    def flush(self, timeout_ms: int = 10000) -> bool:
        return self._provider.force_flush(timeout_millis=timeout_ms)

    def stop(self) -> None:
        self._provider.shutdown()

    @contextmanager
    def span(self, name: str, kind: str, attributes: Mapping[str, Any], *, parent: str | None = None,
             tracestate: str | None = None) -> Iterator[Any]:
        """A span, current while the block runs. `parent`: a W3C traceparent (an incoming header, or the
        one stored with an event) whose trace the span joins; none (or an unreadable one): a new trace for
        a server or consumer span, the current span's child for the others."""
        context = None
        if kind in ("server", "consumer"):
            carrier = {"traceparent": parent} if parent else {}
            if parent and tracestate:
                carrier["tracestate"] = tracestate
            context = self._propagator.extract(carrier)
        # Exceptions are not recorded: their text is the caller's to vet (`annotate` sets the status).
        with self._tracer.start_as_current_span(name, context=context, kind=self._kinds[kind],
                                                attributes=dict(attributes), record_exception=False,
                                                set_status_on_exception=False) as span:
            yield span

    def annotate(self, attributes: Mapping[str, Any], *, error: str | None = None) -> None:
        """Add to the current span (a target call's outcome, a delivery's); `error` marks it failed."""
        span = self._current()
        span.set_attributes(dict(attributes))
        if error is not None:
            span.set_status(self._error(error[:200]))


def traceparent(span: Any) -> str:
    """The W3C traceparent naming `span` (version 00), as the store keeps it; "" for a span that is not
    valid (the SDK's non-recording placeholder)."""
    context = span.get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
