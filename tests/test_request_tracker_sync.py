"""Request Tracker's `changed_since` (two-way sync's poll) against the fake REST2 server: the query, the
status table, who changed a ticket, and the time zone TicketSQL reads dates in."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest

from relay.targets import TICKET_STATES, can_sync, request_tracker
from relay.targets.target_config import TargetConfigError
from tests.fakes.request_tracker import FakeRequestTracker
from tests.test_request_tracker_target import QUEUE, an_incident, make_target

T0 = dt.datetime(2026, 12, 2, 10, 0, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


@pytest.fixture
async def fake() -> AsyncIterator[FakeRequestTracker]:
    server = FakeRequestTracker()
    server.add_queue(QUEUE, custom_fields=("AzureAlertId",))
    server.now = Clock(T0)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def target(fake: FakeRequestTracker) -> AsyncIterator[request_tracker.RequestTrackerTarget]:
    t = make_target(fake)
    yield t
    await t.close()


async def opened(fake: FakeRequestTracker, target, key: str, at: dt.datetime) -> str:
    fake.now.at = at
    return (await target.create(an_incident(key))).id


def test_request_tracker_declares_changed_since():
    assert can_sync(request_tracker.TARGET_CLASS)


@pytest.mark.parametrize(("status", "state"), [
    ("new", "open"), ("open", "in_progress"), ("stalled", "in_progress"), ("resolved", "resolved"),
    ("rejected", "closed"), ("deleted", "closed"), ("triage", "open"),
])
def test_rt_statuses_map_to_ticket_states(status, state, target):
    assert target.sync_state(status) == state
    assert state in TICKET_STATES


def test_a_custom_resolved_status_is_resolved(fake):
    t = make_target(fake, resolved_status="done")
    assert t.sync_state("done") == "resolved"


async def test_changed_since_answers_the_relays_tickets_changed_at_or_after_since_oldest_first(fake, target):
    first = await opened(fake, target, "k-1", T0)
    second = await opened(fake, target, "k-2", T0 + dt.timedelta(minutes=1))
    fake.add_ticket(QUEUE, status="open")  # a ticket a person opened: no correlation key
    fake.now.at = T0 + dt.timedelta(minutes=2)
    fake.act_as("alice", int(first), "resolved")
    changes = await target.changed_since(T0 + dt.timedelta(seconds=30))
    assert [(c.ticket.id, c.correlation_key) for c in changes] == [(second, "k-2"), (first, "k-1")]
    alice = changes[1]
    assert alice.state == "resolved" and alice.ticket.resolved and alice.changed_by == "alice"
    assert alice.changed_at == T0 + dt.timedelta(minutes=2) and alice.changed_at.tzinfo is not None
    assert changes[0].changed_by == "root" and changes[0].state == "open"
    # at or after: the instant itself is included
    assert [c.ticket.id for c in await target.changed_since(T0 + dt.timedelta(minutes=2))] == [first]


async def test_changed_since_is_bounded_by_limit(fake, target):
    for i in range(5):
        await opened(fake, target, f"k-{i}", T0 + dt.timedelta(seconds=i))
    changes = await target.changed_since(T0, limit=3)
    assert [c.correlation_key for c in changes] == ["k-0", "k-1", "k-2"]
    assert fake.calls_to("/tickets", "POST")[-1].form()["per_page"] == "3"


async def test_the_query_names_the_field_and_the_date_and_sorts_by_last_updated(fake, target):
    await target.changed_since(dt.datetime(2026, 12, 2, 11, 30, 5, 750000, tzinfo=dt.timezone(dt.timedelta(hours=1))))
    form = fake.calls_to("/tickets", "POST")[-1].form()
    assert form["query"] == "'CF.{AzureAlertId}' IS NOT NULL AND LastUpdated >= '2026-12-02 10:30:05'"
    assert (form["orderby"], form["order"]) == ("LastUpdated", "ASC")


async def test_the_date_is_written_in_the_accounts_time_zone(fake):
    fake.timezone = "US/Eastern"  # RT_Config.pm's default $Timezone
    t = make_target(fake, timezone="US/Eastern")
    try:
        await opened(fake, t, "k-old", T0 - dt.timedelta(minutes=10))
        new = await opened(fake, t, "k-new", T0 + dt.timedelta(minutes=10))
        changes = await t.changed_since(T0)
        assert [c.ticket.id for c in changes] == [new]
        assert fake.calls_to("/tickets", "POST")[-1].form()["query"].endswith("LastUpdated >= '2026-12-02 05:00:00'")
    finally:
        await t.close()


async def test_a_wrong_time_zone_option_drops_earlier_rows_and_says_so(fake, caplog):
    fake.timezone = "Asia/Tokyo"  # RT reads the date 9 h ahead of what the relay meant: earlier rows come back
    t = make_target(fake)  # timezone: UTC (the default)
    try:
        await opened(fake, t, "k-old", T0 - dt.timedelta(hours=1))
        changes = await t.changed_since(T0)
        assert changes == []
        assert "timezone option" in caplog.text
    finally:
        await t.close()


def test_an_unknown_time_zone_is_a_config_error_naming_the_option(fake):
    with pytest.raises(TargetConfigError) as err:
        make_target(fake, timezone="Mars/Olympus")
    assert "timezone" in str(err.value) and "Mars/Olympus" in str(err.value)


async def test_the_account_is_the_basic_user_else_the_creator_of_the_relays_tickets(fake, target):
    basic = make_target(fake, auth={"type": "basic", "username": "relay-bot", "password_env": "RT_PASSWORD"})
    assert basic.account == "relay-bot"
    await basic.close()
    assert target.account is None  # a token does not say whose it is
    await opened(fake, target, "k-1", T0)
    await target.changed_since(T0)
    assert target.account == "root"
