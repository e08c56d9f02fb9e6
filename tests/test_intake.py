"""POST /alerts and the probes: the full status contract, against a real app on a real SQLite store."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest

from relay.app import create_app
from relay.intake import STORE_KEY
from relay.settings import Settings
from relay.store.sqlite import SqliteStore
from tests.conftest import SAMPLES, full_sample_names, load_sample, scrape

METRIC = "testaction-metric-static-fired.json"


@pytest.fixture
def settings(issuer, tmp_path):
    return Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}"})


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(create_app(settings))


def body_of(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


async def post(client, body: bytes, auth: str | None, content_type: str = "application/json", **headers):
    hdrs = {"Content-Type": content_type, **headers}
    if auth is not None:
        hdrs["Authorization"] = auth
    return await client.post("/alerts", data=body, headers=hdrs)


@pytest.mark.parametrize("name", full_sample_names())
async def test_every_sample_is_accepted_with_202(client, issuer, name):
    resp = await post(client, body_of(name), issuer.authorization())
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["status"] == "accepted"


async def test_repeat_delivery_answers_200_and_is_stored_once(client, issuer):
    auth = issuer.authorization()
    first = await post(client, body_of(METRIC), auth)
    second = await post(client, body_of(METRIC), auth)
    assert (first.status, second.status) == (202, 200)
    assert (await first.json())["key"] == (await second.json())["key"]
    store: SqliteStore = client.app[STORE_KEY]
    assert len(await store.events()) == 1
    assert await store.pending() == 1


async def test_fired_resolved_fired_are_three_events(client, issuer):
    auth = issuer.authorization()
    fired = load_sample("metric-static-resolved.json")
    fired["data"]["essentials"]["monitorCondition"] = "Fired"
    del fired["data"]["essentials"]["resolvedDateTime"]
    refired = json.loads(json.dumps(fired))
    refired["data"]["essentials"]["firedDateTime"] = "2019-03-22T15:00:00.0000000Z"
    statuses = [
        (await post(client, json.dumps(doc).encode(), auth)).status
        for doc in (fired, load_sample("metric-static-resolved.json"), refired)
    ]
    assert statuses == [202, 202, 202]


async def test_raw_body_is_stored_byte_identical(client, issuer):
    body = b'{"schemaId":"azureMonitorCommonAlertSchema",   "data":' + body_of(METRIC).split(b'"data":', 1)[1]
    resp = await post(client, body, issuer.authorization())
    assert resp.status == 202
    store = client.app[STORE_KEY]
    assert (await store.events())[0].body == body


async def test_bad_token_gets_401_with_bearer_challenge_and_no_detail(client, issuer, caplog):
    caplog.set_level(logging.WARNING, logger="relay.intake")
    token = issuer.mint(overrides={"tid": "99999999-9999-4999-8999-999999999999"})
    resp = await post(client, body_of(METRIC), f"Bearer {token}")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert await resp.json() == {"error": "invalid_token"}
    assert "bad_tenant" in caplog.text, "the precise reason belongs in the log"
    assert token not in caplog.text, "tokens must never be logged"
    metrics = await scrape(client)
    assert 'relay_auth_failures_total{reason="bad_tenant"} 1.0' in metrics


async def test_missing_token_gets_401(client):
    resp = await post(client, body_of(METRIC), None)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_token_is_checked_before_the_body_is_read(client):
    # A bad token with a body over the limit: the answer is 401, not 413, so the body was never read.
    resp = await post(client, b"x" * (300 * 1024), "Bearer a.b.c")
    assert resp.status == 401


async def test_malformed_json_gets_400(client, issuer):
    resp = await post(client, b'{"schemaId": ', issuer.authorization())
    assert resp.status == 400
    assert (await resp.json())["error"] == "malformed JSON"


async def test_json_nested_deeper_than_the_parser_goes_gets_400(client, issuer):
    resp = await post(client, b"[" * 100_000 + b"]" * 100_000, issuer.authorization())
    assert resp.status == 400
    assert (await resp.json())["error"] == "malformed JSON"


@pytest.mark.parametrize("field", ["alertId", "alertRule", "description"])
@pytest.mark.parametrize("surrogate", [b"\\ud800", b"\\uDFFF", b"\xed\xa0\x80"], ids=["escape", "low escape", "bytes"])
async def test_lone_surrogate_in_a_string_gets_400(client, issuer, field, surrogate):
    doc = load_sample(METRIC)
    doc["data"]["essentials"][field] = doc["data"]["essentials"].get(field, "") + "MARK"
    body = json.dumps(doc).encode().replace(b"MARK", surrogate)
    resp = await post(client, body, issuer.authorization())
    assert resp.status == 400, await resp.text()
    assert await client.app[STORE_KEY].events() == []


async def test_surrogate_pair_escape_is_ordinary_text(client, issuer):
    doc = load_sample(METRIC)
    doc["data"]["essentials"]["description"] = "disk full \U0001F525"
    resp = await post(client, json.dumps(doc, ensure_ascii=True).encode(), issuer.authorization())
    assert resp.status == 202


async def test_invalid_utf8_gets_400(client, issuer):
    resp = await post(client, b'{"a": "\xff\xfe"}', issuer.authorization())
    assert resp.status == 400


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
async def test_non_json_content_type_gets_415(client, issuer, ctype):
    resp = await post(client, body_of(METRIC), issuer.authorization(), content_type=ctype)
    assert resp.status == 415


async def test_json_with_charset_is_accepted(client, issuer):
    resp = await post(client, body_of(METRIC), issuer.authorization(), content_type="application/json; charset=utf-8")
    assert resp.status == 202


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_compressed_body_gets_415(client, issuer, encoding):
    resp = await post(client, body_of(METRIC), issuer.authorization(), **{"Content-Encoding": encoding})
    assert resp.status == 415


async def test_body_over_256_kib_gets_413(client, issuer):
    doc = load_sample(METRIC)
    doc["data"]["essentials"]["description"] = "x" * (256 * 1024)
    resp = await post(client, json.dumps(doc).encode(), issuer.authorization())
    assert resp.status == 413


async def test_chunked_body_over_256_kib_gets_413(client, issuer):
    async def chunks():
        for _ in range(40):
            yield b"x" * 8192

    resp = await client.post("/alerts", data=chunks(),
                             headers={"Content-Type": "application/json", "Authorization": issuer.authorization()})
    assert resp.status == 413


async def test_body_just_under_the_limit_is_accepted(client, issuer):
    doc = load_sample(METRIC)
    base = len(json.dumps(doc).encode())
    doc["data"]["essentials"]["description"] = "x" * (256 * 1024 - base - 100)
    body = json.dumps(doc).encode()
    assert 255 * 1024 < len(body) <= 256 * 1024
    resp = await post(client, body, issuer.authorization())
    assert resp.status == 202


@pytest.mark.parametrize("name", ["noncommon-metric-static.json", "noncommon-activitylog-administrative.json"])
async def test_non_common_schema_gets_422_naming_the_field(client, issuer, name):
    resp = await post(client, body_of(name), issuer.authorization())
    assert resp.status == 422
    body = await resp.json()
    assert body["field"] == "schemaId"
    assert "common alert schema" in body["error"]


async def test_missing_alert_id_gets_422_naming_it(client, issuer):
    doc = load_sample(METRIC)
    del doc["data"]["essentials"]["alertId"]
    resp = await post(client, json.dumps(doc).encode(), issuer.authorization())
    assert resp.status == 422
    assert (await resp.json())["field"] == "data.essentials.alertId"


async def test_store_that_cannot_commit_gives_503_with_retry_after(client, issuer):
    store = client.app[STORE_KEY]
    # The database goes away under the relay: its writer's connection, and its commit process, which a
    # restart cannot bring back (the file's folder is gone).
    store._conn.close()
    store._committer.path = "/nonexistent/folder/relay.db"
    os.kill(store._committer.pid, signal.SIGKILL)
    resp = await post(client, body_of(METRIC), issuer.authorization())
    assert resp.status == 503
    assert "Retry-After" in resp.headers
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["store"] is False


async def test_healthz_is_ok(client):
    resp = await client.get("/healthz")
    assert resp.status == 200


async def test_readyz_is_ok_with_keys_and_store(client):
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["checks"] == {"signing_keys": True, "store": True}


async def test_readyz_fails_without_signing_keys(aiohttp_client, issuer, settings):
    issuer.fail_requests = True
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["signing_keys"] is False


async def test_metrics_report_outcomes_commit_latency_and_pending(client, issuer):
    auth = issuer.authorization()
    await post(client, body_of(METRIC), auth)
    await post(client, body_of(METRIC), auth)
    await post(client, b"{", auth)
    text = await scrape(client)
    assert 'relay_alert_requests_total{outcome="accepted"} 1.0' in text
    assert 'relay_alert_requests_total{outcome="duplicate"} 1.0' in text
    assert 'relay_alert_requests_total{outcome="malformed_json"} 1.0' in text
    assert "relay_commit_seconds_count 2.0" in text
    assert "relay_pending_deliveries 1.0" in text


async def test_metrics_port_moves_metrics_off_the_public_listener(aiohttp_client, issuer, tmp_path, unused_tcp_port):
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'r.db'}",
                                  "RELAY_HOST": "127.0.0.1", "RELAY_METRICS_PORT": str(unused_tcp_port)})
    client = await aiohttp_client(create_app(settings))
    assert (await client.get("/metrics")).status == 404
    resp = await client.session.get(f"http://127.0.0.1:{unused_tcp_port}/metrics")
    assert resp.status == 200
    assert "relay_alert_requests" in await resp.text()


def test_metrics_default_to_their_own_port_on_loopback(issuer):
    env = {k: v for k, v in issuer.relay_env().items() if k != "RELAY_METRICS_PORT"}
    settings = Settings.from_env(env)
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9090)
    app = create_app(settings)
    assert "/metrics" not in {r.resource.canonical for r in app.router.routes()}, "/metrics is on the public port"


async def test_unknown_route_and_wrong_method_are_not_500(client):
    assert (await client.get("/alerts")).status == 405
    assert (await client.get("/nope")).status == 404


async def test_every_bad_token_kind_gets_401_with_its_reason_logged_and_counted(client, issuer, caplog):
    from tests.test_tokens import forged

    caplog.set_level(logging.WARNING, logger="relay.intake")
    cases = forged(issuer)
    for label, (header, reason) in cases.items():
        caplog.clear()
        resp = await post(client, body_of(METRIC), header)
        assert resp.status == 401, f"{label}: got {resp.status}"
        assert resp.headers.get("WWW-Authenticate") == 'Bearer error="invalid_token"', label
        assert await resp.json() == {"error": "invalid_token"}, f"{label}: the body must not say why"
        assert f"refused token from 127.0.0.1: {reason}" in caplog.text, f"{label}: reason {reason} not logged"
        if header and " " in header and len(header) < 8000:
            assert header.split(" ", 1)[1] not in caplog.text, f"{label}: the token was logged"
    metrics = await scrape(client)
    for reason in {r for _, r in cases.values()}:
        assert f'relay_auth_failures_total{{reason="{reason}"}}' in metrics, reason
