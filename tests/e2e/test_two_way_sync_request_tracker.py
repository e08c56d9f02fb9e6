"""Two-way sync end to end with the real Request Tracker: the relay (in process, SQLite store, the RT target,
the sync job under its lease) and the Alerts Management fake (the real SDK over HTTPS).

- a ticket a person (RT's `operator`, not the relay's account) resolves moves its alert to Closed within one
  poll, with a comment naming the ticket, and a later Resolved of that episode leaves the ticket alone;
- a ticket whose alert changed in Azure after the ticket did moves nothing;
- the relay's own resolve (the alert resolved in Azure) moves nothing.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from typing import Any

import aiohttp
import pytest

import relay.app
from relay.app import DELIVERY_CONFIG_KEY, STORE_KEY, TICKET_SYNC_KEY, create_app
from relay.reconcile import azure_client_factory
from relay.settings import Settings
from tests.conftest import load_sample, scrape
from tests.e2e.rt_relay import RT_TARGET, filled_in
from tests.fakes.alerts_management import FakeAlertsManagement
from tests.rt_server import RunningRT
from tests.test_alerts_management_fake import StaticCredential

pytestmark = pytest.mark.e2e

SUB = "0f0e0d0c-0b0a-0908-0706-050403020100"
RULE = f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Insights/metricAlerts/cpu-high"
INTERVAL = 10  # seconds between polls (the lowest `sync.interval_seconds` takes)

RELAY_CONFIG = "targets:\n  rt:\n" + RT_TARGET + """\
    ci_binding: none
routes:
  - target: rt
    sync: {{close_alert: true}}
sync: {{interval_seconds: {interval}}}
delivery:
  poll_seconds: 0.1
"""


def webhook(alert: dict[str, Any], condition: str) -> bytes:
    doc = load_sample("testaction-metric-static-fired.json")
    e = doc["data"]["essentials"]
    a = alert["properties"]["essentials"]
    e.update(alertId=alert["id"], alertRule="cpu-high", monitorCondition=condition, severity="Sev2",
             firedDateTime=a["startDateTime"], alertTargetIDs=[a["targetResource"]])
    e.pop("resolvedDateTime", None)
    if condition == "Resolved":
        e["resolvedDateTime"] = a["monitorConditionResolvedDateTime"]
    return json.dumps(doc).encode()


def guid(alert: dict[str, Any]) -> str:
    return alert["id"].rsplit("/", 1)[-1]


async def until(what: str, check: Any, limit: float = 90.0) -> Any:
    """Poll until `check()` returns something truthy; `limit` only guards against a hang."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"never saw {what}")
        await asyncio.sleep(0.25)


async def as_operator(rt: RunningRT, ticket_id: str, status: str) -> None:
    """The operator sets the ticket's status through REST2 with their own credentials (a person's change)."""
    basic = base64.b64encode(f"{rt.operator}:{rt.operator_password}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {basic}"}) as session:
        async with session.put(f"{rt.url}/REST/2.0/ticket/{ticket_id}", json={"Status": status}) as resp:
            assert resp.status == 200, f"the operator could not set #{ticket_id} {status}: {await resp.text()}"


async def test_a_persons_resolve_closes_the_alert_and_nothing_else_moves(
        rt_server, admin, aiohttp_client, issuer, tmp_path, monkeypatch):
    fake = FakeAlertsManagement()
    await fake.start()
    config = tmp_path / "relay.yaml"
    config.write_text(filled_in(RELAY_CONFIG, rt_server, interval=INTERVAL))
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'r.db'}",
                                  "RELAY_CONFIG": str(config)})
    monkeypatch.setenv("RT_TOKEN", rt_server.token)
    monkeypatch.setattr(relay.app, "SYNC_FIRST_POLL_SECONDS", 0.1)
    clients = azure_client_factory(StaticCredential(), base_url=fake.url, connection_verify=fake.ca_path,
                                   retry_backoff_factor=0.01)
    now = dt.datetime.now(dt.UTC)
    by_hand, changed_in_azure, by_the_relay = (
        fake.add_alert(SUB, RULE, now - dt.timedelta(minutes=m)) for m in (12, 11, 10))
    headers = {"Authorization": issuer.authorization(), "Content-Type": "application/json"}
    try:
        client = await aiohttp_client(create_app(settings, deliver=True, alerts_clients=clients))
        sync = client.app[TICKET_SYNC_KEY]
        assert client.app[DELIVERY_CONFIG_KEY].syncing_targets() == ("rt",)
        for alert in (by_hand, changed_in_azure, by_the_relay):
            assert (await client.post("/alerts", data=webhook(alert, "Fired"), headers=headers)).status == 202

        async def ticket_of(alert: dict[str, Any]) -> str | None:
            rows = await admin.tickets_with_key(guid(alert))
            return rows[0]["id"] if rows else None

        tickets = {guid(a): await until(f"the ticket of {guid(a)}", lambda a=a: ticket_of(a))
                   for a in (by_hand, changed_in_azure, by_the_relay)}
        await until("the first poll (it sets the cursor)", lambda: _true(sync.status()["rt"]["last_success"]))

        # The relay's own resolve: the alert resolved in Azure, its webhook came, the relay resolved the ticket.
        fake.resolve(by_the_relay["id"], dt.datetime.now(dt.UTC))
        assert (await client.post("/alerts", data=webhook(by_the_relay, "Resolved"), headers=headers)).status == 202
        relay_ticket = tickets[guid(by_the_relay)]

        async def relay_resolved() -> bool:
            return (await admin.ticket(relay_ticket))["Status"] == "resolved"

        await until("the relay's resolve in RT", relay_resolved)

        # A person resolves two tickets; one alert is then changed in the portal (after its ticket).
        await as_operator(rt_server, tickets[guid(by_hand)], "resolved")
        await as_operator(rt_server, tickets[guid(changed_in_azure)], "resolved")
        fake.change_in_portal(changed_in_azure["id"], "Acknowledged", dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2))
        last_change = max([(await admin.ticket(t))["LastUpdated"] for t in tickets.values()])
        polls_before = sync.status()["rt"]["polls"]

        async def polled_past_the_changes() -> bool:
            poll = sync.status()["rt"]["last_poll"] or {}
            return bool(poll.get("cursor")) and poll["cursor"] >= last_change

        await until("a poll past the ticket changes", polled_past_the_changes, limit=3 * INTERVAL)
        # Within one poll: the next one (or the one running as the changes were made, and the next).
        assert sync.status()["rt"]["polls"] - polls_before <= 2, sync.status()
        assert fake.state_changes == [(by_hand["id"], "Closed")], fake.state_changes
        comment = fake.state_comments[0][1] or ""
        assert f"rt ticket {tickets[guid(by_hand)]} was resolved by {rt_server.operator}" in comment, comment
        assert fake.alerts[by_hand["id"].lower()]["properties"]["essentials"]["alertState"] == "Closed"

        ready = await (await client.get("/readyz")).json()
        assert ready["details"]["sync"]["rt"]["last_success"] is not None, ready
        metrics = await scrape(client)
        assert 'relay_sync_actions_total{action="close",target="rt"} 1.0' in metrics

        # The person's close is in the ticket record: the episode's Resolved leaves the ticket alone.
        record = await client.app[STORE_KEY].get_ticket("rt", guid(by_hand))
        assert record is not None and record.data["closed_by"]["by"] == rt_server.operator
        history_before = len((await admin.get(f"/ticket/{tickets[guid(by_hand)]}/history"))["items"])
        fake.resolve(by_hand["id"], dt.datetime.now(dt.UTC))
        assert (await client.post("/alerts", data=webhook(by_hand, "Resolved"), headers=headers)).status == 202

        async def delivered() -> bool:
            trails = await client.app[STORE_KEY].alert_trail(by_hand["id"])
            return len(trails) == 2 and trails[-1].state == "delivered"

        await until("the Resolved delivered", delivered)
        history_after = len((await admin.get(f"/ticket/{tickets[guid(by_hand)]}/history"))["items"])
        assert history_after == history_before, "the relay touched a ticket a person had closed"
    finally:
        await fake.stop()


async def _true(value: Any) -> Any:
    return value
