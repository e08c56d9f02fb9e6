"""TicketSync (relay/reconcile/sync.py): a ticket change found through the store moves its alert in the
Alerts Management fake (the real SDK over HTTPS), the relay's own changes and shared tickets do not, a
person's close is recorded, and the poll keeps its cursor with its lease (both store backends)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from relay.alerts import parse_alert
from relay.delivery.alert_trail import show_text
from relay.delivery.config import parse_config
from relay.delivery.lifecycle import TicketState, decide, event_facts
from relay.reconcile import azure_client_factory
from relay.reconcile.sync import TicketSync, alert_parts, job_name, store_key
from relay.store.base import Event, TicketRecord, TrailEntry
from relay.store.leases import JobLease
from relay.store.sqlite import SqliteStore
from relay.targets import CHANGES_LIMIT, Ticket, TicketChange
from tests.conftest import SAMPLES
from tests.fakes.alerts_management import FakeAlertsManagement
from tests.test_alerts_management_fake import StaticCredential
from tests.test_store_contract import Backend, backend  # noqa: F401 (the fixture)

pytest_plugins = ["tests.azurite"]

SUB = "11111111-2222-3333-4444-555555555555"
RULE = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Insights/metricAlerts/cpu-high"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
RT = "  rt: {kind: request_tracker, base_url: 'https://rt.example.com', auth: {type: token, token_env: RT_TOKEN}}\n"
CONFIG = """\
targets:
""" + RT + """\
routes:
  - target: rt
    sync: {close_alert: true, acknowledge_on_progress: true}
"""


class Source:
    """A syncing target: answers `changed_since` from a list, as the contract says (at or after, oldest
    first, at most `limit`), and names its account."""

    account = "relay-bot"

    def __init__(self) -> None:
        self.changes: list[TicketChange] = []
        self.asked: list[dt.datetime] = []

    async def changed_since(self, since: dt.datetime, limit: int = CHANGES_LIMIT) -> list[TicketChange]:
        self.asked.append(since)
        return sorted((c for c in self.changes if c.changed_at >= since), key=lambda c: c.changed_at)[:limit]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAlertsManagement]:
    server = FakeAlertsManagement(now=NOW)  # change-state stamps lastModifiedDateTime with NOW
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def store(tmp_path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "relay.db")
    await s.open()
    yield s
    await s.close()


def clients(fake: FakeAlertsManagement):  # type: ignore[no-untyped-def]
    return azure_client_factory(StaticCredential(), base_url=fake.url, connection_verify=fake.ca_path,
                                retry_backoff_factor=0.01)


def make_sync(store, fake, config: str = CONFIG, source: Source | None = None, registry=None) -> TicketSync:  # type: ignore[no-untyped-def]
    return TicketSync(store, parse_config(config), {"rt": source or Source()}, clients(fake),
                      registry=registry or CollectorRegistry())


async def opened(store, fake: FakeAlertsManagement, ticket: str = "42", *, resolved: bool = False,
                 key: str | None = None) -> tuple[dict, str]:  # type: ignore[no-untyped-def]
    """An alert in Azure and the ticket record the worker would keep for it: (alert resource, store key)."""
    alert = fake.add_alert(SUB, RULE, NOW - dt.timedelta(minutes=30))
    guid = alert["id"].rsplit("/", 1)[-1]
    doc = json.loads((SAMPLES / "testaction-metric-static-fired.json").read_text())
    doc["data"]["essentials"].update(alertId=alert["id"], firedDateTime=alert["properties"]["essentials"]
                                     ["startDateTime"])
    parsed = parse_alert(doc)
    d = decide(event_facts(parsed), None, _policy())
    state = d.state.with_ticket(ticket, ticket)
    if resolved:
        state = TicketState.from_data({**state.to_data(), "open": False})
    await store.put_ticket(TicketRecord("rt", key or guid, state.to_data()))
    await store.accept(Event.from_alert(parsed, json.dumps(doc).encode()))
    return alert, key or guid


def _policy():  # type: ignore[no-untyped-def]
    from relay.delivery.lifecycle import Policy
    return Policy()


def change(key: str, state: str = "resolved", by: str | None = "alice", ticket: str = "42",
           at: dt.datetime | None = None) -> TicketChange:
    return TicketChange(Ticket(ticket, ticket), key, state, at or NOW, by)


def test_store_key_drops_the_incident_number_only():
    assert store_key("abc") == "abc"
    assert store_key("abc.2") == "abc"
    assert store_key("abc.02") == "abc.02"
    assert store_key("abc.1") == "abc.1"
    assert store_key("1.2.3") == "1.2"


def test_alert_parts_of_an_alerts_management_id():
    assert alert_parts(f"/subscriptions/{SUB}/providers/Microsoft.AlertsManagement/alerts/g-1") == (SUB, "g-1")
    assert alert_parts(f"/subscriptions/{SUB}/resourceGroups/rg") is None


async def test_a_persons_resolve_closes_the_alert_with_a_comment_naming_the_ticket(store, fake):
    alert, key = await opened(store, fake)
    registry = CollectorRegistry()
    sync = make_sync(store, fake, registry=registry)
    try:
        outcome = await sync.apply("rt", change(key))
    finally:
        await sync.close()
    assert outcome.startswith("close: alice resolved"), outcome
    assert fake.state_changes == [(alert["id"], "Closed")]
    assert fake.state_comments[0][1] and "rt ticket 42 was resolved by alice" in fake.state_comments[0][1]
    assert registry.get_sample_value("relay_sync_actions_total", {"target": "rt", "action": "close"}) == 1
    record = await store.get_ticket("rt", key)
    assert record is not None and not record.data["open"]
    assert record.data["closed_by"]["by"] == "alice" and record.closed_at is not None
    [trail] = await store.alert_trail(alert["id"])
    [attempt] = [a for a in trail.attempts if a.outcome == "sync"]
    assert [(e.what, e.ticket) for e in attempt.entries] == [("sync close", "42")]
    assert "resolved by alice" in attempt.entries[0].detail
    shown = show_text([trail])
    assert "two-way sync" in shown and "decide rt sync close (ticket 42)" in shown, shown


async def test_a_persons_take_acknowledges_a_new_alert_only(store, fake):
    alert, key = await opened(store, fake)
    sync = make_sync(store, fake)
    try:
        assert (await sync.apply("rt", change(key, "in_progress"))).startswith("acknowledge")
        again = await sync.apply("rt", change(key, "in_progress", at=NOW + dt.timedelta(minutes=1)))
        assert again.startswith("nothing: acknowledge only"), again
    finally:
        await sync.close()
    assert fake.state_changes == [(alert["id"], "Acknowledged")]


async def test_the_relays_own_resolve_moves_nothing(store, fake):
    _, key = await opened(store, fake, resolved=True)
    sync = make_sync(store, fake)
    try:
        assert (await sync.apply("rt", change(key, by="relay-bot"))).startswith("nothing: the relay's own")
    finally:
        await sync.close()
    assert fake.state_changes == [] and not fake.calls_to("/alerts/")


async def test_an_alert_changed_in_azure_after_the_ticket_moves_nothing(store, fake):
    alert, key = await opened(store, fake)
    fake.change_in_portal(alert["id"], "Acknowledged", NOW + dt.timedelta(seconds=5))
    sync = make_sync(store, fake)
    try:
        outcome = await sync.apply("rt", change(key))
    finally:
        await sync.close()
    assert outcome.startswith("nothing: the alert changed in Azure"), outcome
    assert fake.state_changes == []


async def test_sync_off_on_the_route_moves_nothing(store, fake):
    _, key = await opened(store, fake)
    sync = make_sync(store, fake, config="targets:\n" + RT + "routes:\n  - target: rt\n")
    try:
        assert (await sync.apply("rt", change(key))) == "nothing: two-way sync is off on the alert's route"
    finally:
        await sync.close()
    assert fake.state_changes == []


async def test_the_route_is_found_from_the_stored_event_when_routes_to_the_target_differ(store, fake):
    _, key = await opened(store, fake)
    config = ("targets:\n" + RT + "routes:\n"
              "  - target: rt\n    match: {severity: Sev0}\n"
              "  - target: rt\n    sync: {close_alert: true}\n")  # the sample is Sev3: the second route
    sync = make_sync(store, fake, config=config)
    try:
        assert (await sync.apply("rt", change(key))).startswith("close")
    finally:
        await sync.close()


@pytest.mark.parametrize(("key", "why"), [
    ("ci-0123abcd", "configuration item"), ("grp-0123abcd", "storm group"), ("sh-abc-def", "Service Health"),
    ("no-such-key", "no record"),
])
async def test_tickets_that_are_not_one_alerts_are_skipped_with_a_reason(store, fake, key, why):
    sync = make_sync(store, fake)
    try:
        outcome = await sync.apply("rt", change(key))
    finally:
        await sync.close()
    assert outcome.startswith("skipped") and why in outcome, outcome


async def test_an_older_ticket_of_the_key_moves_nothing(store, fake):
    _, key = await opened(store, fake, ticket="43")
    sync = make_sync(store, fake)
    try:
        assert "current ticket" in await sync.apply("rt", change(key + ".2", ticket="42"))
    finally:
        await sync.close()
    assert fake.state_changes == []


async def test_a_429_is_retried_by_the_client(store, fake):
    alert, key = await opened(store, fake)
    fake.inject("status", status=429, times=2, retry_after="0", path="changestate")
    sync = make_sync(store, fake)
    try:
        assert (await sync.apply("rt", change(key))).startswith("close")
    finally:
        await sync.close()
    assert fake.state_changes == [(alert["id"], "Closed")]


async def test_a_refusal_no_retry_can_fix_is_counted_failed_and_passed_over(store, fake):
    _, key = await opened(store, fake)
    fake.inject("status", status=403, times=1, path="changestate")
    registry = CollectorRegistry()
    sync = make_sync(store, fake, registry=registry)
    try:
        assert (await sync.apply("rt", change(key))).startswith("failed: Azure refused change-state (403)")
    finally:
        await sync.close()
    assert registry.get_sample_value("relay_sync_actions_total", {"target": "rt", "action": "failed"}) == 1


async def test_a_trail_attempt_is_added_to_a_stored_event_on_both_backends(backend: Backend) -> None:  # noqa: F811
    store = await backend.replica()
    doc = json.loads((SAMPLES / "testaction-metric-static-fired.json").read_text())
    event = Event.from_alert(parse_alert(doc), json.dumps(doc).encode())
    await store.accept(event)
    entry = TrailEntry(at=1.0, kind="decision", target="rt", what="sync nothing", detail="why", ticket="7")
    assert await store.add_trail(event.alert_id, event.key, "sync", (entry,))
    assert not await store.add_trail(event.alert_id, "0" * 64, "sync", (entry,))
    [trail] = await store.alert_trail(event.alert_id)
    assert [(a.outcome, a.entries) for a in trail.attempts] == [("sync", (entry,))]
    assert [t.ticket for t in trail.tickets] == ["7"]


# -- the poll ------------------------------------------------------------------------------------


async def test_the_first_poll_starts_from_now_and_later_ones_page_on_from_the_cursor(
        backend: Backend, fake) -> None:  # noqa: F811
    store = await backend.replica()
    source = Source()
    alert, key = await opened(store, fake)
    source.changes.append(change(key, at=NOW - dt.timedelta(hours=1)))  # history: never synced
    sync = make_sync(store, fake, source=source)
    sync.wall_clock = lambda: NOW.timestamp()
    lease = JobLease(store, job_name("rt"), owner="me", seconds=600)
    try:
        assert await lease.acquire()
        first = await sync.poll("rt", lease)
        assert first.changes == 0 and source.asked == []
        assert await lease.get("cursor") == NOW.strftime("%Y-%m-%dT%H:%M:%SZ")

        source.changes.append(change(key, at=NOW + dt.timedelta(seconds=10)))
        second = await sync.poll("rt", lease)
        assert second.actions == {"close": 1}
        assert fake.state_changes == [(alert["id"], "Closed")]
        # The change at the cursor's instant is not applied again.
        third = await sync.poll("rt", lease)
        assert third.changes == 1 and third.actions == {}
        assert sync.status()["rt"]["last_success"] is not None
    finally:
        await sync.close()


async def test_a_poll_pages_through_more_changes_than_one_call_answers(store, fake):
    source = Source()
    sync = make_sync(store, fake, source=source)
    sync.wall_clock = lambda: NOW.timestamp()
    for i in range(CHANGES_LIMIT + 30):  # tickets the store has no record of: each skipped
        source.changes.append(change(f"k-{i}", ticket=str(i), at=NOW + dt.timedelta(seconds=i // 2)))
    lease = JobLease(store, job_name("rt"), owner="me", seconds=600)
    try:
        assert await lease.acquire()
        await sync.poll("rt", lease)
        result = await sync.poll("rt", lease)
    finally:
        await sync.close()
    assert result.actions == {"skipped": CHANGES_LIMIT + 30}
    assert len(source.asked) == 2


async def test_a_whole_page_at_one_instant_does_not_stall_the_poll(store, fake):
    source = Source()
    sync = make_sync(store, fake, source=source)
    sync.wall_clock = lambda: NOW.timestamp()
    for i in range(CHANGES_LIMIT + 5):
        source.changes.append(change(f"k-{i}", ticket=str(i), at=NOW))
    source.changes.append(change("later", ticket="later", at=NOW + dt.timedelta(seconds=3)))
    lease = JobLease(store, job_name("rt"), owner="me", seconds=600)
    try:
        assert await lease.acquire()
        await sync.poll("rt", lease)
        await sync.poll("rt", lease)
        result = await sync.poll("rt", lease)
    finally:
        await sync.close()
    assert await lease.get("cursor") == (NOW + dt.timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert result.actions == {}


async def test_at_the_defaults_each_syncing_target_is_polled_every_60_s_under_its_own_lease(
        tmp_path, monkeypatch, aiohttp_client, issuer, fake):  # type: ignore[no-untyped-def]
    """The e2e polls every 10 s (the lowest interval); this shows what a user's config without `sync:` gets:
    the app polls each syncing target every 60 s, the first poll 10 s after start, under `sync-<target>`'s
    lease (two intervals and a minute), and stops the poll with the app."""
    import relay.app
    from relay.app import SYNC_FIRST_POLL_SECONDS, create_app
    from relay.settings import Settings

    scheduled: list[dict[str, object]] = []

    async def recording_run_leased(lease, *, every, run, stopping, first):  # type: ignore[no-untyped-def]
        scheduled.append({"job": lease.name, "seconds": lease.seconds, "every": every, "first": first})
        await stopping.wait()

    monkeypatch.setattr(relay.app, "run_leased", recording_run_leased)
    monkeypatch.setenv("RT_TOKEN", "placeholder")
    (tmp_path / "relay.yaml").write_text(CONFIG)
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'r.db'}",
                                  "RELAY_CONFIG": str(tmp_path / "relay.yaml")})
    app = create_app(settings, deliver=True, alerts_clients=clients(fake))
    client = await aiohttp_client(app)
    sync_jobs = [s for s in scheduled if str(s["job"]).startswith("sync")]
    assert sync_jobs == [{"job": job_name("rt"), "seconds": 60 * 2 + 60, "every": 60, "first": SYNC_FIRST_POLL_SECONDS}]
    assert SYNC_FIRST_POLL_SECONDS == 10
    await client.close()
