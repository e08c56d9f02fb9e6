"""Reconciliation end to end: the relay (intake, SQLite store, delivery worker, dry-run target) is down
while 20 alerts fire and 10 of them resolve in the Alerts Management fake; after the restart,
reconciliation (the real SDK over HTTPS, under the store's lease) opens exactly the 20 incidents and
resolves the 10, and the late webhooks that follow are 200 duplicates that create nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import relay.app
from relay.app import RECONCILER_KEY, create_app
from relay.reconcile import azure_client_factory
from relay.settings import Settings
from tests.conftest import SAMPLES, scrape
from tests.fakes.alerts_management import FakeAlertsManagement
from tests.test_alerts_management_fake import StaticCredential

SUB = "11111111-2222-3333-4444-555555555555"
WIRED = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Insights/metricAlerts/cpu-high"
OTHER = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Insights/metricAlerts/not-ours"


def webhook(alert: dict, condition: str) -> bytes:
    """The body Azure would have posted for this alert's event (the times as the API wrote them)."""
    doc = json.loads((SAMPLES / "testaction-metric-static-fired.json").read_text())
    e = doc["data"]["essentials"]
    a = alert["properties"]["essentials"]
    e.update(alertId=alert["id"], alertRule="cpu-high", monitorCondition=condition,
             firedDateTime=a["startDateTime"], alertTargetIDs=[a["targetResource"]])
    e.pop("resolvedDateTime", None)
    if condition == "Resolved":
        e["resolvedDateTime"] = a["monitorConditionResolvedDateTime"]
    return json.dumps(doc).encode()


def calls(out) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


async def test_missed_alerts_are_reconciled_once_and_late_webhooks_are_duplicates(
        aiohttp_client, issuer, tmp_path, monkeypatch):
    fake = FakeAlertsManagement()
    await fake.start()
    out = tmp_path / "calls.jsonl"
    config = tmp_path / "relay.yaml"
    config.write_text(
        "targets:\n  itsm: {kind: dry_run, path: " + json.dumps(str(out)) + "}\n"
        "routes:\n  - target: itsm\n"
        "delivery: {poll_seconds: 0.05}\n"
        f"reconcile:\n  subscriptions: [{SUB}]\n  rule_ids: [{WIRED}]\n"
    )
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'r.db'}",
                                  "RELAY_CONFIG": str(config)})
    clients = azure_client_factory(StaticCredential(), base_url=fake.url, connection_verify=fake.ca_path)
    monkeypatch.setattr(relay.app, "RECONCILE_FIRST_PASS_SECONDS", 0.1)
    try:
        # The relay ran once (and stopped): nothing to reconcile yet.
        first = await aiohttp_client(create_app(settings, deliver=True, alerts_clients=clients))
        await first.close()

        # Meanwhile, in Azure: 20 alerts of the wired rule fire, 10 resolve; noise that is not ours.
        now = dt.datetime.now(dt.UTC)
        fired = [fake.add_alert(SUB, WIRED, now - dt.timedelta(minutes=30 - i)) for i in range(20)]
        for alert in fired[:10]:
            fake.resolve(alert["id"], now - dt.timedelta(minutes=5))
        fake.add_alert(SUB, OTHER, now - dt.timedelta(minutes=20))
        fake.add_alert(SUB, WIRED, now - dt.timedelta(minutes=20), suppressed=True)
        fake.add_alert(SUB, WIRED, now - dt.timedelta(days=2))  # outside the 24 h look-back

        client = await aiohttp_client(create_app(settings, deliver=True, alerts_clients=clients))
        reconciler = client.app[RECONCILER_KEY]
        for _ in range(300):
            got = calls(out)
            if reconciler.last_success and sum(c["call"] == "resolve" for c in got) >= 10:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything more would land now
        got = calls(out)
        creates = [c for c in got if c["call"] == "create"]
        resolves = [c for c in got if c["call"] == "resolve"]
        assert len(creates) == 20 and len(resolves) == 10, [c["call"] for c in got]
        assert len({c["correlation_key"] for c in creates}) == 20
        assert {r["correlation_key"] for r in resolves} == {a["id"].rsplit("/", 1)[-1] for a in fired[:10]}
        assert all("Reconciled by the relay" in c["incident"]["description"] for c in creates)
        assert all("Reconciled by the relay" in r["text"] for r in resolves)
        passes = reconciler.last_pass.as_dict()
        assert passes["accepted"] == {"Fired": 20, "Resolved": 10}
        assert passes["skipped"] == {"rule": 1, "suppressed": 1}

        metrics = await scrape(client)
        assert 'relay_reconciled_events_total{condition="Fired"} 20.0' in metrics
        assert 'relay_reconciled_events_total{condition="Resolved"} 10.0' in metrics
        ready = await (await client.get("/readyz")).json()
        assert ready["details"]["reconcile"]["last_success"] is not None

        # The webhooks Azure sends once the relay is back: every one a duplicate, nothing new delivered.
        headers = {"Authorization": issuer.authorization(), "Content-Type": "application/json"}
        for alert in fired:
            conditions = ["Fired", "Resolved"] if alert in fired[:10] else ["Fired"]
            for condition in conditions:
                resp = await client.post("/alerts", data=webhook(alert, condition), headers=headers)
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["status"] == "duplicate"
        # A second pass finds nothing new either.
        again = await reconciler.run_once()
        assert again.accepted == {"Fired": 0, "Resolved": 0} and again.duplicates == 30
        await asyncio.sleep(0.3)
        assert len(calls(out)) == len(got)
    finally:
        await fake.stop()
