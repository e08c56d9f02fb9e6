"""The alert trail through the running relay (issue 18 item 4): intake, the worker's decisions and calls
against the Request Tracker fake, the store's record of them, and `relay alerts show|list` reading it
beside the relay; plus the page-independent pieces (`--since` parsing, the text rendering).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.app import create_app, metrics_url
from relay.cli import main
from relay.delivery.alert_trail import parse_since, show_text
from relay.settings import Settings
from relay.store.base import (
    TRAIL_DETAIL_LIMIT,
    TRAIL_ENTRIES_LIMIT,
    TRAIL_JSON_LIMIT,
    Attempt,
    EventTrail,
    TicketLink,
    TrailEntry,
    trail_from_json,
    trail_json,
)
from relay.store.sqlite import SqliteStore
from tests.fakes.request_tracker import FakeRequestTracker
from tests.test_worker import GUID, SUB, T1, alert_body

QUEUE = "Azure Alerts"
ALERT_ID = f"/subscriptions/{SUB}/providers/Microsoft.AlertsManagement/alerts/{GUID}"


def relay_config(tmp_path: Path, rt_url: str) -> Path:
    config = tmp_path / "relay.yaml"
    config.write_text(
        "targets:\n"
        "  rt:\n"
        "    kind: request_tracker\n"
        f"    base_url: {json.dumps(rt_url)}\n"
        "    auth: {type: token, token_env: RT_TOKEN}\n"
        f"    queue: {json.dumps(QUEUE)}\n"
        "    ci_binding: none\n"
        "routes:\n  - target: rt\n"
        # Short back-off so the retried create comes round within the test (the defaults are 5 s and up).
        "delivery: {poll_seconds: 0.05, backoff_base_seconds: 0.05, backoff_max_seconds: 0.2}\n"
    )
    return config


@pytest.fixture
async def rt() -> Any:
    fake = FakeRequestTracker()
    fake.add_queue(QUEUE, custom_fields=("AzureAlertId",))
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def relay(aiohttp_client, issuer, tmp_path, rt, monkeypatch, unused_tcp_port):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RT_TOKEN", rt.token)
    db = tmp_path / "relay.db"
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{db}",
                                  "RELAY_CONFIG": str(relay_config(tmp_path, rt.url)),
                                  "RELAY_METRICS_PORT": str(unused_tcp_port)})
    client = await aiohttp_client(create_app(settings, deliver=True))
    client.db = db  # type: ignore[attr-defined]
    return client


async def post(client: Any, issuer: Any, body: bytes) -> None:
    resp = await client.post("/alerts", data=body, headers={"Authorization": issuer.authorization(),
                                                            "Content-Type": "application/json"})
    assert resp.status == 202, await resp.text()


async def settled(db: Path, count: int) -> list[EventTrail]:
    """Wait until `count` events are stored and none is pending; read them beside the relay."""
    store = SqliteStore(db)
    await store.open()
    try:
        deadline = time.monotonic() + 30
        while True:
            events = await store.recent_events()
            if len(events) >= count and all(e.state != "pending" for e in events):
                return events
            if time.monotonic() > deadline:
                pytest.fail(f"events not settled in 30 s: {[(e.condition, e.state) for e in events]}")
            await asyncio.sleep(0.05)
    finally:
        await store.close()


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def test_trail_records_each_attempt_decision_and_call_of_a_delivered_alert(relay, issuer, rt, capsys):
    # The first call (the search for a ticket under the alert's key) fails; the retry works.
    rt.inject("status", status=503, path="/REST/2.0/tickets", method="POST")
    await post(relay, issuer, alert_body())
    [listed] = await settled(relay.db, 1)
    assert listed.state == "delivered"
    [ticket_id] = [str(t) for t in rt.tickets]
    link = f"{rt.url}/Ticket/Display.html?id={ticket_id}"
    assert listed.tickets == (TicketLink("rt", ticket_id, link),), "the listing carries the ticket and its link"

    store = SqliteStore(relay.db)
    await store.open()
    try:
        [trail] = await store.alert_trail(ALERT_ID)
    finally:
        await store.close()
    assert [a.outcome for a in trail.attempts] == ["retry", "delivered"]
    first, second = trail.attempts
    assert "503" in first.error
    assert [(e.kind, e.what, e.status) for e in first.entries] == [("decision", "route", ""),
                                                                   ("call", "search", "503")]
    assert [(e.kind, e.what, e.status) for e in second.entries] == [
        ("decision", "route", ""), ("call", "search", "ok"), ("decision", "create", ""), ("call", "create", "ok")
    ], "the route taken, the search, the lifecycle's action, the create"
    [created] = [e for e in second.entries if e.kind == "call" and e.what == "create"]
    assert (created.status, created.ticket, created.link) == ("ok", ticket_id, link)
    assert created.latency_ms is not None and created.latency_ms >= 0

    capsys.readouterr()
    assert await cli("alerts", "--store", f"sqlite:///{relay.db}", "show", ALERT_ID.upper()) == 0
    out = capsys.readouterr().out
    assert f"alert {ALERT_ID}" in out
    assert "attempt 1" in out and "retry" in out and "attempt 2" in out and "delivered" in out
    assert f"rt {ticket_id} <{link}>" in out
    assert "call   rt search: 503" in out and "call   rt create: ok" in out
    assert rt.token not in out, "the trail never shows a credential"

    assert await cli("alerts", "--store", f"sqlite:///{relay.db}", "list", "--since", "1h", "--json") == 0
    [line] = capsys.readouterr().out.splitlines()
    doc = json.loads(line)
    assert (doc["alert_id"], doc["state"], doc["tickets"][0]["ticket"]) == (ALERT_ID, "delivered", ticket_id)


async def test_dead_letter_and_its_error_are_in_the_trail_and_the_list_filters_by_state(relay, issuer, rt, capsys):
    rt.inject("status", status=400, path="/ticket", method="POST")  # a request RT refuses: not retryable
    await post(relay, issuer, alert_body())
    [listed] = await settled(relay.db, 1)
    assert listed.state == "dead"
    db = f"sqlite:///{relay.db}"
    capsys.readouterr()
    assert await cli("alerts", "--store", db, "list", "--state", "dead") == 0
    out = capsys.readouterr().out
    assert GUID in out and "dead" in out
    assert await cli("alerts", "--store", db, "list", "--state", "delivered") == 0
    assert capsys.readouterr().out.strip() == "no events"
    assert await cli("alerts", "--store", db, "show", listed.key) == 0, "an event key names its alert"
    out = capsys.readouterr().out
    assert "dead_letter" in out and "400" in out


async def test_status_page_serves_on_the_admin_port_only(relay, issuer, rt):
    await post(relay, issuer, alert_body())
    await settled(relay.db, 1)
    assert (await relay.get("/status")).status == 404, "the status page is never on the public listener"
    base = metrics_url(relay.app).removesuffix("/metrics")
    async with relay.session.get(f"{base}/status") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert "<script" not in page.lower(), "the page runs no script"
    assert f"{rt.url}/Ticket/Display.html?id=1" in page
    assert "<td class='circuit closed'>closed</td>" in page
    assert "id='target-check'" in page, "the page has its target check section (not run yet, or its result)"
    async with relay.session.get(f"{base}/status/alert", params={"id": ALERT_ID}) as resp:
        assert resp.status == 200
        assert "Attempt 1" in await resp.text()
    async with relay.session.get(f"{base}/status/alert") as resp:
        assert resp.status == 400


def test_alerts_commands_never_create_a_store(tmp_path, capsys):
    missing = tmp_path / "nope" / "relay.db"
    for args in (["list"], ["show", ALERT_ID]):
        assert main(["alerts", "--store", f"sqlite:///{missing}", *args]) == 2
        assert "no store at" in capsys.readouterr().err
    assert not missing.parent.exists(), "a read-only command created the store's directory"


def test_alerts_show_of_an_unknown_alert_says_so_and_fails(empty_store, capsys):
    db = empty_store
    assert main(["alerts", "--store", f"sqlite:///{db}", "show", ALERT_ID]) == 1
    assert "no stored event of alert" in capsys.readouterr().err
    assert main(["alerts", "--store", f"sqlite:///{db}", "list", "--since", "yesterday"]) == 2
    assert "--since 'yesterday'" in capsys.readouterr().err
    assert main(["alerts", "--store", f"sqlite:///{db}", "list", "--limit", "0"]) == 2


@pytest.mark.parametrize(("text", "seconds_before"), [
    ("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800), ("1w", 604800), (" 1.5h ", 5400)])
def test_since_takes_a_duration_before_now(text, seconds_before):
    assert parse_since(text, 1_000_000.0) == 1_000_000.0 - seconds_before


def test_since_takes_an_iso_time_utc_when_no_zone_is_given():
    assert parse_since("2025-01-31T08:00:00Z", 0) == parse_since("2025-01-31T08:00:00", 0) == 1738310400.0
    with pytest.raises(ValueError, match="give a duration"):
        parse_since("1 fortnight", 0)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from("smhdw"))
def test_since_is_never_after_now_and_grows_with_the_duration(n, unit):
    now = 2e9
    assert parse_since(f"{n}{unit}", now) <= now
    assert parse_since(f"{n + 1}{unit}", now) < parse_since(f"{n}{unit}", now)


@given(st.text(max_size=40))
def test_show_text_keeps_every_error_on_one_line(error):
    trail = EventTrail("k" * 64, ALERT_ID, "Fired", "t", 0.0, "dead",
                       (Attempt(0.0, "dead_letter", error, (TrailEntry(0.0, "call", "rt", "create", error, "400"),)),),
                       ())
    lines = show_text([trail]).splitlines()
    assert len(lines) == 5, lines  # alert, blank, event, attempt, its one call: nothing spills over


texts = st.text(max_size=TRAIL_DETAIL_LIMIT)
entries = st.builds(
    TrailEntry,
    at=st.integers(min_value=0, max_value=4 * 10**12).map(lambda n: n / 1000),
    kind=st.sampled_from(["decision", "call"]),
    target=texts, what=texts, detail=texts, status=texts,
    latency_ms=st.none() | st.integers(min_value=0, max_value=10**8).map(lambda n: n / 10),
    ticket=texts, link=texts,
)


@given(st.lists(entries, max_size=TRAIL_ENTRIES_LIMIT))
def test_an_attempts_entries_come_back_from_storage_as_they_went_in(attempt):
    stored = trail_json(attempt)
    assert len(stored) <= TRAIL_JSON_LIMIT or len(attempt) <= 1
    back = trail_from_json(stored)
    if len(stored) <= TRAIL_JSON_LIMIT and len(back) == len(attempt):
        assert back == tuple(attempt)
    assert back[:1] == tuple(attempt[:1]) and back[-1:] == tuple(attempt[-1:]), "the first and last entries stay"


@given(st.lists(entries, min_size=TRAIL_ENTRIES_LIMIT + 1, max_size=3 * TRAIL_ENTRIES_LIMIT))
def test_a_long_attempt_is_cut_to_the_limit_keeping_how_it_began_and_ended(attempt):
    back = trail_from_json(trail_json(attempt))
    assert len(back) <= TRAIL_ENTRIES_LIMIT
    assert back[0] == attempt[0] and back[-1] == attempt[-1]


def test_unreadable_stored_trail_reads_as_empty_not_an_error():
    assert trail_from_json("") == () and trail_from_json(None) == () and trail_from_json("{not json") == ()
    assert trail_from_json('[1, {"kind": "call", "at": 2}]') == (TrailEntry(at=2.0, kind="call"),)


async def test_resolved_event_trail_names_the_ticket_it_resolved(relay, issuer, rt):
    await post(relay, issuer, alert_body())
    await settled(relay.db, 1)
    await post(relay, issuer, alert_body(condition="Resolved", resolved=T1))
    await settled(relay.db, 2)
    store = SqliteStore(relay.db)
    await store.open()
    try:
        fired, resolved = await store.alert_trail(ALERT_ID)
    finally:
        await store.close()
    assert (fired.condition, resolved.condition) == ("Fired", "Resolved")
    [attempt] = resolved.attempts
    link = f"{rt.url}/Ticket/Display.html?id=1"
    [decision] = [e for e in attempt.entries if e.kind == "decision" and e.target == "rt"]
    assert (decision.what, decision.ticket, decision.link) == ("resolve", "1", link), "the decision names its ticket"
    [call] = [e for e in attempt.entries if e.kind == "call" and e.what == "resolve"]
    assert (call.status, call.ticket, call.link) == ("ok", "1", link), "the call names the ticket it acted on"
    assert resolved.tickets == (TicketLink("rt", "1", link),)
    assert rt.tickets[1]["Status"] == "resolved"
