"""Maintenance windows and flap damping in the pure lifecycle core (issue 15): a table per rule, and
properties over duplicated and reordered event streams, with the timers they set played back."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.delivery.flapping import Damping, from_nanos, recent_flips, shift, to_nanos
from relay.delivery.lifecycle import (
    Action,
    EventFacts,
    InWindow,
    Kind,
    Policy,
    TicketState,
    decide_due,
    decide_with_noise,
    noise_timers,
)
from tests.test_lifecycle import A, World, episodes_and_deliveries, fired, resolved, t

POLICY = Policy()


def window(start: int, end: int, mode: str = "record", name: str = "patch"):
    """A window lookup like `maintenance.active_window`, over the test's seconds."""
    def at(instant: str) -> InWindow | None:
        return InWindow(name, t(end), mode) if t(start) <= instant < t(end) else None
    return at


def step(ev: EventFacts, state: TicketState | None, *, win=None, damping=None, policy=POLICY):
    d = decide_with_noise(ev, state, policy, window=win(ev.occurred_at) if win else None, damping=damping)
    return d, (d.state.with_ticket("T1", None) if d.action.opens_incident else d.state)


def open_ticket(at: int = 0) -> TicketState:
    _, state = step(fired(at), None)
    return state


# -- maintenance windows: the table -------------------------------------------------------------------

def test_fired_inside_a_window_opens_nothing_and_sets_a_timer_at_its_end():
    d, state = step(fired(100), None, win=window(50, 200))
    assert d.action is Action.RECORD
    assert d.timers == (t(200),)
    assert state.ticket_id is None and not state.open
    assert noise_timers(state, A) == (t(200),)


def test_window_end_with_the_alert_still_firing_creates_its_incident_once():
    _, state = step(fired(100), None, win=window(50, 200))
    d = decide_due(A, t(200), state, POLICY)
    assert d.action is Action.CREATE and "still firing" in d.reason
    state = d.state.with_ticket("T1", None)
    again = decide_due(A, t(200), state, POLICY)
    assert again.action is Action.NOTHING, "a due event delivered twice must act once"


def test_alert_resolved_inside_the_window_gets_no_incident_at_its_end():
    _, state = step(fired(100), None, win=window(50, 200))
    d, state = step(resolved(100, 150), state, win=window(50, 200))
    assert d.action is Action.RECORD
    assert decide_due(A, t(200), state, POLICY).action is Action.RECORD
    assert not decide_due(A, t(200), state, POLICY).action.calls_target


def test_resolve_inside_a_window_closes_a_ticket_opened_before_it():
    state = open_ticket(10)
    d, state = step(resolved(10, 100), state, win=window(50, 200))
    assert d.action is Action.RESOLVE and not state.open


@pytest.mark.parametrize("on_refire, expected", [("new", Action.NEW), ("reopen", Action.REOPEN)])
def test_refire_inside_a_window_is_deferred_and_follows_on_refire_at_its_end(on_refire, expected):
    policy = Policy(on_refire=on_refire)
    state = open_ticket(10)
    _, state = step(resolved(10, 20), state, policy=policy)
    d, state = step(fired(100), state, win=window(50, 200), policy=policy)
    assert d.action is Action.RECORD and d.timers == (t(200),)
    assert state.ticket_id == "T1" and not state.open, "the resolved ticket is still the one on record"
    assert decide_due(A, t(200), state, policy).action is expected


@pytest.mark.parametrize("mode, expected", [("record", Action.RECORD), ("note", Action.NOTE)])
def test_repeat_on_an_open_ticket_inside_a_window_is_noted_only_in_mode_note(mode, expected):
    state = open_ticket(10)
    _, state = step(resolved(10, 20), state, policy=Policy(on_refire="ignore"))
    state = open_ticket(10)
    d, _ = step(fired(100), state, win=window(50, 200, mode))
    assert d.action is expected


def test_window_end_inside_another_window_waits_for_that_one():
    _, state = step(fired(100), None, win=window(50, 200))
    d = decide_due(A, t(200), state, POLICY, window=InWindow("second", t(400)))
    assert d.action is Action.RECORD and d.timers == (t(400),)
    assert decide_due(A, t(400), d.state, POLICY).action is Action.CREATE


def test_an_event_after_the_window_that_opens_the_incident_settles_the_deferral():
    _, state = step(fired(100), None, win=window(50, 200))
    d, state = step(fired(250), state, win=window(50, 200))
    assert d.action is Action.CREATE
    state = state.with_ticket("T1", None)
    assert decide_due(A, t(200), state, POLICY).action is Action.NOTHING


def test_a_timer_not_due_yet_does_nothing():
    _, state = step(fired(100), None, win=window(50, 200))
    assert decide_due(A, t(199), state, POLICY).action is Action.NOTHING


def test_noise_state_survives_a_json_round_trip():
    _, state = step(fired(100), None, win=window(50, 200))
    assert TicketState.from_data(state.to_data()) == state


# -- flap damping: the table --------------------------------------------------------------------------

DAMP = Damping(window_seconds=600, transitions=3, hold_seconds=120)


def flap(events, state=None, damping=DAMP, policy=POLICY):
    actions = []
    for ev in events:
        d, state = step(ev, state, damping=damping, policy=policy)
        actions.append(d)
    return actions, state


def test_changes_up_to_the_limit_behave_as_without_damping():
    ds, _ = flap([fired(0), resolved(0, 10), fired(20)])
    assert [d.action for d in ds] == [Action.CREATE, Action.RESOLVE, Action.NEW]


def test_the_change_past_the_limit_holds_the_resolve_and_notes_flapping_once():
    ds, state = flap([fired(0), resolved(0, 10), fired(20), resolved(20, 30)])
    held = ds[-1]
    assert held.action is Action.NOTE and "flapping" in (held.note or "")
    assert held.timers == (shift(t(30), 120),)
    assert state.open, "a held resolve leaves the incident open"


def test_a_refire_inside_the_hold_cancels_the_held_resolve_without_a_new_incident():
    ds, state = flap([fired(0), resolved(0, 10), fired(20), resolved(20, 30), fired(40)])
    assert ds[-1].action is Action.RECORD and "cancels" in ds[-1].reason
    assert noise_timers(state, A) == ()
    assert decide_due(A, shift(t(30), 120), state, POLICY).action is Action.NOTHING


def test_the_final_resolve_is_delivered_once_the_hold_passes():
    _, state = flap([fired(0), resolved(0, 10), fired(20), resolved(20, 30), fired(40), resolved(40, 50)])
    (due,) = noise_timers(state, A)
    assert due == shift(t(50), 120)
    d = decide_due(A, due, state, POLICY)
    assert d.action is Action.RESOLVE and not d.state.open
    assert decide_due(A, due, d.state, POLICY).action is Action.NOTHING


def test_repeats_while_flapping_are_not_noted_again():
    ds, _ = flap([fired(0), resolved(0, 10), fired(20), resolved(20, 30), fired(40), resolved(40, 50), fired(60)])
    assert [d.action for d in ds[4:]] == [Action.RECORD, Action.RECORD, Action.RECORD]


def test_changes_spread_wider_than_the_window_never_count_as_flapping():
    slow = Damping(window_seconds=60, transitions=3, hold_seconds=30)
    ds, _ = flap([fired(0), resolved(0, 100), fired(200), resolved(200, 300), fired(400), resolved(400, 500)],
                 damping=slow)
    assert [d.action for d in ds] == [Action.CREATE, Action.RESOLVE, Action.NEW, Action.RESOLVE, Action.NEW,
                                      Action.RESOLVE]


def test_duplicates_do_not_count_as_changes():
    ds, state = flap([fired(0), fired(0), resolved(0, 10), resolved(0, 10), fired(20), fired(20)])
    assert [d.action for d in ds if d.action.calls_target] == [Action.CREATE, Action.RESOLVE, Action.NEW]
    assert len(state.noise[A]["flips"]) == 3 and "flapping" not in state.noise[A]


def test_a_hold_longer_than_the_flap_window_is_refused():
    with pytest.raises(ValueError, match="hold_resolve_seconds"):
        Damping(window_seconds=60, transitions=3, hold_seconds=61)


@pytest.mark.parametrize("text", ["2024-05-01T10:00:00.000000000Z", "2024-02-29T23:59:59.999999999Z",
                                  "1999-12-31T00:00:00.123456789Z"])
def test_instants_convert_to_nanoseconds_and_back_exactly(text):
    assert from_nanos(to_nanos(text)) == text
    assert shift(text, 0) == text


def test_recent_flips_keep_only_the_window_before_the_latest():
    flips = recent_flips([t(0), t(100), t(500)], t(650), DAMP)
    assert flips == [t(100), t(500), t(650)]


# -- properties ----------------------------------------------------------------------------------------

policies = st.builds(Policy, on_repeat=st.sampled_from(["note", "nothing"]),
                     on_refire=st.sampled_from(["new", "reopen"]), on_resolve=st.just("resolve"))


def play(order, policy, *, win=None, damping=None, rng=None, world=None):
    """Deliver `order` as the worker would, each timer coming back as a due event at some later point
    (possibly after events that occurred later, or twice); then run every timer left, as the scheduler
    does. Returns the world, the final state and, per decision, (event or due time, prior state, decision)."""
    world = world or World()
    state: TicketState | None = None
    log = []
    timers: list[str] = []

    def apply(label, d, prior):
        nonlocal state
        ev = label if isinstance(label, EventFacts) else EventFacts(A, Kind.FIRED, d.state.alerts[A].fired_at
                                                                    if A in d.state.alerts else label, label)
        state = world.apply(ev, d, prior)
        timers.extend(d.timers)
        log.append((label, prior, d))

    for n, ev in enumerate(order):
        prior = state
        apply(ev, decide_with_noise(ev, prior, policy, window=win(ev.occurred_at) if win else None,
                                    damping=damping), prior)
        if timers and rng is not None and rng[n % len(rng)]:
            at = timers.pop(0)
            apply(at, decide_due(A, at, state, policy, window=win(at) if win else None), state)
            timers.append(at)  # the same due event again later: it must act once
    for _ in range(50):
        if not timers:
            break
        at = min(timers)
        timers.remove(at)
        apply(at, decide_due(A, at, state, policy, window=win(at) if win else None), state)
    assert not timers, "timers kept coming"
    return world, state, log


def still_firing(order) -> bool:
    latest = max(ev.fired_at for ev in order)
    return {ev.kind for ev in order if ev.fired_at == latest} == {Kind.FIRED}


windows = st.tuples(st.integers(0, 300), st.integers(1, 300), st.sampled_from(["record", "note"]))


@settings(max_examples=400, deadline=None)
@given(order=episodes_and_deliveries(), policy=policies, w=windows, rng=st.lists(st.booleans(), min_size=1))
def test_nothing_is_created_inside_a_window(order, policy, w, rng):
    start, length, mode = w
    win = window(start, start + length, mode)
    _, _, log = play(order, policy, win=win, rng=rng)
    for label, _, d in log:
        if d.action.opens_incident or d.action is Action.REOPEN:
            at = label.occurred_at if isinstance(label, EventFacts) else label
            assert win(at) is None, f"{d.action} at {at}, inside the window ({d.reason})"


@settings(max_examples=400, deadline=None)
@given(order=episodes_and_deliveries(), policy=policies, w=windows, rng=st.lists(st.booleans(), min_size=1))
def test_an_alert_still_firing_when_its_window_ends_gets_exactly_one_incident(order, policy, w, rng):
    start, length, mode = w
    world, state, _ = play(order, policy, win=window(start, start + length, mode), rng=rng)
    assert len(world.opened_for) == len(set(world.opened_for)), "an episode opened two incidents"
    assert any(world.tickets.values()) == still_firing(order), (
        f"open={any(world.tickets.values())}, still firing={still_firing(order)}")
    assert noise_timers(state, A) == (), "a timer was left behind"


dampings = st.builds(lambda window, n, hold: Damping(window_seconds=window, transitions=n,
                                                      hold_seconds=min(hold, window)),
                     st.integers(60, 600), st.integers(2, 4), st.integers(1, 600))


class FlapWorld(World):
    """Also checks that no incident opens while the alert is in a flapping period."""

    def apply(self, ev, d, state):
        if d.action.opens_incident and state is not None:
            assert "flapping" not in (state.noise.get(A) or {}), f"{d.action} inside a flapping period"
        return super().apply(ev, d, state)


@settings(max_examples=400, deadline=None)
@given(order=episodes_and_deliveries(), policy=policies, damping=dampings,
       rng=st.lists(st.booleans(), min_size=1))
def test_flapping_never_loses_the_final_state(order, policy, damping, rng):
    world, state, _ = play(order, policy, damping=damping, rng=rng)
    assert any(world.tickets.values()) == still_firing(order)
    assert noise_timers(state, A) == ()


@settings(max_examples=400, deadline=None)
@given(order=episodes_and_deliveries(), policy=policies, damping=dampings,
       rng=st.lists(st.booleans(), min_size=1))
def test_flapping_never_opens_a_second_incident_in_one_flapping_period(order, policy, damping, rng):
    world, _, _ = play(order, policy, damping=damping, rng=rng, world=FlapWorld())
    assert len(world.opened_for) == len(set(world.opened_for))


@settings(max_examples=300, deadline=None)
@given(order=episodes_and_deliveries(), policy=policies, damping=dampings, w=windows,
       rng=st.lists(st.booleans(), min_size=1))
def test_windows_and_damping_together_keep_the_final_state(order, policy, damping, w, rng):
    start, length, mode = w
    world, state, _ = play(order, replace(policy), win=window(start, start + length, mode), damping=damping,
                           rng=rng)
    assert any(world.tickets.values()) == still_firing(order)
    assert noise_timers(state, A) == ()


def test_a_window_end_read_back_from_epoch_seconds_is_the_same_instant():
    from relay.delivery.flapping import from_epoch, to_epoch

    end = "2026-12-02T07:04:47.938123000Z"  # a one-off window's end with microseconds
    assert from_epoch(to_epoch(end)) == end


def test_the_window_that_just_ended_does_not_defer_again():
    _, state = step(fired(100), None, win=window(50, 200))
    d = decide_due(A, t(200), state, POLICY, window=InWindow("patch", t(200)))
    assert d.action is Action.CREATE


def test_flips_kept_are_bounded_by_the_transitions_allowed():
    many = [t(i) for i in range(0, 500, 5)]
    assert recent_flips(many, t(500), DAMP) == [t(485), t(490), t(495), t(500)]
