"""Traces (relay/telemetry.py `Tracing`): one trace from intake's POST /alerts to the ticket call, carried
across the store by the W3C trace context kept with the event, on SQLite and on Azure Storage (Azurite),
exported over OTLP/HTTP to a local collector (tests/fakes/otlp.py)."""

from __future__ import annotations

import asyncio
import builtins
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devtools.dev_issuer import DevIssuer
from relay.app import create_app
from relay.settings import Settings
from relay.store.sqlite import SqliteStore
from relay.telemetry import TelemetryError, TraceSettings, Tracing, trace_settings
from tests.azurite import require_azurite
from tests.conftest import SAMPLES
from tests.e2e.cluster import episode, open_shared_store, relay_env, write_config
from tests.fakes.otlp import OtlpReceiver, Span
from tests.fakes.servicenow import FakeServiceNow
from tests.relay_process import RelayProcess

pytest_plugins = ["tests.azurite"]

# A caller's trace context, as the W3C Trace Context specification's own example writes it.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER_TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
WAIT_SECONDS = 60


@pytest.fixture
async def receiver():
    r = OtlpReceiver()
    await r.start()
    yield r
    await r.stop()


# -- settings: the metrics' rules, for the traces signal ----------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, None),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:4318/v1/metrics"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"},
         TraceSettings("http://localhost:4318/v1/traces", "http/protobuf", "secure-export-relay")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318",
          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/custom"},
         TraceSettings("https://traces.example/custom", "http/protobuf", "secure-export-relay")),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/v1/traces"},
         TraceSettings("http://t:4318/v1/traces", "http/protobuf", "secure-export-relay")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
          "OTEL_SERVICE_NAME": "relay-dev"},
         TraceSettings("http://localhost:4317", "grpc", "relay-dev")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"},
         TraceSettings("http://localhost:4318/v1/traces", "http/protobuf", "secure-export-relay")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
         TraceSettings("http://localhost:4317", "grpc", "secure-export-relay")),
    ],
)
def test_trace_settings_follow_the_otel_variables(env: dict, expected: TraceSettings | None) -> None:
    assert trace_settings(env) == expected


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://x"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
         "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"},
         "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ],
)
def test_a_bad_traces_variable_is_named(env: dict, named: str) -> None:
    with pytest.raises(TelemetryError, match=named):
        trace_settings(env)


hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True)
paths = st.from_regex(r"(/[a-z0-9]{1,8}){0,3}/?", fullmatch=True)


@given(scheme=st.sampled_from(["http", "https"]), host=hosts, port=st.integers(1, 65535), path=paths)
def test_the_base_endpoint_gets_the_traces_path_exactly_once(scheme: str, host: str, port: int, path: str) -> None:
    base = f"{scheme}://{host}:{port}{path}"
    settings = trace_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": base})
    assert settings is not None and settings.endpoint == base.rstrip("/") + "/v1/traces"
    grpc = trace_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": base, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert grpc is not None and grpc.endpoint == base, "a gRPC target is used as given"


def block_opentelemetry(monkeypatch: pytest.MonkeyPatch, prefix: str = "opentelemetry") -> list[str]:
    """Make every import of `prefix...` fail, as in an image without the otel extra; returns the attempts."""
    real_import = builtins.__import__
    tried: list[str] = []

    def no_otel(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith(prefix):
            tried.append(name)
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    return tried


def test_a_traces_endpoint_without_the_sdk_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    block_opentelemetry(monkeypatch, "opentelemetry.sdk")
    settings = trace_settings({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1/v1/traces"})
    assert settings is not None
    with pytest.raises(TelemetryError, match=r"secure-export\[otel\]"):
        Tracing(settings)


# -- in one process: the relay app with its worker ----------------------------------------------------------


def app_settings(issuer: DevIssuer, db: Path) -> Settings:
    return Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{db}"})


def post_headers(issuer: DevIssuer, **extra: str) -> dict[str, str]:
    return {"Authorization": issuer.authorization(), "Content-Type": "application/json", **extra}


def sample() -> bytes:
    return (SAMPLES / "testaction-metric-static-fired.json").read_bytes()


async def stored_events(db: Path) -> list:  # type: ignore[type-arg]
    store = SqliteStore(db)
    await store.open()
    try:
        return await store.events()
    finally:
        await store.close()


def names(context: str, span: Span) -> bool:
    """Whether a stored W3C traceparent names `span`, sampled (its flags may carry Level 2's random bit)."""
    version, trace_id, span_id, flags = context.split("-")
    return (version, trace_id, span_id) == ("00", span.trace_id, span.span_id) and int(flags, 16) & 1 == 1


async def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if await asyncio.to_thread(path.exists):
            return
        await asyncio.sleep(0.05)


async def wait_for_spans(receiver: OtlpReceiver, done, what: str) -> list[Span]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        spans = receiver.spans()
        if done(spans):
            return spans
        await asyncio.sleep(0.1)
    pytest.fail(f"{what} within {WAIT_SECONDS}s; the collector has {[(s.name, s.kind) for s in receiver.spans()]}")


async def test_intake_honours_the_callers_traceparent_and_stores_its_own_span_with_the_event(
    aiohttp_client, issuer, tmp_path, receiver: OtlpReceiver
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    client = await aiohttp_client(create_app(app_settings(issuer, tmp_path / "r.db"), telemetry_env=env))
    resp = await client.post("/alerts", data=sample(), headers=post_headers(issuer, traceparent=CALLER_TRACEPARENT))
    assert resp.status == 202
    again = await client.post("/alerts", data=sample(), headers=post_headers(issuer))
    assert again.status == 200
    refused = await client.post("/alerts", data=sample(), headers={**post_headers(issuer), "Authorization": "Bearer x"})
    assert refused.status == 401
    await client.close()  # stopping the app sends the spans still batched

    spans = [s for s in receiver.spans() if s.name == "POST /alerts"]
    assert len(spans) == 3, spans
    accepted, duplicate, unauthorized = spans
    assert accepted.kind == "server" and accepted.trace_id == CALLER_TRACE and accepted.parent_span_id == CALLER_SPAN
    alert = json.loads(sample())["data"]["essentials"]
    assert accepted.attributes["relay.alert.id"] == alert["alertId"]
    assert accepted.attributes["relay.alert.condition"] == "Fired"
    assert accepted.attributes["relay.intake.outcome"] == "accepted"
    assert accepted.attributes["http.response.status_code"] == 202
    assert duplicate.trace_id != CALLER_TRACE and duplicate.parent_span_id == "", "no traceparent: a new trace"
    assert duplicate.attributes["relay.intake.outcome"] == "duplicate"
    assert unauthorized.attributes["relay.intake.outcome"] == "unauthorized"
    assert unauthorized.attributes["http.response.status_code"] == 401
    assert "relay.alert.id" not in unauthorized.attributes, "an unauthenticated body is never read"
    token = issuer.authorization().removeprefix("Bearer ")
    for span in spans:
        assert not any(token in str(v) or "Bearer" in str(v) for v in span.attributes.values()), span.attributes
    assert accepted.resource["service.name"] == "secure-export-relay"

    [event] = await stored_events(tmp_path / "r.db")
    assert names(event.trace_context, accepted), f"the stored context {event.trace_context} is not intake's span"


async def test_delivery_after_a_restart_continues_the_trace_intake_stored(
    aiohttp_client, issuer, tmp_path, receiver: OtlpReceiver
) -> None:
    """Intake in one relay process, delivery in the next: the only link is the stored context."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    db = tmp_path / "r.db"
    intake_only = await aiohttp_client(create_app(app_settings(issuer, db), telemetry_env=env))
    assert (await intake_only.post("/alerts", data=sample(), headers=post_headers(issuer))).status == 202
    await intake_only.close()
    [server] = receiver.spans()

    config = tmp_path / "relay.yaml"
    config.write_text(f"targets:\n  log:\n    kind: dry_run\n    path: {tmp_path / 'calls.jsonl'}\n"
                      "routes:\n  - target: log\n")
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{db}", "RELAY_CONFIG": str(config)})
    delivering = await aiohttp_client(create_app(settings, deliver=True, telemetry_env=env))
    await wait_for_file(tmp_path / "calls.jsonl")
    await delivering.close()

    [deliver] = [s for s in receiver.spans() if s.kind == "consumer"]
    assert deliver.name == "deliver Fired"
    assert (deliver.trace_id, deliver.parent_span_id) == (server.trace_id, server.span_id), \
        "the delivery span is not the intake span's child"
    assert deliver.attributes["relay.delivery.outcome"] == "delivered" and not deliver.error
    assert deliver.attributes["relay.delivery.attempt"] == 1
    calls = [s for s in receiver.spans() if s.kind == "client"]
    assert calls and all((c.trace_id, c.parent_span_id) == (server.trace_id, deliver.span_id) for c in calls), calls
    assert {c.attributes["relay.target.kind"] for c in calls} == {"dry_run"}
    assert "log create" in [c.name for c in calls]


async def test_tracing_off_needs_no_opentelemetry_and_stores_nothing_extra(
    aiohttp_client, issuer, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default (no OTEL_* endpoint): intake and delivery run with the SDK unimportable."""
    tried = block_opentelemetry(monkeypatch)
    config = tmp_path / "relay.yaml"
    config.write_text(f"targets:\n  log:\n    kind: dry_run\n    path: {tmp_path / 'calls.jsonl'}\n"
                      "routes:\n  - target: log\n")
    db = tmp_path / "r.db"
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{db}", "RELAY_CONFIG": str(config)})
    client = await aiohttp_client(create_app(settings, deliver=True, telemetry_env={}))
    resp = await client.post("/alerts", data=sample(), headers=post_headers(issuer, traceparent=CALLER_TRACEPARENT))
    assert resp.status == 202
    await wait_for_file(tmp_path / "calls.jsonl")
    await client.close()
    assert (tmp_path / "calls.jsonl").exists(), "the event was not delivered with tracing off"
    assert tried == [], f"tracing off still imported {tried}"
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT trace_context FROM events").fetchall() == [(None,)]


async def test_a_failed_call_and_the_retry_it_causes_are_marked_failed_in_the_same_trace(
    aiohttp_client, issuer, tmp_path, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicenow = FakeServiceNow()
    await servicenow.start()
    monkeypatch.setenv("SN_PASSWORD", servicenow.password)  # targets read their secrets from the environment
    try:
        servicenow.inject("status", status=503, path="/api/now/table/incident", method="POST")
        config = write_config(tmp_path / "relay.yaml", servicenow)
        settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'r.db'}",
                                      "RELAY_CONFIG": str(config)})
        client = await aiohttp_client(create_app(settings, deliver=True,
                                                 telemetry_env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}))
        fired, _ = episode(1, "traces-retry")
        assert (await client.post("/alerts", data=fired, headers=post_headers(issuer))).status == 202
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if servicenow.incidents:
                break
            await asyncio.sleep(0.05)
        await client.close()
    finally:
        await servicenow.stop()
    assert servicenow.incidents, "the retry never created the incident"

    spans = receiver.spans()
    [server] = [s for s in spans if s.kind == "server"]
    first, second = sorted((s for s in spans if s.kind == "consumer"),
                           key=lambda s: s.attributes["relay.delivery.attempt"])
    assert all(s.trace_id == server.trace_id and s.parent_span_id == server.span_id for s in (first, second)), \
        "both attempts belong under intake's span"
    assert first.attributes["relay.delivery.outcome"] == "retry" and first.error, first
    assert second.attributes["relay.delivery.outcome"] == "delivered" and not second.error, second
    creates = [s for s in spans if s.kind == "client" and s.attributes["relay.target.call"] == "create"]
    failed = [s for s in creates if s.parent_span_id == first.span_id]
    done = [s for s in creates if s.parent_span_id == second.span_id]
    assert len(failed) == 1 and failed[0].error and failed[0].attributes["relay.target.call.status"] == "503", failed
    assert "503" in failed[0].status_message, failed[0].status_message
    assert len(done) == 1 and done[0].attributes["relay.target.call.status"] == "ok", done
    assert done[0].attributes["relay.ticket.id"] == next(iter(servicenow.incidents))


# -- real relay processes: intake to the ServiceNow create, on both backends ---------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "azurite"])
async def test_one_trace_runs_from_intake_to_the_servicenow_create_call(
    backend: str, tmp_path, receiver: OtlpReceiver, request: pytest.FixtureRequest
) -> None:
    if backend == "azurite":
        require_azurite()
        azurite = request.getfixturevalue("azurite")
        # The relays' default queue, table and container names: a fresh partition per alert id keeps
        # this test apart from others sharing the session's Azurite.
        storage = azurite.connection_string
    else:
        storage = f"sqlite:///{tmp_path / 'relay.db'}"
    servicenow = FakeServiceNow()
    await servicenow.start()
    issuer = DevIssuer()
    fired, _ = episode(int(time.time_ns() % 10**6), f"traces-{backend}")
    alert_id = json.loads(fired)["data"]["essentials"]["alertId"]
    try:
        with issuer.serving_in_thread():
            config = write_config(tmp_path / "relay.yaml", servicenow)
            env = {**relay_env(issuer, storage, config, servicenow), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                   "OTEL_BSP_SCHEDULE_DELAY": "200"}
            relay = RelayProcess(env, tmp_path / "relay.log")
            await asyncio.to_thread(relay.start)
            auth = issuer.authorization()
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
                    async with http.post(f"{relay.url}/alerts", data=fired,
                                         headers={"Authorization": auth, "Content-Type": "application/json"}) as resp:
                        assert resp.status == 202, await resp.text()

                def created(spans: list[Span]) -> bool:
                    return any(s.kind == "client" and s.attributes.get("relay.target.call") == "create" for s in spans)

                spans = await wait_for_spans(receiver, created, "no create call span arrived")
            finally:
                relay.stop()
            if backend == "azurite":
                store = await open_shared_store(storage)
                try:
                    stored = [e for e in await store.events() if e.alert_id == alert_id]
                finally:
                    await store.close()
            else:
                stored = [e for e in await stored_events(tmp_path / "relay.db") if e.alert_id == alert_id]
    finally:
        await servicenow.stop()

    spans = receiver.spans()  # with what the relay sent at its stop
    [server] = [s for s in spans if s.name == "POST /alerts" and s.attributes.get("relay.alert.id") == alert_id]
    trace = [s for s in spans if s.trace_id == server.trace_id]
    [deliver] = [s for s in trace if s.kind == "consumer"]
    [create] = [s for s in trace if s.kind == "client" and s.attributes["relay.target.call"] == "create"]
    assert server.kind == "server" and server.attributes["relay.intake.outcome"] == "accepted"
    assert deliver.parent_span_id == server.span_id, "delivery is not a child of intake's span"
    assert create.parent_span_id == deliver.span_id, "the create call is not a child of the delivery span"
    [sys_id] = list(servicenow.incidents)
    assert create.name == "servicenow create"
    assert create.attributes["relay.target.name"] == "servicenow"
    assert create.attributes["relay.target.kind"] == "servicenow"
    assert create.attributes["relay.target.call.status"] == "ok" and not create.error
    assert create.attributes["relay.ticket.id"] == sys_id
    assert servicenow.incidents[sys_id]["number"] == create.attributes["relay.ticket.number"]
    assert deliver.attributes["relay.delivery.outcome"] == "delivered"
    calls = [s for s in spans if s.kind == "client"]
    assert all(c.trace_id == server.trace_id for c in calls), "a target call left the alert's trace"
    token = auth.removeprefix("Bearer ")
    for span in trace:
        for value in span.attributes.values():
            assert token not in str(value) and servicenow.password not in str(value), span
    [event] = stored
    assert names(event.trace_context, server), f"{backend}: the stored {event.trace_context} is not intake's span"
