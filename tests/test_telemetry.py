"""The OpenTelemetry metrics export (relay/telemetry.py) against a local OTLP/HTTP receiver."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from relay import telemetry
from relay.app import create_app
from relay.delivery.metrics import DeliveryMetrics
from relay.intake.metrics import IntakeMetrics
from relay.settings import Settings
from relay.telemetry import ExportSettings, MetricsExport, TelemetryError, export_settings
from tests.conftest import SAMPLES, scrape
from tests.fakes.otlp import OtlpReceiver


@pytest.fixture
async def receiver():
    r = OtlpReceiver()
    await r.start()
    yield r
    await r.stop()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"},
         ExportSettings("http://localhost:4318/v1/metrics", "http/protobuf", 60000, "secure-export-relay")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example/otlp/"},
         ExportSettings("https://collector.example/otlp/v1/metrics", "http/protobuf", 60000, "secure-export-relay")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318",
          "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://other:9999/custom"},
         ExportSettings("http://other:9999/custom", "http/protobuf", 60000, "secure-export-relay")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
          "OTEL_METRIC_EXPORT_INTERVAL": "15000", "OTEL_SERVICE_NAME": "relay-dev"},
         ExportSettings("http://localhost:4317", "grpc", 15000, "relay-dev")),
    ],
)
def test_export_settings_follow_the_otel_variables(env: dict, expected: ExportSettings | None) -> None:
    assert export_settings(env) == expected


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "ftp://x/v1/metrics"}, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
         "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "thrift"},
         "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_METRIC_EXPORT_INTERVAL": "1m"},
         "OTEL_METRIC_EXPORT_INTERVAL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_METRIC_EXPORT_INTERVAL": "10"},
         "OTEL_METRIC_EXPORT_INTERVAL"),
    ],
)
def test_bad_otel_variable_is_named(env: dict, named: str) -> None:
    with pytest.raises(TelemetryError, match=named):
        export_settings(env)


def relay_registry() -> tuple[IntakeMetrics, DeliveryMetrics]:
    intake = IntakeMetrics(CollectorRegistry())
    return intake, DeliveryMetrics(intake.registry)


async def test_queue_depth_dead_letters_and_deliveries_reach_the_collector(receiver: OtlpReceiver) -> None:
    intake, delivery = relay_registry()
    intake.pending.set(7)
    delivery.dead_letters.labels("non_retryable").inc(2)
    delivery.deliveries.labels("servicenow", "create").inc()
    intake.auth_failures.labels("bad_audience").inc(3)
    delivery.call_seconds.labels("servicenow", "create").observe(0.2)
    export = MetricsExport(intake.registry, export_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}),
                           instance="replica-1")
    try:
        assert await asyncio.to_thread(export.flush), "the export did not complete"
        delivery.dead_letters.labels("non_retryable").inc()
        intake.pending.set(3)
        assert await asyncio.to_thread(export.flush)
    finally:
        await asyncio.to_thread(export.stop)
    pending = receiver.latest("relay_pending_deliveries")
    assert pending is not None and pending.kind == "gauge" and pending.value == 3
    dead = receiver.latest("relay_dead_letters", reason="non_retryable")
    assert dead is not None and dead.value == 3, dead
    assert dead.kind == "sum" and dead.monotonic and dead.cumulative, "dead letters must be a cumulative counter"
    assert receiver.latest("relay_deliveries", target="servicenow", outcome="create").value == 1
    assert receiver.latest("relay_auth_failures", reason="bad_audience").value == 3
    assert receiver.latest("relay_target_call_seconds_count", target="servicenow", call="create").value == 1
    call_sum = receiver.latest("relay_target_call_seconds_sum", target="servicenow", call="create")
    assert call_sum.value == pytest.approx(0.2)
    assert {"service.name": "secure-export-relay", "service.instance.id": "replica-1"}.items() <= \
        receiver.resources()[0].items()


async def test_collector_briefly_unavailable_is_retried_not_dropped(receiver: OtlpReceiver) -> None:
    intake, delivery = relay_registry()
    delivery.dead_letters.labels("attempts_exhausted").inc()
    receiver.unavailable = 1
    export = MetricsExport(intake.registry, export_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}))
    try:
        await asyncio.to_thread(export.flush, 20000)
    finally:
        await asyncio.to_thread(export.stop)
    assert receiver.refused == 1, "the receiver never answered 503"
    point = receiver.latest("relay_dead_letters", reason="attempts_exhausted")
    assert point is not None and point.value == 1, "the export was dropped after one 503"


def test_endpoint_without_the_sdk_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_sdk(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("opentelemetry.sdk"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sdk)
    settings = export_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    with pytest.raises(TelemetryError, match=r"secure-export\[otel\]"):
        MetricsExport(CollectorRegistry(), settings)


def app_settings(issuer, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'r.db'}"})


async def test_the_running_relay_pushes_queue_depth_and_keeps_serving_metrics(
    aiohttp_client, issuer, tmp_path, receiver: OtlpReceiver
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_METRIC_EXPORT_INTERVAL": "1000"}
    client = await aiohttp_client(create_app(app_settings(issuer, tmp_path), telemetry_env=env))
    resp = await client.post("/alerts", data=(SAMPLES / "testaction-metric-static-fired.json").read_bytes(),
                             headers={"Authorization": issuer.authorization(), "Content-Type": "application/json"})
    assert resp.status == 202
    for _ in range(100):  # accepted, never delivered (no worker): the queue depth the relay pushes is 1
        point = receiver.latest("relay_pending_deliveries")
        if point is not None and point.value == 1:
            break
        await asyncio.sleep(0.1)
    assert point is not None and point.value == 1, f"queue depth pushed: {point}"
    assert receiver.latest("relay_alert_requests", outcome="accepted") is not None, [
        p.metric for p in receiver.points()]
    text = await scrape(client)  # the local Prometheus scrape still works
    assert "relay_pending_deliveries 1.0" in text


async def test_a_bad_otel_variable_stops_the_relay_at_start(issuer, tmp_path) -> None:
    with pytest.raises(TelemetryError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        create_app(app_settings(issuer, tmp_path),
                   telemetry_env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "json"})


def test_default_interval_is_the_specifications_minute() -> None:
    assert telemetry.DEFAULT_INTERVAL_MS == 60000
    assert export_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}).interval_ms == 60000


def test_grpc_export_reaches_an_otlp_grpc_collector() -> None:
    from tests.fakes.otlp import OtlpGrpcReceiver

    receiver = OtlpGrpcReceiver()
    receiver.start()
    try:
        intake, delivery = relay_registry()
        delivery.dead_letters.labels("too_old").inc(4)
        intake.pending.set(12)
        settings = export_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
        export = MetricsExport(intake.registry, settings)
        try:
            assert export.flush(), "the gRPC export did not complete"
        finally:
            export.stop()
    finally:
        receiver.stop()
    assert receiver.latest("relay_dead_letters", reason="too_old").value == 4
    assert receiver.latest("relay_pending_deliveries").value == 12


async def test_shutdown_does_not_wait_long_for_a_collector_that_is_down(aiohttp_client, issuer, tmp_path) -> None:
    # Nothing listens there: each export attempt fails and the exporter backs off and retries.
    from tests.relay_process import free_port

    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "OTEL_METRIC_EXPORT_INTERVAL": "1000"}
    from aiohttp import web

    app = create_app(app_settings(issuer, tmp_path), telemetry_env=env)
    runner = web.AppRunner(app)
    await runner.setup()
    await asyncio.sleep(1.5)  # an export or two has failed
    started = asyncio.get_running_loop().time()
    await runner.cleanup()
    took = asyncio.get_running_loop().time() - started
    from relay.app import FINAL_EXPORT_SECONDS

    assert took < FINAL_EXPORT_SECONDS + 2, f"shutdown took {took:.1f}s with the collector down"


hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True)
paths = st.from_regex(r"(/[a-z0-9]{1,8}){0,3}/?", fullmatch=True)


@given(scheme=st.sampled_from(["http", "https"]), host=hosts, port=st.integers(1, 65535), path=paths)
def test_the_base_endpoint_gets_the_metrics_path_exactly_once(scheme: str, host: str, port: int, path: str) -> None:
    base = f"{scheme}://{host}:{port}{path}"
    settings = export_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": base})
    assert settings is not None
    assert settings.endpoint == base.rstrip("/") + "/v1/metrics"
    assert "//v1" not in settings.endpoint
    grpc = export_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": base, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert grpc is not None and grpc.endpoint == base, "a gRPC target is used as given"


@given(interval=st.integers(-10**9, 10**9))
def test_any_interval_is_taken_or_refused_by_name(interval: int) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_METRIC_EXPORT_INTERVAL": str(interval)}
    if interval >= 1000:
        assert export_settings(env).interval_ms == interval
    else:
        with pytest.raises(TelemetryError, match="OTEL_METRIC_EXPORT_INTERVAL"):
            export_settings(env)


def test_relay_serve_names_a_bad_otel_variable_and_exits_2(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from tests.relay_process import free_port

    env = {**os.environ, "RELAY_TENANT_ID": "11111111-2222-4333-8444-555555555555",
           "RELAY_AUDIENCES": "api://relay", "RELAY_STORE": f"sqlite:///{tmp_path / 'r.db'}",
           "RELAY_METRICS_PORT": "0", "RELAY_PORT": str(free_port()),
           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    done = subprocess.run([sys.executable, "-m", "relay", "serve"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "relay: configuration error: OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not supported" in done.stderr
    assert "Traceback" not in done.stderr
