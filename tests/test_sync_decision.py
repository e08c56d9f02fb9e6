"""Two-way sync's decision (relay.reconcile.sync_decision): tables for each rule, and properties over any
change, record and alert state."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery.routing import RouteSync
from relay.reconcile.sync_decision import (
    ALERT_STATES,
    AlertFacts,
    SyncAction,
    TicketFacts,
    decide_sync,
)
from relay.targets import TICKET_STATES, Ticket, TicketChange

NOW = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.UTC)
BOTH = RouteSync(close_alert=True, acknowledge_on_progress=True)


def change(state: str = "resolved", by: str | None = "alice", at: dt.datetime = NOW,
           ticket: str = "42") -> TicketChange:
    return TicketChange(Ticket(ticket, ticket), "key", state, at, by)


def alert(state: str = "New", modified: dt.datetime = NOW - dt.timedelta(hours=1),
          condition: str = "Fired") -> AlertFacts:
    return AlertFacts(state, condition, modified)


RECORD = TicketFacts("42", relay_account="relay-bot")
CASES = [
    # (what, change, record, alert, settings, action, reason contains)
    ("a person resolved: close", change(), RECORD, alert(), BOTH, SyncAction.CLOSE, "alice resolved"),
    ("a person closed (rejected): close", change("closed"), RECORD, alert(), BOTH, SyncAction.CLOSE, "closed"),
    ("an Acknowledged alert is closed too", change(), RECORD, alert("Acknowledged"), BOTH, SyncAction.CLOSE, ""),
    ("a resolved-in-Azure alert a person closes", change(), RECORD, alert(condition="Resolved"), BOTH,
     SyncAction.CLOSE, ""),
    ("a person took it: acknowledge", change("in_progress"), RECORD, alert(), BOTH, SyncAction.ACKNOWLEDGE, "took"),
    ("the relay's own resolve", change(by="relay-bot"), RECORD, alert(), BOTH, SyncAction.NOTHING, "relay's own"),
    ("the relay's account in another case", change(by="Relay-Bot"), RECORD, alert(), BOTH, SyncAction.NOTHING,
     "relay's own"),
    ("who is unknown, the relay resolved it", change(by=None), TicketFacts("42", relay_resolved=True), alert(), BOTH,
     SyncAction.NOTHING, "relay's own"),
    ("the relay's account unknown, the relay resolved it", change(), TicketFacts("42", relay_resolved=True), alert(),
     BOTH, SyncAction.NOTHING, "relay's own"),
    ("who is unknown, the relay did not resolve it", change(by=None), TicketFacts("42"), alert(), BOTH,
     SyncAction.CLOSE, "a person resolved"),
    ("the alert changed in Azure after the ticket", change(), RECORD, alert(modified=NOW + dt.timedelta(seconds=1)),
     BOTH, SyncAction.NOTHING, "changed in Azure"),
    ("already Closed", change(), RECORD, alert("Closed"), BOTH, SyncAction.NOTHING, "already Closed"),
    ("acknowledge only from New", change("in_progress"), RECORD, alert("Acknowledged"), BOTH, SyncAction.NOTHING,
     "only from New"),
    ("acknowledge of a Closed alert", change("in_progress"), RECORD, alert("Closed"), BOTH, SyncAction.NOTHING,
     "already Closed"),
    ("close_alert off", change(), RECORD, alert(), RouteSync(acknowledge_on_progress=True), SyncAction.NOTHING,
     "close_alert is off"),
    ("acknowledge_on_progress off (the default)", change("in_progress"), RECORD, alert(), RouteSync(close_alert=True),
     SyncAction.NOTHING, "acknowledge_on_progress is off"),
    ("an open ticket", change("open"), RECORD, alert(), BOTH, SyncAction.NOTHING, "open"),
    ("an older ticket of the key", change(ticket="41"), RECORD, alert(), BOTH, SyncAction.NOTHING, "current ticket"),
    ("the alert is gone from Azure", change(), RECORD, None, BOTH, SyncAction.NOTHING, "no longer has"),
    ("a change stamped ahead of the relay's clock", change(at=NOW + dt.timedelta(hours=1)), RECORD, alert(), BOTH,
     SyncAction.NOTHING, "ahead of the relay's clock"),
]


@pytest.mark.parametrize(("what", "chg", "record", "azure", "settings", "action", "reason"), CASES,
                         ids=[c[0] for c in CASES])
def test_decision_table(what, chg, record, azure, settings, action, reason):
    d = decide_sync(chg, record, azure, settings, NOW)
    assert d.action is action, f"{what}: {d}"
    assert reason in d.reason, f"{what}: {d.reason}"


def test_a_persons_close_is_recorded_even_when_the_alert_does_not_move():
    assert decide_sync(change(), RECORD, alert("Closed"), BOTH, NOW).record_person_close
    assert decide_sync(change(), RECORD, alert(), RouteSync(acknowledge_on_progress=True), NOW).record_person_close
    assert not decide_sync(change(by="relay-bot"), RECORD, alert(), BOTH, NOW).record_person_close
    assert not decide_sync(change("in_progress"), RECORD, alert(), BOTH, NOW).record_person_close
    already = TicketFacts("42", person_closed=True, relay_account="relay-bot")
    assert not decide_sync(change(), already, alert(), BOTH, NOW).record_person_close


def test_by_default_nothing_moves():
    assert decide_sync(change(), RECORD, alert(), RouteSync(), NOW).action is SyncAction.NOTHING
    assert decide_sync(change("in_progress"), RECORD, alert(), RouteSync(), NOW).action is SyncAction.NOTHING


times = st.integers(-7200, 7200).map(lambda s: NOW + dt.timedelta(seconds=s))
changes = st.builds(change, st.sampled_from(TICKET_STATES), st.sampled_from(["alice", "relay-bot", None]), times,
                    st.sampled_from(["41", "42"]))
records = st.builds(TicketFacts, st.sampled_from(["42", None]), st.booleans(), st.booleans(),
                    st.sampled_from(["relay-bot", None]))
alerts = st.one_of(st.none(), st.builds(AlertFacts, st.sampled_from(ALERT_STATES),
                                        st.sampled_from(["Fired", "Resolved"]), times))
settings_ = st.builds(RouteSync, st.booleans(), st.booleans())


@given(changes, records, alerts, settings_)
def test_an_alert_is_moved_only_by_a_persons_change_newer_than_its_azure_state(chg, record, azure, settings):
    d = decide_sync(chg, record, azure, settings, NOW)
    if d.action is SyncAction.NOTHING:
        return
    assert azure is not None and azure.alert_state != "Closed"
    assert azure.last_modified <= chg.changed_at, "never an alert whose state changed after the ticket did"
    assert chg.changed_by != "relay-bot" or record.relay_account is None
    assert record.ticket_id == chg.ticket.id
    if d.action is SyncAction.CLOSE:
        assert settings.close_alert and chg.state in ("resolved", "closed")
    else:
        assert settings.acknowledge_on_progress and chg.state == "in_progress" and azure.alert_state == "New"
