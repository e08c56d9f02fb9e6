"""The pure pieces that keep a crash or a lost store from doubling a step: step markers and `step_done`,
`closed_at`, and the decision for a key the store holds no record of (`recovered_state`,
`decide_recovered`, `orphaned`). Tables, then hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery.lifecycle import (
    Action,
    EventFacts,
    Kind,
    Policy,
    closed_at,
    correlation_key,
    decide,
    decide_recovered,
    generation_of,
    instant,
    orphaned,
    recovered_state,
    step_done,
    step_intent,
    step_marker,
    step_unsettled,
    twin_keys,
)
from relay.store.base import idempotency_key
from relay.targets import FoundTicket, Ticket, TicketView

KEY = "0b1c2d3e-0000-4000-8000-00000000abcd"
A = "alert-a"


def t(seconds: int) -> str:
    return instant(f"2024-05-01T10:{seconds // 60:02d}:{seconds % 60:02d}Z")


def fired(at: int = 0) -> EventFacts:
    return EventFacts(A, Kind.FIRED, t(at), t(at))


def resolved(fired_at: int = 0, at: int = 60) -> EventFacts:
    return EventFacts(A, Kind.RESOLVED, t(fired_at), t(at))


def update(at: int = 90) -> EventFacts:
    return EventFacts(A, Kind.UPDATE, t(at), t(at))


def ticket(generation: int, *, open_: bool, key: str = KEY) -> FoundTicket:
    return FoundTicket(correlation_key(key, generation), Ticket(f"id{generation}", f"N{generation}", not open_))


# -- generation_of: the inverse of correlation_key ---------------------------------------------------

@pytest.mark.parametrize(("found", "expected"), [
    (KEY, 1),
    (KEY.upper(), 1),
    (f"{KEY}.2", 2),
    (f"{KEY}.17", 17),
    (f"{KEY}.1", None),  # the first incident never carries a suffix
    (f"{KEY}.0", None),
    (f"{KEY}.02", None),
    (f"{KEY}.x", None),
    (f"{KEY}.", None),
    (f"{KEY}2", None),  # a prefix search also finds longer keys
    (f"{KEY}.2.3", None),
    ("other", None),
])
def test_generation_of_reads_only_the_key_and_its_numbered_successors(found, expected):
    assert generation_of(KEY, found) == expected


@given(st.integers(1, 10_000))
def test_generation_of_inverts_correlation_key(generation):
    assert generation_of(KEY, correlation_key(KEY, generation)) == generation


# -- steps -------------------------------------------------------------------------------------------

def test_the_marker_is_short_derived_from_the_event_key_and_differs_between_events():
    one = step_marker(idempotency_key("/sub/x/alerts/1", "Fired", "2024-05-01T10:00:00Z"))
    two = step_marker(idempotency_key("/sub/x/alerts/1", "Resolved", "2024-05-01T10:05:00Z"))
    assert one.startswith("[azure-relay:") and one.endswith("]") and len(one) == len("[azure-relay:]") + 16
    assert one != two
    with pytest.raises(ValueError, match="event key"):
        step_marker("")


M = "[azure-relay:0123456789abcdef]"


@pytest.mark.parametrize(("action", "view", "done"), [
    (Action.RESOLVE, TicketView(resolved=True), True),
    (Action.RESOLVE, TicketView(resolved=False, notes=(f"text\n{M}",)), False),  # the status decides
    (Action.REOPEN, TicketView(resolved=False), True),
    (Action.REOPEN, TicketView(resolved=True, notes=(M,)), False),
    (Action.NOTE, TicketView(resolved=False, notes=("other", f"fired again\n{M}")), True),
    (Action.NOTE, TicketView(resolved=False, notes=("other", "[azure-relay:fedcba9876543210]")), False),
    (Action.NOTE, TicketView(resolved=False), False),
])
def test_step_done_reads_the_status_for_resolve_and_reopen_and_the_marker_for_a_note(action, view, done):
    assert step_done(action, view, M) is done


def test_step_done_refuses_actions_that_are_not_steps():
    with pytest.raises(ValueError, match="not a step"):
        step_done(Action.CREATE, TicketView(resolved=False), M)


@pytest.mark.parametrize(("data", "action", "unsettled"), [
    ({}, Action.RESOLVE, False),
    ({"step": step_intent(Action.RESOLVE, M, 1.0)}, Action.RESOLVE, True),
    ({"step": step_intent(Action.RESOLVE, M, 1.0)}, Action.NOTE, False),  # another step of the same event
    ({"step": step_intent(Action.NOTE, "[azure-relay:other]", 1.0)}, Action.NOTE, False),  # another event
    ({"step": "garbage"}, Action.NOTE, False),
])
def test_only_the_intent_of_this_very_step_makes_a_retry_read_first(data, action, unsettled):
    assert step_unsettled(data, action, M) is unsettled


@pytest.mark.parametrize(("data", "before", "expected"), [
    ({"ticket_id": "1", "open": True}, None, None),
    ({"ticket_id": "1", "open": False}, None, 500.0),  # just resolved: now
    ({"ticket_id": "1", "open": False}, 100.0, 100.0),  # resolved earlier: kept
    ({"ticket_id": "1", "open": False, "step": {}}, 100.0, None),  # a reopen under way
    ({"open": False, "pending": {}}, None, None),  # a create under way
    ({"open": False}, None, 500.0),  # a Resolved that opened nothing
])
def test_closed_at_is_set_when_the_ticket_resolves_and_only_then(data, before, expected):
    assert closed_at(data, before, 500.0) == expected


# -- a key the store holds no record of --------------------------------------------------------------

@pytest.mark.parametrize(("event", "found", "policy", "action", "generation", "ticket_id"), [
    # Resolved: the open incident found is resolved; nothing open: record only.
    (resolved(), [ticket(1, open_=True)], Policy(), Action.RESOLVE, 1, "id1"),
    (resolved(), [ticket(2, open_=True), ticket(1, open_=False)], Policy(), Action.RESOLVE, 2, "id2"),
    (resolved(), [ticket(3, open_=False), ticket(2, open_=True)], Policy(), Action.RESOLVE, 3, "id2"),
    (resolved(), [ticket(1, open_=False)], Policy(), Action.RECORD, 1, "id1"),
    (resolved(), [], Policy(), Action.RECORD, 0, None),  # never fired: opens nothing
    (resolved(), [ticket(1, open_=True)], Policy(on_resolve="note"), Action.NOTE, 1, "id1"),
    # Fired: the newest ticket; open -> adopt; resolved -> on_refire, continuing after the highest suffix.
    (fired(), [], Policy(), Action.CREATE, 1, None),
    (fired(), [ticket(1, open_=True)], Policy(), Action.ADOPT, 1, "id1"),
    (fired(), [ticket(2, open_=True), ticket(1, open_=False)], Policy(), Action.ADOPT, 2, "id2"),
    (fired(), [ticket(1, open_=False)], Policy(), Action.NEW, 2, None),
    (fired(), [ticket(1, open_=False), ticket(4, open_=False)], Policy(), Action.NEW, 5, None),
    (fired(), [ticket(2, open_=False)], Policy(on_refire="reopen"), Action.REOPEN, 2, "id2"),
    (fired(), [ticket(2, open_=False)], Policy(on_refire="ignore"), Action.RECORD, 2, "id2"),
    # Other keys a prefix search also finds are ignored.
    (fired(), [FoundTicket(f"{KEY}9", Ticket("x", "X", False))], Policy(), Action.CREATE, 1, None),
    (resolved(), [FoundTicket(f"{KEY}.x", Ticket("x", "X", False))], Policy(), Action.RECORD, 0, None),
    # An update notes the open one.
    (update(), [ticket(1, open_=True)], Policy(), Action.NOTE, 1, "id1"),
])
def test_an_event_without_a_record_is_decided_from_the_targets_tickets(event, found, policy, action, generation,
                                                                        ticket_id):
    decision = decide_recovered(event, recovered_state(event, KEY, found), policy)
    assert decision.action is action, decision.reason
    assert decision.state.generation == generation
    assert decision.state.ticket_id == ticket_id


@pytest.mark.parametrize(("event", "found", "orphan"), [
    (fired(), [], False),  # the ordinary first Fired
    (fired(), [ticket(1, open_=True)], True),
    (fired(), [ticket(1, open_=False)], True),
    (resolved(), [], True),
    (resolved(), [ticket(1, open_=True)], True),
])
def test_everything_but_an_ordinary_first_fired_is_an_orphan(event, found, orphan):
    decision = decide_recovered(event, recovered_state(event, KEY, found), Policy())
    assert orphaned(event, decision) is orphan


def test_adopting_marks_the_episode_so_its_resolved_then_resolves_and_its_retry_does_nothing():
    adopt = decide_recovered(fired(), recovered_state(fired(), KEY, [ticket(1, open_=True)]), Policy())
    assert decide(fired(), adopt.state, Policy()).action is Action.NOTHING
    assert decide(resolved(), adopt.state, Policy()).action is Action.RESOLVE


found_tickets = st.lists(
    st.tuples(st.integers(1, 30), st.booleans()), max_size=8, unique_by=lambda x: x[0]
).map(lambda pairs: [ticket(g, open_=o) for g, o in pairs])


@given(found_tickets, st.sampled_from(["new", "reopen", "ignore"]))
def test_a_fired_never_creates_a_twin_of_an_open_ticket_and_a_new_one_continues_after_the_highest(found, refire):
    event = fired()
    decision = decide_recovered(event, recovered_state(event, KEY, found), Policy(on_refire=refire))
    highest = max((generation_of(KEY, f.correlation_key) or 0 for f in found), default=0)
    newest = next((f for f in sorted(found, key=lambda f: -(generation_of(KEY, f.correlation_key) or 0))), None)
    if newest is not None and not newest.ticket.resolved:
        assert decision.action is Action.ADOPT and decision.state.ticket_id == newest.ticket.id
    if decision.action.opens_incident:
        assert decision.state.generation == highest + 1, "a new incident must not reuse a key the target holds"
        assert correlation_key(KEY, decision.state.generation) not in {f.correlation_key for f in found}


@given(found_tickets)
def test_a_resolved_resolves_an_open_ticket_when_there_is_one_and_never_opens_anything(found):
    event = resolved()
    decision = decide_recovered(event, recovered_state(event, KEY, found), Policy())
    assert not decision.action.opens_incident
    any_open = any(not f.ticket.resolved for f in found)
    assert (decision.action is Action.RESOLVE) is any_open
    if any_open:
        assert decision.state.ticket_id in {f.ticket.id for f in found if not f.ticket.resolved}
        assert decision.state.open is False


def test_two_open_tickets_under_one_key_are_twins_a_person_must_settle():
    found = [ticket(1, open_=True), FoundTicket(KEY, Ticket("other", "O", False)), ticket(2, open_=True),
             FoundTicket(f"{KEY}.2", Ticket("old", "OLD", True)), FoundTicket(f"{KEY}7", Ticket("x", "X", False))]
    assert twin_keys(KEY, found) == [KEY]
    assert twin_keys(KEY, [ticket(1, open_=True), ticket(2, open_=True)]) == []
