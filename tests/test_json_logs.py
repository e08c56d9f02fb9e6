"""RELAY_LOG_FORMAT=json, driven for real: `relay serve` at DEBUG with a real dev token and a ServiceNow
password takes alerts, a 422 and probes, delivers to the ServiceNow fake; then every line of its log parses
as JSON, carries the documented fields, and holds neither the token, nor the password, nor an
Authorization header."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp

from devtools.dev_issuer import DevIssuer
from tests.e2e.cluster import episode, incidents_by_correlation, relay_env, write_config
from tests.fakes.servicenow import FakeServiceNow
from tests.relay_process import RelayProcess

PASSWORD = "s3cret-Password-only-in-the-env"


async def drive(relay: RelayProcess, auth: str, servicenow: FakeServiceNow) -> dict[str, int]:
    fired, resolved = episode(1, "jsonlog")
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    statuses: dict[str, int] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for name, body in (("fired", fired), ("again", fired), ("resolved", resolved),
                           ("legacy", b'{"schemaId": "AzureMonitorMetricAlert", "data": {}}')):
            async with http.post(f"{relay.url}/alerts", data=body, headers=headers) as resp:
                statuses[name] = resp.status
        async with http.post(f"{relay.url}/alerts", data=fired, headers={**headers, "Authorization": auth + "x"}) \
                as resp:
            statuses["bad token"] = resp.status
        for probe in ("/healthz", "/readyz", "/healthz"):
            async with http.get(relay.url + probe) as resp:
                statuses[probe] = resp.status
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            grouped = incidents_by_correlation(servicenow)
            if any(r.get("state") == "6" for rs in grouped.values() for r in rs):
                break
            await asyncio.sleep(0.2)
    return statuses


async def test_json_log_lines_parse_carry_fields_and_hold_no_secret_at_debug(tmp_path):
    servicenow = FakeServiceNow(password=PASSWORD)
    await servicenow.start()
    issuer = DevIssuer()
    try:
        with issuer.serving_in_thread():
            config = write_config(tmp_path / "relay.yaml", servicenow)
            env = {**relay_env(issuer, f"sqlite:///{tmp_path / 'relay.db'}", config, servicenow),
                   "RELAY_LOG_LEVEL": "DEBUG"}
            env.pop("RELAY_LOG_FORMAT", None)  # the default for a log that is not a terminal: json
            relay = RelayProcess(env, tmp_path / "relay.log")
            await asyncio.to_thread(relay.start)
            auth = issuer.authorization()
            try:
                statuses = await drive(relay, auth, servicenow)
            finally:
                relay.stop()
    finally:
        await servicenow.stop()
    assert statuses == {"fired": 202, "again": 200, "resolved": 202, "legacy": 422, "bad token": 401,
                        "/healthz": 200, "/readyz": 200}, statuses

    text = (tmp_path / "relay.log").read_text()
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"log line {n} is not JSON: {line[:300]}") from None
    assert len(records) > 10, f"only {len(records)} log lines at DEBUG"
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records), records[:3]

    token = auth.removeprefix("Bearer ")
    basic = base64.b64encode(f"{servicenow.username}:{PASSWORD}".encode()).decode()
    for secret, what in ((token, "the token"), (token.split(".")[1], "the token's claims"),
                         (token.split(".")[2], "the token's signature"), (PASSWORD, "the ServiceNow password"),
                         (basic, "the Basic credentials")):
        assert secret not in text, f"{what} reached the log"
    assert "authorization" not in text.lower().replace("authorization_code", ""), "an Authorization header was logged"

    accepted = [r for r in records if r.get("outcome") == "accepted"]
    assert [r["condition"] for r in accepted] == ["Fired", "Resolved"], accepted
    key = accepted[0]["alert_key"]
    assert all(r["alert_key"] == key and r["event_key"] for r in accepted), accepted
    created = [r for r in records if r.get("outcome") == "create"]
    assert len(created) == 1, [r["message"] for r in records if r["logger"].startswith("relay.delivery")]
    [c] = created
    assert c["target"] == "servicenow" and c["ticket"] and c["condition"] == "Fired", c
    assert c["alert_key"] == key and isinstance(c["latency_ms"], float), c
    assert c["subject"].startswith("[Sev2]") and "jsonlog-rule-1" in c["subject"], c
    sys_id = next(iter(servicenow.incidents))
    assert c["link"] == f"{servicenow.url}/nav_to.do?uri=incident.do%3Fsys_id%3D{sys_id}", c
    resolved = [r for r in records if r.get("outcome") == "resolve"]
    assert [r["condition"] for r in resolved] == ["Resolved"] and resolved[0]["ticket"] == c["ticket"], resolved

    [refused] = [r for r in records if r.get("status") == 422 and r["logger"] == "relay.intake"]
    assert refused["field"] == "schemaId" and "schemaId" in refused["message"], refused

    access = [r for r in records if r["logger"] == "aiohttp.access"]
    paths = [r.get("path") for r in access]
    assert paths.count("/alerts") == 5, paths
    assert "/healthz" not in paths and "/readyz" not in paths, "the probes were logged"
    assert all(isinstance(r["status"], int) and "latency_ms" in r for r in access), access[:2]


async def test_text_format_keeps_one_escaped_line_per_record(tmp_path):
    issuer = DevIssuer()
    with issuer.serving_in_thread():
        config = tmp_path / "relay.yaml"  # the dry-run calls to a file: the log holds only log lines
        config.write_text(f"targets:\n  t:\n    kind: dry_run\n    path: {tmp_path / 'calls.jsonl'}\n"
                          "routes:\n  - target: t\n")
        env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}", "RELAY_LOG_LEVEL": "INFO",
               "RELAY_LOG_FORMAT": "text", "RELAY_CONFIG": str(config),
               "RELAY_ALLOWED_SUBSCRIPTIONS": "99999999-9999-4999-8999-999999999999"}
        relay = RelayProcess(env, tmp_path / "relay.log")
        await asyncio.to_thread(relay.start)
        fired, _ = episode(2, "textlog")
        doc = json.loads(fired)
        # From a subscription outside the allow-list: refused with a log line naming its rule, which holds a
        # newline and a forged line after it.
        doc["data"]["essentials"]["alertRule"] = "rule\n2026-01-01 00:00:00,000 INFO relay.intake forged"
        doc["data"]["essentials"].pop("alertRuleID", None)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                async with http.post(f"{relay.url}/alerts", data=json.dumps(doc).encode(),
                                     headers={"Authorization": issuer.authorization(),
                                              "Content-Type": "application/json"}) as resp:
                    assert resp.status == 403
        finally:
            relay.stop()
    lines = (tmp_path / "relay.log").read_text().splitlines()
    assert lines and not any(line.startswith("{") for line in lines), lines[:3]
    assert any("relay listening on" in line for line in lines), lines
    [refused] = [line for line in lines if " WARNING relay.intake refused alert " in line]
    assert "rule rule\\n2026-01-01 00:00:00,000 INFO relay.intake forged" in refused, refused
    assert not any(line.startswith("2026-01-01 00:00:00,000 INFO relay.intake forged") for line in lines)
