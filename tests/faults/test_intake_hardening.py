"""Issue 12, intake: impossible or far-future times are 422 (item 4); UTF-8 only, other charsets 415 (6); a
malformed header line is one log line without the token (7); control characters are escaped in log lines
(13); a source allow-list answers 403 and stores nothing (15); NaN/Infinity and duplicate keys are 400,
the Server header names no versions, 100-continue waits for the token, a 401 closes at once (Info)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.alerts import MAX_FUTURE, SchemaError, check_times, parse_alert
from relay.app import create_app
from relay.logs import EscapingFormatter, MalformedRequestFilter, escape_controls
from relay.settings import Settings
from relay.store.sqlite import SqliteStore
from tests.conftest import load_sample
from tests.faults.raw_http import RawConnection, request

SUB = "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"
OTHER_SUB = "bbbbbbbb-1111-4222-8333-444444444444"
CASES: dict[str, int] = {}
DEADLINE = 10.0  # guards against a hang only


def count(group: str) -> None:
    CASES[group] = CASES.get(group, 0) + 1


def alert_doc(**essentials: Any) -> dict[str, Any]:
    doc = load_sample("testaction-metric-static-fired.json")
    doc["data"]["essentials"].update(essentials)
    return doc


def body_of(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


@pytest.fixture
def relay_env(issuer, tmp_path) -> dict[str, str]:
    return {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}"}


@pytest.fixture
async def client(aiohttp_client, relay_env):
    return await aiohttp_client(create_app(Settings.from_env(relay_env)))


def headers(auth: str, ctype: str = "application/json") -> dict[str, str]:
    return {"Authorization": auth, "Content-Type": ctype}


async def stored(tmp_path) -> int:
    store = SqliteStore(tmp_path / "relay.db")
    await store.open()
    try:
        return len(await store.events())
    finally:
        await store.close()


# -- item 4: times -----------------------------------------------------------------------------------

def soon(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize(("field", "value"), [
    ("firedDateTime", "2025-13-01T00:00:00Z"),
    ("firedDateTime", "2025-02-30T10:00:00Z"),
    ("firedDateTime", "2025-04-15T18:17:12+99:99"),
    ("firedDateTime", "0001-01-01T00:00:00+01:00"),
    ("firedDateTime", "9999-12-31T23:59:59Z"),
    ("firedDateTime", "far future"),
    ("resolvedDateTime", "2025-04-31T00:00:00Z"),
    ("resolvedDateTime", "+2 days"),
])
async def test_impossible_or_far_future_times_are_422_naming_the_field(client, issuer, tmp_path, field, value):
    if value in ("far future", "+2 days"):
        value = soon(2)
    doc = alert_doc(**{field: value})
    if field == "resolvedDateTime":
        doc["data"]["essentials"]["monitorCondition"] = "Resolved"
    resp = await client.post("/alerts", data=body_of(doc), headers=headers(issuer.authorization()))
    answer = await resp.json()
    assert resp.status == 422, f"{field}={value} answered {resp.status}: it would fail in the worker for hours"
    assert answer["field"] == f"data.essentials.{field}"
    assert await stored(tmp_path) == 0
    count("impossible or future times refused (item 4)")


async def test_times_within_a_day_and_future_impact_windows_are_accepted(client, issuer):
    doc = load_sample("testaction-servicehealth-fired.json")
    doc["data"]["essentials"]["firedDateTime"] = soon(0.5)  # clock drift under a day is tolerated
    props = doc["data"]["alertContext"]["properties"]
    props["impactStartTime"] = props["impactMitigationTime"] = soon(30)  # planned maintenance lies ahead
    resp = await client.post("/alerts", data=body_of(doc), headers=headers(issuer.authorization()))
    assert resp.status == 202, await resp.text()


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@given(st.integers(min_value=-10**7, max_value=10**7))
def test_check_times_refuses_exactly_the_times_over_a_day_ahead(offset_seconds):
    fired = NOW + timedelta(seconds=offset_seconds)
    alert = parse_alert(alert_doc(firedDateTime=fired.strftime("%Y-%m-%dT%H:%M:%SZ")))
    if fired > NOW + MAX_FUTURE:
        with pytest.raises(SchemaError, match="firedDateTime"):
            check_times(alert, NOW)
    else:
        check_times(alert, NOW)


# -- item 6 and Info: bytes and JSON ---------------------------------------------------------------

SAMPLE = body_of(alert_doc())
TEXT = SAMPLE.decode()


@pytest.mark.parametrize(("label", "body", "ctype", "expected"), [
    ("UTF-16 LE with BOM", TEXT.encode("utf-16"), "application/json", 400),
    ("UTF-16 BE", TEXT.encode("utf-16-be"), "application/json", 400),
    ("UTF-32", TEXT.encode("utf-32"), "application/json", 400),
    ("Latin-1 byte", SAMPLE.replace(b"Alertruledescription", b"Alert\xe9"), "application/json", 400),
    ("charset utf-16", SAMPLE, "application/json; charset=utf-16", 415),
    ("charset latin-1", SAMPLE, "application/json; charset=iso-8859-1", 415),
    ("NaN", SAMPLE.replace(b'"Alertruledescription"', b"NaN"), "application/json", 400),
    ("Infinity", SAMPLE.replace(b'"Alertruledescription"', b"Infinity"), "application/json", 400),
    ("-Infinity", SAMPLE.replace(b'"Alertruledescription"', b"-Infinity"), "application/json", 400),
    ("duplicate top-level key", SAMPLE.replace(b'{"schemaId"', b'{"schemaId": "x", "schemaId"', 1),
     "application/json", 400),
    ("duplicate nested key", SAMPLE.replace(b'"severity": "Sev4"', b'"severity": "Sev0", "severity": "Sev4"'),
     "application/json", 400),
])
async def test_non_utf8_and_ambiguous_json_is_refused(client, issuer, tmp_path, label, body, ctype, expected):
    resp = await client.post("/alerts", data=body, headers=headers(issuer.authorization(), ctype))
    assert resp.status == expected, f"{label}: answered {resp.status} ({await resp.text()})"
    assert await stored(tmp_path) == 0
    count("non-UTF-8 and ambiguous bodies refused (item 6, Info)")


@pytest.mark.parametrize(("label", "body", "ctype"), [
    ("UTF-8 BOM", b"\xef\xbb\xbf" + SAMPLE, "application/json"),
    ("charset UTF-8", SAMPLE, "application/json; charset=UTF-8"),
])
async def test_utf8_with_bom_or_charset_is_accepted(client, issuer, label, body, ctype):
    resp = await client.post("/alerts", data=body, headers=headers(issuer.authorization(), ctype))
    assert resp.status == 202, f"{label}: {resp.status} {await resp.text()}"


async def test_server_header_names_no_versions(client):
    resp = await client.get("/healthz")
    server = resp.headers.get("Server", "")
    assert "Python" not in server and "aiohttp" not in server, f"Server: {server}"
    count("Server header (Info)")


# -- Info: 100-continue and closing after a 401 ------------------------------------------------------

@pytest.fixture
async def server(aiohttp_server, relay_env):
    # A long lingering time: a relay that discards an unauthenticated body would still be reading it.
    return await aiohttp_server(create_app(Settings.from_env(relay_env)), lingering_time=600)


async def test_expect_continue_gets_401_before_any_100_for_a_bad_token(server, issuer):
    conn = await RawConnection.open(server.port)
    await conn.send(request(headers={"Authorization": "Bearer a.b.c", "Content-Type": "application/json",
                                     "Expect": "100-continue", "Content-Length": str(len(SAMPLE))}))
    status = await conn.status(DEADLINE)
    conn.close()
    assert status == 401, f"a bad token got {status} before its body was sent (100 means: send the body)"
    count("100-continue after the token (Info)")


async def test_expect_continue_with_a_good_token_gets_100_then_202(server, issuer):
    conn = await RawConnection.open(server.port)
    await conn.send(request(headers={"Authorization": issuer.authorization(), "Content-Type": "application/json",
                                     "Expect": "100-continue", "Content-Length": str(len(SAMPLE))}))
    first = await conn.status(DEADLINE)
    await conn.reader.readline()  # the blank line after the 100
    await conn.send(SAMPLE)
    second = await conn.status(DEADLINE)
    conn.close()
    assert (first, second) == (100, 202)


async def test_401_closes_the_connection_without_reading_the_body(server, issuer):
    conn = await RawConnection.open(server.port)
    await conn.send(request(headers={"Authorization": "Bearer a.b.c", "Content-Type": "application/json",
                                     "Content-Length": str(10 * 1024 * 1024)}) + b"{" * 1000)
    status = await conn.status(DEADLINE)
    closed = await conn.closed_by_server(DEADLINE)
    conn.close()
    assert status == 401
    assert closed, "after a 401 the relay kept the connection open to read and discard the body"
    count("401 closes (Info)")


# -- item 7: malformed header lines in the log ------------------------------------------------------

@pytest.mark.parametrize("raw", [b"Authorization Bearer {token}\r\n", b"Authorization: Bearer \n{token}\r\n"])
async def test_malformed_authorization_line_is_one_log_line_without_the_token(server, issuer, caplog, raw):
    token = issuer.mint()
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    conn = await RawConnection.open(server.port)
    await conn.send(request(headers={"Content-Type": "application/json"},
                            raw_headers=raw.replace(b"{token}", token.encode()), body=SAMPLE))
    status = await conn.status(DEADLINE)
    conn.close()
    assert status == 400
    records = [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= logging.WARNING]
    assert records, "the refusal was not logged at all"
    text = "\n".join(logging.Formatter().format(r) for r in records)
    assert token.split(".")[1] not in text, f"the token reached the log: {text[:300]}"
    assert all(r.exc_info is None for r in records), "the refusal was logged with a traceback"
    assert len(text.splitlines()) == len(records), f"one line per refusal, got:\n{text}"
    count("malformed header lines logged on one line (item 7)")


def test_malformed_request_filter_leaves_other_records_alone():
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s",
                               ("1.2.3.4",), None)
    assert MalformedRequestFilter().filter(record) and record.getMessage() == "Error handling request from 1.2.3.4"


# -- item 13: control characters in log lines ---------------------------------------------------------

@pytest.mark.parametrize("hostile", ["rule\n2026-01-01 00:00:00 INFO relay.intake accepted forged",
                                     "rule\r\x1b[2J\x1b[31mred", "rule\x00\x7f\x9b\u2028end"])
async def test_logged_alert_fields_have_their_control_characters_escaped(client, issuer, caplog, hostile):
    caplog.set_level(logging.INFO, logger="relay.intake")
    doc = alert_doc(alertRule=hostile, monitoringService=hostile)  # monitoringService is logged on accept
    resp = await client.post("/alerts", data=body_of(doc), headers=headers(issuer.authorization()))
    assert resp.status == 202
    formatter = EscapingFormatter("%(levelname)s %(name)s %(message)s")
    lines = [formatter.format(r) for r in caplog.records if r.name == "relay.intake"]
    joined = "\n".join(lines)
    assert lines and all(hostile not in line for line in lines)
    assert len(joined.splitlines()) == len(lines), f"a logged field forged a line:\n{joined}"
    assert "\x1b" not in joined and "\x00" not in joined and "\r" not in joined
    assert escape_controls(hostile) in joined, "the field should still be readable, escaped"
    count("control characters escaped (item 13)")


def test_cli_logging_uses_the_escaping_formatter():
    from relay import logs

    root = logging.getLogger()
    before = list(root.handlers)
    for h in before:
        root.removeHandler(h)
    try:
        logs.configure("INFO")
        assert any(isinstance(h.formatter, EscapingFormatter) for h in root.handlers)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in before:
            root.addHandler(h)


# -- item 15: source allow-list ------------------------------------------------------------------------

async def metric_value(client, outcome: str) -> float:
    from relay.intake import METRICS_KEY

    registry = client.app[METRICS_KEY].registry
    return registry.get_sample_value("relay_alert_requests_total", {"outcome": outcome}) or 0.0


@pytest.mark.parametrize(("env", "essentials", "allowed"), [
    ({"RELAY_ALLOWED_SUBSCRIPTIONS": SUB}, {}, True),
    ({"RELAY_ALLOWED_SUBSCRIPTIONS": SUB.upper()}, {}, True),
    ({"RELAY_ALLOWED_SUBSCRIPTIONS": OTHER_SUB}, {}, False),
    ({"RELAY_ALLOWED_SUBSCRIPTIONS": f"{OTHER_SUB}, {SUB}"}, {}, True),
    ({"RELAY_ALLOWED_SUBSCRIPTIONS": SUB}, {"alertTargetIDs": [f"/subscriptions/{OTHER_SUB}/resourceGroups/x"]},
     False),
    ({"RELAY_ALLOWED_ALERT_RULES": f"/subscriptions/{SUB}/*/metricAlerts/prod-*"},
     {"alertRuleID": f"/subscriptions/{SUB}/resourceGroups/rg/providers/microsoft.insights/metricAlerts/prod-cpu"},
     True),
    ({"RELAY_ALLOWED_ALERT_RULES": f"/subscriptions/{SUB}/*/metricAlerts/prod-*"},
     {"alertRuleID": f"/subscriptions/{SUB}/resourceGroups/rg/providers/microsoft.insights/metricAlerts/dev-cpu"},
     False),
    ({"RELAY_ALLOWED_ALERT_RULES": "*/prod-*"}, {}, False),  # no rule id at all
])
async def test_alerts_from_outside_the_allow_list_are_403_counted_logged_and_not_stored(
        aiohttp_client, issuer, relay_env, tmp_path, caplog, env, essentials, allowed):
    caplog.set_level(logging.WARNING, logger="relay.intake")
    client = await aiohttp_client(create_app(Settings.from_env({**relay_env, **env})))
    resp = await client.post("/alerts", data=body_of(alert_doc(**essentials)), headers=headers(issuer.authorization()))
    if allowed:
        assert resp.status == 202, await resp.text()
        return
    assert resp.status == 403, f"an alert from outside the allow-list answered {resp.status}"
    assert await metric_value(client, "forbidden_source") == 1
    assert await stored(tmp_path) == 0
    [line] = [r.getMessage() for r in caplog.records if r.name == "relay.intake" and "refused alert" in r.getMessage()]
    assert "subscription" in line and "rule" in line
    count("alerts from elsewhere refused (item 15)")


async def test_no_allow_list_warns_at_start(aiohttp_client, relay_env, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="relay.app")
    await aiohttp_client(create_app(Settings.from_env(relay_env)))
    assert any("RELAY_ALLOWED_SUBSCRIPTIONS is not set" in r.getMessage() for r in caplog.records)
    caplog.clear()
    await aiohttp_client(create_app(Settings.from_env({**relay_env, "RELAY_ALLOWED_SUBSCRIPTIONS": SUB,
                                                       "RELAY_STORE": f"sqlite:///{tmp_path / 'other.db'}"})))
    assert not any("RELAY_ALLOWED_SUBSCRIPTIONS" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("name", "value"), [("RELAY_ALLOWED_SUBSCRIPTIONS", "prod-sub"),
                                             ("RELAY_ALLOWED_ALERT_RULES", "prod-*")])
def test_malformed_allow_list_is_a_settings_error_naming_it(relay_env, name, value):
    from relay.settings import SettingsError

    with pytest.raises(SettingsError, match=name):
        Settings.from_env({**relay_env, name: value})


def test_report_intake_counts(fault_report):
    assert CASES, "run with the tests above"
    fault_report("intake hardening", "; ".join(f"{n} {group}" for group, n in sorted(CASES.items())))
