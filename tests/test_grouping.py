"""Storm grouping's pure core (relay.delivery.grouping): the table, windows, and properties under duplicated
and reordered event streams."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.alerts import parse_alert_json
from relay.delivery.grouping import (
    MAX_MEMBERS,
    GroupSpec,
    GroupState,
    Member,
    Role,
    decide_group,
    group_key,
    incident_cap,
    links_due,
    parent_summary,
    release_deferred,
    window_start,
    with_linked,
    with_member_ticket,
)
from relay.delivery.lifecycle import Action, EventFacts, InWindow, Kind, instant
from relay.schema import GroupChildren, OnResolve
from tests.conftest import load_sample

W = "2024-05-01T10:00:00Z"


def at(minute: int, second: int = 0) -> str:
    return instant(f"2024-05-01T10:{minute:02d}:{second:02d}Z")


def fired(alert: str, when: str = at(1)) -> EventFacts:
    return EventFacts(alert=alert, kind=Kind.FIRED, fired_at=when, occurred_at=when)


def resolved(alert: str, when: str = at(1), later: str = at(9)) -> EventFacts:
    return EventFacts(alert=alert, kind=Kind.RESOLVED, fired_at=when, occurred_at=later)


NOTE3 = GroupSpec(open_parent_after=3)
LINK3 = GroupSpec(open_parent_after=3, children=GroupChildren.LINK, max_children=2)


def run(spec: GroupSpec, events: list[EventFacts], on_resolve: OnResolve = OnResolve.RESOLVE):
    """Apply events in turn as the worker would: a CREATE gets a ticket. Returns (state, decisions)."""
    state: GroupState | None = None
    decisions = []
    for event in events:
        d = decide_group(event, state, spec, on_resolve)
        new = d.state
        if d.parent is Action.CREATE:
            new = replace(new, parent=new.parent.with_ticket("P", "PARENT"))
        decisions.append(d)
        state = new
    assert state is not None
    return state, decisions


# -- the table -------------------------------------------------------------------------------------

def test_the_first_n_alerts_of_a_window_get_their_own_incidents_and_no_parent():
    state, ds = run(NOTE3, [fired("a"), fired("b"), fired("c")])
    assert [(d.role, d.parent) for d in ds] == [(Role.OWN, Action.NOTHING)] * 3
    assert state.parent.generation == 0 and state.count == 3


@pytest.mark.parametrize(
    ("spec", "roles", "parents"),
    [
        # children: note (default): alert N+1 opens the parent, later ones are noted on it
        (NOTE3, [Role.OWN] * 3 + [Role.NOTE] * 3, [Action.NOTHING] * 3 + [Action.CREATE, Action.NOTE, Action.NOTE]),
        # children: link with max_children 2: two linked children, then notes
        (LINK3, [Role.OWN] * 3 + [Role.CHILD, Role.CHILD, Role.NOTE],
         [Action.NOTHING] * 3 + [Action.CREATE, Action.NOTE, Action.NOTE]),
        # open_parent_after 1: the second alert opens the parent
        (GroupSpec(open_parent_after=1), [Role.OWN] + [Role.NOTE] * 5,
         [Action.NOTHING, Action.CREATE] + [Action.NOTE] * 4),
        # max_children 0 with link: notes only after the parent
        (replace(LINK3, max_children=0), [Role.OWN] * 3 + [Role.NOTE] * 3,
         [Action.NOTHING] * 3 + [Action.CREATE, Action.NOTE, Action.NOTE]),
    ],
)
def test_roles_and_parent_actions_as_a_storm_grows(spec, roles, parents):
    _, ds = run(spec, [fired(f"a{i}") for i in range(6)])
    assert [d.role for d in ds] == roles
    assert [d.parent for d in ds] == parents


@pytest.mark.parametrize(
    ("events", "last_role", "last_parent", "why"),
    [
        ([fired("a"), fired("a")], Role.OWN, Action.NOTHING, "a duplicate Fired changes nothing"),
        ([resolved("a"), fired("a")], Role.NONE, Action.NOTHING, "a Fired after its own Resolved opens nothing"),
        ([fired("a", at(5)), fired("a", at(2))], Role.OWN, Action.NOTHING, "an older episode is ignored"),
        ([fired("a"), resolved("a"), resolved("a")], Role.OWN, Action.NOTHING, "a second Resolved changes nothing"),
        ([resolved("a", at(1)), fired("a", at(4))], Role.OWN, Action.NOTHING,
         "a new episode after resolved-before-fired is a new alert of the window"),
        ([EventFacts("a", Kind.UPDATE, at(1), at(1))], Role.NONE, Action.NOTHING, "updates are not grouped"),
    ],
)
def test_out_of_order_and_repeated_events(events, last_role, last_parent, why):
    _, ds = run(NOTE3, events)
    assert (ds[-1].role, ds[-1].parent) == (last_role, last_parent), why


def storm(n: int) -> list[EventFacts]:
    return [fired(f"a{i}") for i in range(n)]


def test_the_parent_resolves_when_every_alert_of_the_window_has_resolved():
    events = storm(5)
    state, ds = run(NOTE3, [*events, *(resolved(f"a{i}") for i in range(4))])
    assert ds[-1].parent is Action.NOTHING and state.parent.open, "one alert still fires: the parent stays open"
    d = decide_group(resolved("a4"), state, NOTE3)
    assert d.parent is Action.RESOLVE and not d.state.parent.open


@pytest.mark.parametrize(("on_resolve", "expected"), [(OnResolve.RESOLVE, Action.RESOLVE),
                                                       (OnResolve.NOTE, Action.NOTHING),
                                                       (OnResolve.NOTHING, Action.NOTHING)])
def test_the_parent_resolves_only_when_the_route_resolves(on_resolve, expected):
    _, ds = run(NOTE3, [*storm(4), *(resolved(f"a{i}") for i in range(4))], on_resolve)
    assert ds[-1].parent is expected


def test_a_member_firing_again_after_the_parent_resolved_reopens_it():
    state, _ = run(NOTE3, [*storm(4), *(resolved(f"a{i}") for i in range(4))])
    assert not state.parent.open
    d = decide_group(fired("a3", at(7)), state, NOTE3)
    assert (d.role, d.parent, d.state.parent.open) == (Role.NOTE, Action.REOPEN, True)
    d = decide_group(fired("new", at(8)), state, NOTE3)
    assert (d.role, d.parent) == (Role.NOTE, Action.REOPEN), "a new alert joining a resolved parent reopens it"


def test_a_parent_whose_create_was_not_recorded_is_opened_by_the_next_event():
    # Alert 4 decided CREATE and its record holds the members, but the parent's ticket was never recorded.
    d = decide_group(fired("a3"), GroupState.from_data(run(NOTE3, storm(3))[0].to_data()), NOTE3)
    unrecorded = d.state
    assert d.parent is Action.CREATE and unrecorded.parent.ticket_id is None
    again = decide_group(fired("a3"), unrecorded, NOTE3)
    assert again.parent is Action.CREATE, "a duplicate of the opener still opens the due parent"
    other = decide_group(fired("a9"), unrecorded, NOTE3)
    assert other.parent is Action.CREATE and other.role is Role.NOTE


def test_a_due_parent_is_not_opened_once_every_alert_resolved():
    unrecorded = decide_group(fired("a3"), run(NOTE3, storm(3))[0], NOTE3).state
    state = unrecorded
    for i in range(4):
        d = decide_group(resolved(f"a{i}"), state, NOTE3)
        state = d.state
    assert d.parent is Action.NOTHING and not state.parent.open


def test_members_past_the_tracked_limit_are_noted_and_counted():
    state, _ = run(GroupSpec(open_parent_after=1), storm(MAX_MEMBERS))
    d = decide_group(fired("extra"), state, GroupSpec(open_parent_after=1))
    assert (d.role, d.parent, d.state.overflow, d.state.count) == (Role.NOTE, Action.NOTE, 1, MAX_MEMBERS + 1)
    assert "extra" not in d.state.members


def test_links_are_due_for_members_with_tickets_once_the_parent_exists():
    state, _ = run(LINK3, storm(2))
    state = with_member_ticket(state, "a0", "T0")
    assert links_due(state) == [], "no parent yet: nothing to link to"
    state, _ = run(LINK3, storm(5))
    for i in range(5):
        state = with_member_ticket(state, f"a{i}", f"T{i}")
    assert links_due(state) == ["a0", "a1", "a2", "a3", "a4"]
    state = with_linked(state, ["a0", "a1"])
    assert links_due(state) == ["a2", "a3", "a4"]
    assert with_member_ticket(state, "a0", "T0") == state, "the same ticket again changes nothing"
    assert links_due(with_member_ticket(state, "a0", "T0b"))[0] == "a0", "a member's new ticket is linked afresh"


def test_state_round_trips_through_the_stored_data():
    state, _ = run(LINK3, [*storm(5), resolved("a1")])
    state = with_linked(with_member_ticket(state, "a3", "T3"), ["a3"])
    assert GroupState.from_data(json.loads(json.dumps(state.to_data()))) == state


def test_the_stored_record_stays_small_at_the_member_limit():
    state, _ = run(GroupSpec(open_parent_after=5), [fired(f"{i:08d}-0000-4000-8000-000000000000")
                                                    for i in range(MAX_MEMBERS)])
    size = len(json.dumps(state.to_data()))
    assert size < 32_000, f"{size} characters: over Azure Table's 64 KiB string property"


# -- windows and keys ------------------------------------------------------------------------------

def alert(rule: str = "cpu-high", rg: str = "rg-web", guid: str = "11111111-0000-4000-8000-000000000001"):
    doc = load_sample("testaction-metric-static-fired.json")
    e = doc["data"]["essentials"]
    e["alertRule"] = rule
    sub = "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"
    e["alertId"] = f"{sub}/providers/Microsoft.AlertsManagement/alerts/{guid}"
    e["alertTargetIDs"] = [f"/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/{rg}/providers/"
                           "microsoft.compute/virtualmachines/vm1"]
    return parse_alert_json(json.dumps(doc).encode())


@pytest.mark.parametrize(("fired_at", "seconds", "start"), [
    ("2024-05-01T10:07:31.123000000Z", 900, "2024-05-01T10:00:00.000000000Z"),
    ("2024-05-01T10:15:00.000000000Z", 900, "2024-05-01T10:15:00.000000000Z"),
    ("2024-05-01T10:14:59.999999999Z", 900, "2024-05-01T10:00:00.000000000Z"),
    ("2024-05-01T10:14:59.000000000Z", 3600, "2024-05-01T10:00:00.000000000Z"),
    ("2024-05-01T23:59:59.000000000Z", 86400, "2024-05-01T00:00:00.000000000Z"),
])
def test_windows_are_fixed_slices_of_time(fired_at, seconds, start):
    assert window_start(fired_at, seconds) == start


def test_alerts_group_by_the_named_fields_and_window():
    spec = GroupSpec(by=("alert_rule", "resource_group"))
    k = group_key(alert(), spec, 0, at(1))
    assert k is not None and k.values == {"alert_rule": "cpu-high", "resource_group": "rg-web"}
    assert group_key(alert(guid="11111111-0000-4000-8000-000000000002"), spec, 0, at(2)) == k, "one group"
    assert group_key(alert(rg="rg-db"), spec, 0, at(1)).key != k.key, "another resource group"
    assert group_key(alert(rule="disk"), spec, 0, at(1)).key != k.key, "another rule"
    assert group_key(alert(), spec, 1, at(1)).key != k.key, "another route"
    assert group_key(alert(), spec, 0, instant("2024-05-01T10:16:00Z")).key != k.key, "the next window"
    assert group_key(alert(rg="rg-db"), GroupSpec(by=("alert_rule",)), 0, at(1)).key == \
        group_key(alert(), GroupSpec(by=("alert_rule",)), 0, at(1)).key, "grouped by rule alone"


def test_service_health_is_never_grouped():
    doc = load_sample("testaction-servicehealth-fired.json")
    assert group_key(parse_alert_json(json.dumps(doc).encode()), GroupSpec(), 0, at(1)) is None


def test_the_parent_summary_counts_the_storm():
    k = group_key(alert(), GroupSpec(by=("alert_rule", "resource_group")), 0, at(2))
    state, _ = run(NOTE3, [fired(f"a{i}", at(2 + i % 3)) for i in range(37)])
    assert parent_summary(k, state) == "37 alerts of rule cpu-high in rg-web since 10:02 UTC"


# -- properties ------------------------------------------------------------------------------------

specs = st.builds(
    GroupSpec,
    open_parent_after=st.integers(1, 6),
    children=st.sampled_from(list(GroupChildren)),
    max_children=st.integers(0, 4),
)


@st.composite
def streams(draw):
    """Events of up to 15 alerts (a Fired, maybe its Resolved, maybe a second episode), duplicated and shuffled."""
    events = []
    for i in range(draw(st.integers(1, 15))):
        for episode in range(draw(st.integers(1, 2))):
            when = at(1 + 3 * episode, i)
            events.append(fired(f"a{i}", when))
            if draw(st.booleans()):
                events.append(resolved(f"a{i}", when, at(2 + 3 * episode, i)))
    events += draw(st.lists(st.sampled_from(events), max_size=10))  # redeliveries
    return draw(st.permutations(events))


@settings(max_examples=300, deadline=None)
@given(spec=specs, events=streams())
def test_incidents_per_window_never_exceed_the_cap(spec, events):
    state, ds = run(spec, events)
    creates = sum(1 for d in ds if d.parent is Action.CREATE)
    assert creates <= 1, f"the parent was opened {creates} times"
    own = {a for a, m in state.members.items() if m.role is Role.OWN}
    children = {a for a, m in state.members.items() if m.role is Role.CHILD}
    assert len(own) <= spec.open_parent_after and len(children) <= spec.max_children
    assert len(own) + len(children) + creates <= incident_cap(spec)
    # An alert's role, once given, never changes (so it never gets a second incident from the group).
    seen: dict[str, Role] = {}
    for event, d in zip(events, ds, strict=True):
        if d.role is not Role.NONE:
            assert seen.setdefault(event.alert, d.role) == d.role, f"{event.alert} changed role"


@settings(max_examples=300, deadline=None)
@given(spec=specs, events=streams())
def test_the_parent_is_open_exactly_while_an_alert_of_its_window_fires(spec, events):
    state, _ = run(spec, events)
    latest: dict[str, str] = {}
    for e in events:
        latest[e.alert] = max(latest.get(e.alert, ""), e.fired_at)
    resolved_eps = {(e.alert, e.fired_at) for e in events if e.kind is Kind.RESOLVED}
    firing = {a for a, f in latest.items() if (a, f) not in resolved_eps}
    tracked_firing = {a for a, m in state.members.items() if m.role is not Role.NONE and not m.resolved}
    assert tracked_firing == firing, "a member's resolved mark does not follow its latest episode"
    if state.count > spec.open_parent_after and firing:
        assert state.parent.ticket_id is not None and state.parent.open, "a storm with alerts firing has no parent"
    if state.parent.ticket_id is not None:
        assert state.parent.open == bool(firing), "the parent is open while nothing fires, or closed while one does"


def test_member_role_enum_round_trips():
    assert Member("x", False, Role("child")).role.has_ticket and not Role.NOTE.has_ticket


# -- maintenance windows and flap damping in a group (docs/lifecycle.md "Grouping, windows and flapping") --

PATCH = InWindow("patch", instant("2024-05-01T11:00:00Z"))


def test_an_alert_inside_a_window_is_deferred_and_never_counted_toward_the_parent():
    state, _ = run(NOTE3, storm(3))
    d = decide_group(fired("late", at(5)), state, NOTE3, window=PATCH)
    assert (d.role, d.parent) == (Role.DEFERRED, Action.NOTHING), "an alert inside a window opened the parent"
    assert d.state.count == 3, "an alert inside a window counted toward the threshold"
    assert "inside maintenance window patch" in d.reason
    again = decide_group(fired("late", at(5)), d.state, NOTE3, window=PATCH)
    assert (again.role, again.parent, again.state) == (Role.DEFERRED, Action.NOTHING, d.state), "a duplicate moved it"


def test_a_storm_inside_a_window_opens_nothing_and_joins_at_its_end_as_it_would_have():
    state = None
    for event in storm(6):
        d = decide_group(event, state, NOTE3, window=PATCH)
        assert d.parent is Action.NOTHING
        state = d.state
    assert state.count == 0 and state.roles(Role.DEFERRED) == 6
    roles, actions = [], []
    for i in range(6):
        d = release_deferred(f"a{i}", state, NOTE3)
        roles.append(d.role)
        actions.append(d.parent)
        state = d.state
        if d.parent is Action.CREATE:
            state = replace(state, parent=state.parent.with_ticket("P", "PARENT"))
    assert roles == [Role.OWN] * 3 + [Role.NOTE] * 3
    assert actions == [Action.NOTHING] * 3 + [Action.CREATE, Action.NOTE, Action.NOTE]
    assert release_deferred("a5", state, NOTE3).parent is Action.NOTHING, "a due event delivered twice acted twice"


@pytest.mark.parametrize("events,window_at_end,expected_role,expected_parent,why", [
    ([fired("a")], PATCH, Role.DEFERRED, Action.NOTHING, "another window still covers it at the end: it waits"),
    ([fired("a"), resolved("a")], None, Role.DEFERRED, Action.NOTHING, "resolved inside the window: nothing opens"),
    ([], None, Role.NONE, Action.NOTHING, "nothing deferred: a stray due event does nothing"),
])
def test_release_at_a_windows_end(events, window_at_end, expected_role, expected_parent, why):
    state = None
    for event in events:
        state = decide_group(event, state, NOTE3, window=PATCH).state
    d = release_deferred("a", state, NOTE3, window=window_at_end)
    assert (d.role, d.parent) == (expected_role, expected_parent), why


def test_a_deferred_alert_resolving_never_resolves_the_parent():
    state, _ = run(NOTE3, [*storm(4), resolved("a0"), resolved("a1"), resolved("a2")])
    state = decide_group(fired("late", at(4)), state, NOTE3, window=PATCH).state
    d = decide_group(resolved("late", at(4)), state, NOTE3)
    assert d.parent is Action.NOTHING and d.state.parent.open, "a never-counted alert resolved the parent"
    last = decide_group(resolved("a3"), d.state, NOTE3)
    assert last.parent is Action.RESOLVE, "the parent waited for an alert that was never counted"


def test_a_member_firing_again_inside_a_window_tells_the_parent_at_its_end():
    state, _ = run(NOTE3, [*storm(4), *(resolved(f"a{i}") for i in range(4))])
    assert not state.parent.open
    d = decide_group(fired("a0", at(6)), state, NOTE3, window=PATCH)
    assert (d.role, d.parent, d.state.parent.open) == (Role.OWN, Action.NOTHING, False), "reopened inside the window"
    end = release_deferred("a0", d.state, NOTE3)
    assert (end.role, end.parent, end.state.parent.open) == (Role.OWN, Action.REOPEN, True)
    assert release_deferred("a0", end.state, NOTE3).parent is Action.NOTHING


def test_a_flapping_member_counts_once_and_does_not_note_the_parent():
    state, _ = run(NOTE3, storm(5))
    for minute in range(2, 9):
        d = decide_group(fired("a4", at(minute)), state, NOTE3, flapping=True)
        assert d.parent is Action.NOTHING, f"a flapping re-fire (minute {minute}) noted the parent"
        state = d.state
    assert state.count == 5, "a flapping alert counted more than once"


def test_a_held_resolve_keeps_the_alert_firing_in_the_group_until_it_is_delivered():
    state, _ = run(NOTE3, [*storm(4), *(resolved(f"a{i}") for i in range(3))])
    held = decide_group(resolved("a3"), state, NOTE3, held=True)
    assert held.parent is Action.NOTHING and held.state.parent.open, "the parent resolved under a held resolve"
    assert "held" in held.reason
    delivered = decide_group(resolved("a3"), held.state, NOTE3)  # the hold's due event
    assert delivered.parent is Action.RESOLVE


@st.composite
def windowed_streams(draw):
    """Fired/Resolved events of up to 12 alerts, some inside a maintenance window, plus the windows' ends
    ("release") for some of those, duplicated and shuffled."""
    events = []
    for i in range(draw(st.integers(1, 12))):
        inside = draw(st.booleans())
        when = at(1, i)
        events.append(("event", fired(f"a{i}", when), inside))
        if draw(st.booleans()):
            events.append(("event", resolved(f"a{i}", when, at(2, i)), False))
        if inside and draw(st.booleans()):
            events.append(("release", f"a{i}", False))
    events += draw(st.lists(st.sampled_from(events), max_size=8))
    return draw(st.permutations(events))


@settings(max_examples=300, deadline=None)
@given(spec=specs, events=windowed_streams())
def test_alerts_inside_a_window_never_count_until_its_end_and_the_cap_holds(spec, events):
    state: GroupState | None = None
    creates = 0
    released: set[str] = set()
    for what, item, inside in events:
        if what == "release":
            d = release_deferred(item, state, spec)
            released.add(item)
        else:
            d = decide_group(item, state, spec, window=PATCH if inside else None)
        creates += d.parent is Action.CREATE
        state = d.state
        if d.parent is Action.CREATE:
            state = replace(state, parent=state.parent.with_ticket("P", "PARENT"))
    assert creates <= 1, f"the parent was opened {creates} times"
    only_inside = {e.alert for w, e, inside in events if w == "event" and e.kind is Kind.FIRED and inside} - {
        e.alert for w, e, inside in events if w == "event" and e.kind is Kind.FIRED and not inside}
    for alert in only_inside - released:
        member = state.members.get(alert)
        assert member is None or not member.role.counted, f"{alert} fired only inside the window and was counted"
    assert state.roles(Role.OWN) <= spec.open_parent_after and state.roles(Role.CHILD) <= spec.max_children
    assert state.roles(Role.OWN) + state.roles(Role.CHILD) + creates <= incident_cap(spec)


@settings(max_examples=200, deadline=None)
@given(spec=specs, events=streams())
def test_a_flapping_alert_counts_once_whatever_its_episodes(spec, events):
    state: GroupState | None = None
    notes = 0
    for event in events:
        d = decide_group(event, state, spec, flapping=True)
        notes += d.parent is Action.NOTE
        state = d.state
        if d.parent is Action.CREATE:
            state = replace(state, parent=state.parent.with_ticket("P", "PARENT"))
    alerts = {e.alert for e in events}
    assert state.count <= len(alerts), "an alert counted more than once"
    assert notes <= len(alerts), f"{notes} parent notes for {len(alerts)} alerts: re-fires of a flapping alert noted"
