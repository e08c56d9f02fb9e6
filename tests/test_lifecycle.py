"""The lifecycle table, row by row, and properties over any interleaving of duplicates and reorderings."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.alerts import parse_alert
from relay.delivery.lifecycle import (
    MAX_MARKS,
    Action,
    EventFacts,
    Kind,
    Policy,
    TicketState,
    correlation_key,
    create_intent,
    create_intent_wait,
    dead_writers_intent,
    decide,
    event_facts,
    instant,
    ticket_keys,
)
from tests.conftest import load_sample

A = "alert-a"
B = "alert-b"


def t(seconds: int) -> str:
    return instant(f"2024-05-01T10:{seconds // 60:02d}:{seconds % 60:02d}Z")


def fired(at: int, alert: str = A) -> EventFacts:
    return EventFacts(alert, Kind.FIRED, t(at), t(at))


def resolved(fired_at: int, at: int, alert: str = A) -> EventFacts:
    return EventFacts(alert, Kind.RESOLVED, t(fired_at), t(at))


def update(at: int, alert: str = A) -> EventFacts:
    return EventFacts(alert, Kind.UPDATE, t(at), t(at))


def run(events: list[EventFacts], policy: Policy | None = None) -> tuple[list[Action], TicketState | None]:
    """Decide each event in turn, storing the state as the worker would (a made-up id on open)."""
    policy = policy or Policy()
    state: TicketState | None = None
    actions = []
    for n, ev in enumerate(events):
        d = decide(ev, state, policy)
        actions.append(d.action)
        state = d.state.with_ticket(f"T{n}", None) if d.action.opens_incident else d.state
    return actions, state


# -- the table ------------------------------------------------------------------------------------

def test_fired_with_no_ticket_creates_and_opens():
    d = decide(fired(0), None, Policy())
    assert d.action is Action.CREATE
    assert d.state.open and d.state.generation == 1 and d.state.ticket_id is None


@pytest.mark.parametrize(("on_repeat", "expected"), [("note", Action.NOTE), ("nothing", Action.NOTHING)])
def test_fired_again_while_open_follows_on_repeat(on_repeat, expected):
    actions, state = run([fired(0), fired(60)], Policy(on_repeat=on_repeat))
    assert actions == [Action.CREATE, expected]
    assert state.open and state.generation == 1, "a repeat must never open a second incident"


def test_another_alert_firing_on_a_shared_ticket_is_a_repeat():
    actions, _ = run([fired(0, A), fired(5, B)])
    assert actions == [Action.CREATE, Action.NOTE]


def test_redelivered_fired_is_not_noted_twice():
    actions, _ = run([fired(0), fired(60), fired(60)])
    assert actions == [Action.CREATE, Action.NOTE, Action.NOTHING]


def test_resolved_while_open_resolves():
    actions, state = run([fired(0), resolved(0, 30)])
    assert actions == [Action.CREATE, Action.RESOLVE]
    assert not state.open and state.ticket_id == "T0"


def test_redelivered_resolved_makes_no_call():
    actions, _ = run([fired(0), resolved(0, 30), resolved(0, 30)])
    assert actions[-1] is Action.NOTHING


@pytest.mark.parametrize(
    ("on_refire", "expected", "open_after", "generation"),
    [("new", Action.NEW, True, 2), ("reopen", Action.REOPEN, True, 1), ("ignore", Action.RECORD, False, 1)],
)
def test_fired_after_resolve_follows_on_refire(on_refire, expected, open_after, generation):
    actions, state = run([fired(0), resolved(0, 30), fired(90)], Policy(on_refire=on_refire))
    assert actions == [Action.CREATE, Action.RESOLVE, expected]
    assert state.open is open_after
    assert state.generation == generation


def test_new_incident_after_resolve_forgets_the_old_ticket_id():
    d = decide(fired(90), run([fired(0), resolved(0, 30)])[1], Policy(on_refire="new"))
    assert d.state.ticket_id is None, "the shell must fill in the new incident's id, not keep the old one"


def test_reopen_keeps_the_same_ticket():
    _, state = run([fired(0), resolved(0, 30), fired(90)], Policy(on_refire="reopen"))
    assert state.ticket_id == "T0"


def test_resolved_before_fired_is_recorded_and_the_late_fired_creates_nothing():
    actions, state = run([resolved(0, 30), fired(0)])
    assert actions == [Action.RECORD, Action.RECORD]
    assert state.ticket_id is None and not state.open


def test_resolved_for_an_unknown_alert_is_recorded():
    d = decide(resolved(0, 30), None, Policy())
    assert d.action is Action.RECORD
    assert d.state.alerts[A].resolved


def test_late_fired_of_an_older_episode_does_not_reopen():
    actions, state = run([fired(0), resolved(0, 30), fired(90), resolved(90, 120), fired(0)])
    assert actions[-1] is Action.RECORD
    assert not state.open


def test_late_resolve_of_an_older_episode_does_not_resolve_the_newer_incident():
    actions, state = run([fired(0), fired(90), resolved(0, 30)])
    assert actions == [Action.CREATE, Action.NOTE, Action.RECORD]
    assert state.open


def test_late_fired_from_before_the_last_resolve_is_recorded_not_reopened():
    # One incident per CI: B fired at 20, but that arrives after A resolved the ticket at 30.
    actions, state = run([fired(0, A), resolved(0, 30, A), fired(20, B)], Policy(on_refire="reopen"))
    assert actions == [Action.CREATE, Action.RESOLVE, Action.RECORD]
    assert not state.open


def test_shared_ticket_resolves_only_when_every_alert_has_resolved():
    actions, state = run([fired(0, A), fired(5, B), resolved(0, 30, A), resolved(5, 40, B)])
    assert actions == [Action.CREATE, Action.NOTE, Action.RECORD, Action.RESOLVE]
    assert not state.open


def test_resolve_older_than_a_later_note_still_resolves_when_all_alerts_resolved():
    actions, _ = run([fired(0, A), fired(10, B), resolved(10, 40, B), resolved(0, 20, A)])
    assert actions[-1] is Action.RESOLVE


def test_resolve_of_a_newer_episode_whose_fired_was_missed_resolves():
    actions, _ = run([fired(0), resolved(90, 120)])
    assert actions == [Action.CREATE, Action.RESOLVE]


@pytest.mark.parametrize(("on_resolve", "expected", "open_after"),
                         [("note", Action.NOTE, True), ("nothing", Action.RECORD, True)])
def test_on_resolve_can_leave_the_incident_to_people(on_resolve, expected, open_after):
    actions, state = run([fired(0), resolved(0, 30)], Policy(on_resolve=on_resolve))
    assert actions == [Action.CREATE, expected]
    assert state.open is open_after


def test_update_notes_an_existing_ticket_even_when_resolved_and_never_opens_one():
    actions, state = run([fired(0), resolved(10, 20), update(300)])
    assert actions == [Action.CREATE, Action.RESOLVE, Action.NOTE]
    assert not state.open
    assert run([update(300)])[0] == [Action.RECORD]


def test_update_follows_on_repeat_nothing():
    actions, _ = run([fired(0), update(300)], Policy(on_repeat="nothing"))
    assert actions == [Action.CREATE, Action.NOTHING]


def test_only_create_and_new_open_incidents_and_only_record_nothing_adopt_and_refuse_skip_the_target():
    assert {a for a in Action if a.opens_incident} == {Action.CREATE, Action.NEW}
    assert {a for a in Action if not a.calls_target} == {Action.NOTHING, Action.RECORD, Action.ADOPT, Action.REFUSE}


# -- facts from real payloads ----------------------------------------------------------------------

def test_service_health_stage_resolved_counts_as_resolved():
    alert = parse_alert(load_sample("testaction-servicehealth-fired.json"))
    assert alert.essentials.monitor_condition == "Fired"
    assert event_facts(alert).kind is Kind.RESOLVED


def test_service_health_stage_active_fires_and_rca_only_updates():
    doc = load_sample("testaction-servicehealth-fired.json")
    doc["data"]["alertContext"]["properties"]["stage"] = "Active"
    assert event_facts(parse_alert(doc)).kind is Kind.FIRED
    doc["data"]["alertContext"]["properties"]["stage"] = "RCA"
    assert event_facts(parse_alert(doc)).kind is Kind.UPDATE


@pytest.mark.parametrize("name", ["testaction-activitylog-administrative-fired.json",
                                  "testaction-resourcehealth-fired.json"])
def test_other_activity_log_alerts_never_resolve(name):
    assert event_facts(parse_alert(load_sample(name))).kind is Kind.FIRED


def test_metric_resolve_uses_resolved_time_and_keeps_the_episode_of_its_firing():
    alert = parse_alert(load_sample("metric-static-resolved.json"))
    facts = event_facts(alert)
    assert facts.kind is Kind.RESOLVED
    assert facts.fired_at == instant("2019-03-22T13:58:24.3713213Z")
    assert facts.occurred_at == instant("2019-03-22T14:03:16.2246313Z")


def test_service_health_notifications_of_one_incident_share_a_ticket_key():
    first = load_sample("testaction-servicehealth-fired.json")
    second = json.loads(json.dumps(first))
    second["data"]["essentials"]["alertId"] = (
        "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/providers/Microsoft.AlertsManagement/alerts/other-guid"
    )
    keys = [ticket_keys(parse_alert(doc), "alert")[0].key for doc in (first, second)]
    assert keys[0] == keys[1] == "sh-test-ttt-aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"
    assert event_facts(parse_alert(first)).alert == event_facts(parse_alert(second)).alert


def test_incident_per_alert_keys_on_the_lowercased_alert_guid():
    doc = load_sample("testaction-metric-static-fired.json")
    alert = parse_alert(doc)
    [key] = ticket_keys(alert, "alert")
    assert key.key == alert.correlation_key.lower()
    assert key.configuration_items == alert.essentials.configuration_items


def test_incident_per_configuration_item_gives_one_key_per_ci_shared_across_alerts_of_a_rule():
    doc = load_sample("testaction-metric-static-fired.json")
    doc["data"]["essentials"]["configurationItems"] = ["vm-1", "VM-2"]
    first = ticket_keys(parse_alert(doc), "configuration_item")
    doc["data"]["essentials"]["alertId"] = doc["data"]["essentials"]["alertId"][:-4] + "ffff"
    doc["data"]["essentials"]["configurationItems"] = ["vm-2"]
    second = ticket_keys(parse_alert(doc), "configuration_item")
    assert [k.configuration_items for k in first] == [("vm-1",), ("VM-2",)]
    assert second[0].key == first[1].key, "the same rule on the same CI (any case) must share a ticket"
    doc["data"]["essentials"]["alertRule"] = "another-rule"
    doc["data"]["essentials"].pop("alertRuleID", None)
    doc["data"]["essentials"].pop("alertRuleId", None)
    assert ticket_keys(parse_alert(doc), "configuration_item")[0].key != first[1].key


def test_per_ci_without_cis_falls_back_to_one_incident_per_alert():
    doc = load_sample("testaction-metric-static-fired.json")
    doc["data"]["essentials"]["configurationItems"] = []
    doc["data"]["essentials"]["alertTargetIDs"] = []
    alert = parse_alert(doc)
    assert [k.key for k in ticket_keys(alert, "configuration_item")] == [alert.correlation_key.lower()]


@pytest.mark.parametrize("name", [
    "metric-static-resolved.json", "testaction-servicehealth-fired.json", "testaction-log-v2-fired.json",
    "testaction-budget-fired.json", "testaction-smart-detection-fired.json",
])
@pytest.mark.parametrize("per", ["alert", "configuration_item"])
def test_correlation_keys_are_short_plain_and_never_empty(name, per):
    for key in ticket_keys(parse_alert(load_sample(name)), per):
        for generation in (1, 12):
            value = correlation_key(key.key, generation)
            assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value), value


def test_later_incidents_of_one_key_get_a_generation_suffix():
    assert correlation_key("k", 1) == "k"
    assert correlation_key("k", 2) == "k.2"


# -- plumbing ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b"), [
    ("2019-03-22T13:58:24.3Z", "2019-03-22T13:58:24.31Z"),
    ("2019-03-22T13:58:24Z", "2019-03-22T13:58:24.0000001Z"),
    ("2019-03-22T15:58:24+02:00", "2019-03-22T13:58:25Z"),
    ("2019-03-22T13:58:24.9999999Z", "2019-03-22T13:58:25.001Z"),
])
def test_instants_compare_as_text_in_time_order(a, b):
    assert instant(a) < instant(b)


def test_instant_without_zone_is_utc_and_bad_text_is_refused():
    assert instant("2024-01-01T00:00:00") == instant("2024-01-01T00:00:00Z") == "2024-01-01T00:00:00.000000000Z"
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        instant("yesterday")


@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)),
       st.sampled_from(["Z", "", "+00:00", "+0530", "-08:00"]), st.integers(0, 9))
def test_instant_is_the_utc_time_whatever_zone_and_digits_it_was_written_with(when, zone, digits):
    text = when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{when.microsecond:06d}"[:digits + 1] if digits else "") + zone
    offset = "+00:00" if zone in ("", "Z") else (zone if ":" in zone else f"{zone[:3]}:{zone[3:]}")
    utc = datetime.fromisoformat(when.strftime("%Y-%m-%dT%H:%M:%S") + offset).astimezone(UTC)
    frac = f"{when.microsecond:06d}"[:digits] if digits else ""
    assert instant(text) == utc.strftime("%Y-%m-%dT%H:%M:%S") + "." + frac.ljust(9, "0") + "Z"


@pytest.mark.parametrize("text", ["2024-02-30T00:00:00Z", "2024-13-01T00:00:00.1Z", "2024-01-01T24:00:00"])
def test_an_instant_that_is_no_real_time_is_refused(text):
    with pytest.raises(ValueError):
        instant(text)


def test_ticket_state_survives_a_json_round_trip():
    _, state = run([fired(0, A), fired(5, B), resolved(0, 30, A)])
    again = TicketState.from_data(json.loads(json.dumps(state.to_data())))
    assert again == state


def test_marks_are_bounded_and_resolved_alerts_are_forgotten_first():
    events = [fired(0, "firing")] + [resolved(i, i + 1, f"r{i}") for i in range(1, MAX_MARKS + 5)]
    _, state = run(events)
    assert len(state.alerts) == MAX_MARKS
    assert "firing" in state.alerts, "a firing alert must outlive resolved ones"


# -- properties: any interleaving of duplicates and reorderings --------------------------------------

@st.composite
def episodes_and_deliveries(draw, alerts=(A,), complete=False):
    """Firing episodes of some alerts, and a delivery order: a permutation with duplicates mixed in.

    complete: every episode but the last resolves, and nothing is lost on the way.
    """
    events = []
    for alert in alerts:
        start = 0
        count = draw(st.integers(1, 4))
        for i in range(count):
            start += draw(st.integers(1, 50))
            events.append(fired(start, alert))
            if (complete and i < count - 1) or draw(st.booleans()):
                end = start + draw(st.integers(1, 50))
                events.append(resolved(start, end, alert))
                start = end
    order = list(draw(st.permutations(events)))
    for _ in range(draw(st.integers(0, 6))):
        order.insert(draw(st.integers(0, len(order))), draw(st.sampled_from(events)))
    if not complete and draw(st.booleans()):  # sometimes drop a few: Azure gave up, or the rule was muted
        for _ in range(draw(st.integers(0, 2))):
            if len(order) > 1:
                order.pop(draw(st.integers(0, len(order) - 1)))
    return order


class World:
    """A fake ITSM that records what the decisions did to it, and checks they made sense."""

    def __init__(self) -> None:
        self.tickets: dict[str, bool] = {}  # id -> open
        self.opened_for: list[tuple[str, str]] = []  # (alert, fired_at) of each opening

    def apply(self, ev: EventFacts, d, state: TicketState | None) -> TicketState:
        a = d.action
        if a.opens_incident:
            assert not any(self.tickets.values()), f"{a} while another incident is open"
            tid = f"T{len(self.tickets)}"
            self.tickets[tid] = True
            self.opened_for.append((ev.alert, ev.fired_at))
            return d.state.with_ticket(tid, None)
        if a is Action.RESOLVE:
            assert self.tickets[state.ticket_id], "resolved a ticket that was not open"
            self.tickets[state.ticket_id] = False
        if a is Action.REOPEN:
            assert not self.tickets[state.ticket_id], "reopened a ticket that was open"
            self.tickets[state.ticket_id] = True
        if a is Action.NOTE:
            assert state is not None and state.ticket_id in self.tickets
        return d.state


def deliver(order, policy):
    world, state, actions = World(), None, []
    for ev in order:
        d = decide(ev, state, policy)
        actions.append(d.action)
        state = world.apply(ev, d, state)
        again = decide(ev, state, policy)
        assert not again.action.calls_target, f"the same event twice in a row called the target ({again.action})"
    return world, state, actions


policies = st.builds(Policy, on_repeat=st.sampled_from(["note", "nothing"]),
                     on_refire=st.sampled_from(["new", "reopen", "ignore"]), on_resolve=st.just("resolve"))


@settings(max_examples=400, deadline=None)
@given(order=episodes_and_deliveries(), policy=policies)
def test_no_firing_episode_ever_opens_two_incidents(order, policy):
    world, _, _ = deliver(order, policy)
    assert len(world.opened_for) == len(set(world.opened_for))


@settings(max_examples=400, deadline=None)
@given(order=episodes_and_deliveries(), policy=policies)
def test_nothing_moves_a_ticket_backwards(order, policy):
    world, _, _ = deliver(order, policy)
    episodes = [fired_at for _, fired_at in world.opened_for]
    assert episodes == sorted(set(episodes)), "an older episode opened an incident after a newer one"


@settings(max_examples=400, deadline=None)
@given(order=episodes_and_deliveries(), policy=policies)
def test_the_ticket_ends_open_exactly_when_the_latest_episode_is_still_firing(order, policy):
    world, _, _ = deliver(order, policy)
    latest = max(ev.fired_at for ev in order)
    kinds = {ev.kind for ev in order if ev.fired_at == latest}
    still_firing = kinds == {Kind.FIRED}
    is_open = any(world.tickets.values())
    if policy.on_refire == "ignore":
        assert not is_open or still_firing
    else:
        assert is_open == still_firing, f"open={is_open} but latest episode kinds={kinds}"


@settings(max_examples=300, deadline=None)
@given(order=episodes_and_deliveries(complete=True), policy=policies)
def test_in_order_delivery_gives_one_incident_per_firing_episode(order, policy):
    in_order = sorted(order, key=lambda ev: (ev.occurred_at, ev.kind is Kind.RESOLVED))
    world, _, _ = deliver(in_order, replace(policy, on_refire="new"))
    episodes = {ev.fired_at for ev in in_order if ev.kind is Kind.FIRED}
    assert sorted(f for _, f in world.opened_for) == sorted(episodes)


@settings(max_examples=300, deadline=None)
@given(order=episodes_and_deliveries(alerts=(A, B, "alert-c")), policy=policies)
def test_a_shared_ticket_never_resolves_while_an_alert_on_it_is_firing(order, policy):
    world, state, seen = World(), None, []
    for ev in order:
        d = decide(ev, state, policy)
        seen.append(ev)
        if d.action is Action.RESOLVE:
            for alert in {e.alert for e in seen}:
                latest = max(e.fired_at for e in seen if e.alert == alert)
                assert any(e.kind is Kind.RESOLVED for e in seen if e.alert == alert and e.fired_at == latest), (
                    f"resolved while {alert}'s latest episode had not resolved"
                )
        state = world.apply(ev, d, state)
    assert len(world.opened_for) == len(set(world.opened_for))


# -- how long a create intent holds its key ---------------------------------------------------------------

INTENT_CASES = [
    # (intent fields beyond since=100, event held now, owner now, now, expected seconds left)
    ({"event": "e1", "owner": "dead"}, "e1", "me", 103.0, 2.0),  # writer's lease ended: its call timeout (5)
    ({"event": "e1", "owner": "dead"}, "e1", "me", 106.0, -1.0),
    ({"event": "e1", "owner": "me"}, "e1", "me", 103.0, 27.0),  # our own: adopt_after (30) from since
    ({"event": "e2", "owner": "other"}, "e1", "me", 103.0, 27.0),  # another event of a shared key: may be live
    ({}, "e1", "me", 103.0, 27.0),  # written before owners were recorded
    ({"event": "e1", "owner": "dead", "unanswered_at": 110.0}, "e1", "me", 112.0, 28.0),  # may still land
]


@pytest.mark.parametrize(("extra", "event_key", "owner", "now", "left"), INTENT_CASES)
def test_create_intent_wait(extra, event_key, owner, now, left):
    pending = {"since": 100.0, "correlation_key": "k", **extra}
    assert create_intent_wait(pending, now=now, event_key=event_key, owner=owner,
                              call_timeout=5.0, adopt_after=30.0) == pytest.approx(left)


@pytest.mark.parametrize(("extra", "dead"), [
    ({"event": "e1", "owner": "dead"}, True),  # this event's, by a process whose lease ended: look at once
    ({"event": "e1", "owner": "me"}, False),  # this process's own (an unanswered create it still waits for)
    ({"event": "e2", "owner": "other"}, False),  # another event of a shared key: its delivery may be live
    ({"event": "e1"}, False),  # written before owners were recorded
])
def test_only_this_events_intent_by_another_process_is_a_dead_writers(extra, dead):
    pending = {"since": 100.0, "correlation_key": "k", **extra}
    assert dead_writers_intent(pending, event_key="e1", owner="me") is dead


def test_a_create_intent_names_its_event_and_owner():
    assert create_intent("k.2", since=1.0, event_key="e", owner="o") == {
        "since": 1.0, "correlation_key": "k.2", "event": "e", "owner": "o"}
