"""The lifecycle after a person closed the ticket (two-way sync): later events of the same episode leave
it alone, a re-fire follows on_refire, and the mark survives the store's round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery.lifecycle import (
    Action,
    EventFacts,
    Kind,
    Policy,
    TicketState,
    closed_by_person,
    decide,
    instant,
)
from relay.schema import OnRefire

A = "alert-a"


def t(seconds: int) -> str:
    return instant(f"2024-05-01T10:{seconds // 60:02d}:{seconds % 60:02d}Z")


def fired(at: int, episode: int | None = None) -> EventFacts:
    return EventFacts(A, Kind.FIRED, t(at if episode is None else episode), t(at))


def resolved(at: int, episode: int) -> EventFacts:
    return EventFacts(A, Kind.RESOLVED, t(episode), t(at))


def open_ticket() -> TicketState:
    d = decide(fired(0), None, Policy())
    return d.state.with_ticket("42", "42")


def person_closed() -> TicketState:
    closed = closed_by_person(open_ticket(), ticket_id="42", by="alice", at="2024-05-01T10:01:00Z")
    assert closed is not None
    return closed


def test_a_person_closing_the_ticket_records_who_and_when_and_the_ticket_is_no_longer_open():
    st_ = person_closed()
    assert not st_.open
    assert st_.closed_by == {"by": "alice", "at": "2024-05-01T10:01:00Z", "ticket": "42"}
    assert TicketState.from_data(st_.to_data()) == st_


def test_a_later_resolve_of_the_same_episode_only_goes_to_the_trail():
    d = decide(resolved(120, episode=0), person_closed(), Policy())
    assert d.action is Action.RECORD
    assert "closed by alice" in d.reason


def test_a_repeat_of_the_same_episode_calls_nothing():
    d = decide(fired(90, episode=0), person_closed(), Policy())
    assert not d.action.calls_target


@pytest.mark.parametrize(("on_refire", "action"), [
    (OnRefire.NEW, Action.NEW), (OnRefire.REOPEN, Action.REOPEN), (OnRefire.IGNORE, Action.RECORD),
])
def test_a_refire_follows_on_refire_and_opening_clears_the_mark(on_refire, action):
    d = decide(fired(300), person_closed(), Policy(on_refire=on_refire))
    assert d.action is action
    if action.opens_incident or action is Action.REOPEN:
        assert d.state.closed_by is None and d.state.open


def test_nothing_is_recorded_for_another_ticket_or_twice():
    assert closed_by_person(open_ticket(), ticket_id="41", by="alice", at="x") is None
    assert closed_by_person(person_closed(), ticket_id="42", by="bob", at="y") is None


def test_records_without_the_mark_read_as_before():
    data = open_ticket().to_data()
    assert "closed_by" not in data
    assert TicketState.from_data(data).closed_by is None


@given(st.lists(st.tuples(st.sampled_from([Kind.FIRED, Kind.RESOLVED]), st.integers(0, 100)), max_size=8))
def test_no_event_of_the_closed_episode_ever_calls_the_target(events):
    state = person_closed()
    for kind, at in events:
        event = EventFacts(A, kind, t(0), t(60 + at))
        d = decide(event, state, Policy())
        assert not d.action.calls_target, (kind, at, d)
        state = d.state
