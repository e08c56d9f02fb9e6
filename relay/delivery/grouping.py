"""Storm grouping: many alerts of one group in one window become one parent incident (issue 15).

Part of the pure lifecycle core: no I/O, no clock, no config lookups; time comes in as the alerts' own
`firedDateTime`. A route's `group:` (`GroupSpec`) says which alert fields form a group and how long a
window lasts. Windows are fixed slices of time (`window_seconds` long, counted from the Unix epoch), so
the window of an event follows from its own `firedDateTime` alone, whatever order the events arrive in.

Per (group, window) the store keeps one record (`GroupState`, the parent incident's ticket state plus
the members), written with the store's version checks like every ticket record. `decide_group` takes one
event and that state and says what the alert is in the group (`Role`) and what happens to the parent:

- the first `open_parent_after` (N) alerts of the window are `own`: their incidents open as without
  grouping;
- alert N+1 opens the parent; it and later alerts are `child` (`children: link`, their own incident
  linked to the parent, at most `max_children` per window) or `note` (a work note on the parent, no
  ticket); a member with a ticket is linked to the parent once both exist (`links_due`);
- the parent resolves when every member has resolved, and reopens when a member fires again after that.

So a window opens at most N + 1 + max_children incidents (N + 1 with `children: note`): `incident_cap`.

Noise control meets grouping here too (docs/lifecycle.md "Grouping, windows and flapping"): an alert
that fires inside a maintenance window of its route is `deferred` (not counted, opens no parent) until
the window's end, when `release_deferred` lets it join as if it fired then; a flapping member counts once:
its re-fires do not note the parent, and while its own resolve is held the group counts it as firing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from relay.alerts import Alert, ServiceHealthContext, resource_group_of, subscription_of
from relay.delivery.lifecycle import Action, EventFacts, InWindow, Kind, TicketState, episode
from relay.schema import GROUP, GROUP_BY_DEFAULT, GroupChildren, OnResolve

# Members tracked one by one per window: a record stays far below Azure Table's 64 KiB per property. Alerts
# past it are still noted on the parent and counted (`overflow`), but not waited for before it resolves.
MAX_MEMBERS = 200


class Role(StrEnum):
    OWN = "own"  # one of the first N of the window: its own incident, linked to the parent once there is one
    CHILD = "child"  # children: link, within max_children: its own incident, linked to the parent
    NOTE = "note"  # a work note on the parent, no ticket of its own
    NONE = "none"  # resolved before it fired (or beyond what is tracked): opens nothing
    # Fired inside a maintenance window of its route: not counted, no parent; its own key defers its create
    # to the window's end, when `release_deferred` gives it one of the roles above.
    DEFERRED = "deferred"

    @property
    def has_ticket(self) -> bool:
        return self in (Role.OWN, Role.CHILD)

    @property
    def counted(self) -> bool:
        """Whether the alert is one of the window's alerts (counted, waited for before the parent resolves)."""
        return self not in (Role.NONE, Role.DEFERRED)

    @property
    def own_key(self) -> bool:
        """Whether the alert's own ticket key hears of its events (its incident, or the deferral of one)."""
        return self in (Role.OWN, Role.CHILD, Role.DEFERRED)


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A route's `group:` (docs/configuration.md); defaults and bounds are `relay.schema.GROUP`'s."""

    by: tuple[str, ...] = GROUP_BY_DEFAULT
    window_seconds: float = GROUP["window_seconds"].default
    open_parent_after: int = int(GROUP["open_parent_after"].default)
    children: GroupChildren = GroupChildren.NOTE
    max_children: int = int(GROUP["max_children"].default)


def incident_cap(spec: GroupSpec) -> int:
    """The most incidents one window of one group opens: N own, the parent, and the linked children."""
    return spec.open_parent_after + 1 + (spec.max_children if spec.children is GroupChildren.LINK else 0)


@dataclass(frozen=True, slots=True)
class GroupKey:
    """The group and window one alert belongs to: its store key (also the parent's correlation key), the
    values it was grouped by, and the window's start (an `instant()` string)."""

    key: str
    values: Mapping[str, str]
    window_start: str


def group_value(alert: Alert, name: str) -> str:
    """One `by` field of an alert, lower case ("" when the alert has none)."""
    e = alert.essentials
    value = {
        "alert_rule": e.alert_rule,
        "resource_group": resource_group_of(alert),
        "subscription": subscription_of(alert),
        "severity": e.severity,
        "monitoring_service": e.monitoring_service,
        "signal_type": e.signal_type,
    }[name]
    return (value or "").lower()


def group_key(alert: Alert, spec: GroupSpec, route_index: int, fired_at: str) -> GroupKey | None:
    """The group and window of an alert fired at `fired_at` (an `instant()` string); None for Service Health
    notifications, whose threads are one incident each already."""
    if isinstance(alert.context, ServiceHealthContext):
        return None
    values = {name: group_value(alert, name) for name in spec.by}
    start = window_start(fired_at, spec.window_seconds)
    raw = "|".join([str(route_index), *(f"{k}={v}" for k, v in values.items()), start])
    return GroupKey("grp-" + hashlib.sha256(raw.encode()).hexdigest()[:32], values, start)


def window_start(fired_at: str, window_seconds: float) -> str:
    """The start of the fixed window holding `fired_at` (both `instant()` strings)."""
    epoch = datetime.fromisoformat(fired_at[:19] + "+00:00").timestamp()
    start = epoch - epoch % window_seconds
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%S") + ".000000000Z"


@dataclass(frozen=True, slots=True)
class Member:
    """One alert of a window: its latest episode, whether that resolved, its role, and its ticket (if any)."""

    fired_at: str
    resolved: bool
    role: Role
    ticket_id: str | None = None
    linked: bool = False  # its ticket is linked to the parent
    deferred: bool = False  # its latest episode fired inside a maintenance window: the parent hears at its end


@dataclass(frozen=True, slots=True)
class GroupState:
    """What the store keeps of one group's window (`TicketRecord.data`): the parent's ticket state (the
    lifecycle's own, so that its create and steps are the worker's ordinary ones) and the members."""

    parent: TicketState = field(default_factory=TicketState)
    members: Mapping[str, Member] = field(default_factory=dict)
    overflow: int = 0  # alerts past MAX_MEMBERS: noted, counted, not tracked
    since: str = ""  # the earliest firedDateTime of a member

    @property
    def count(self) -> int:
        """Alerts in the window so far (those that fired)."""
        return sum(1 for m in self.members.values() if m.role.counted) + self.overflow

    def roles(self, role: Role) -> int:
        return sum(1 for m in self.members.values() if m.role is role)

    def to_data(self) -> dict[str, Any]:
        return {
            **self.parent.to_data(),
            "group": {
                "members": {k: [m.fired_at, m.resolved, str(m.role), m.ticket_id, m.linked,
                                *([True] if m.deferred else [])]
                            for k, m in self.members.items()},
                "overflow": self.overflow,
                "since": self.since,
            },
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> GroupState:
        group = data.get("group") or {}
        return cls(
            parent=TicketState.from_data(data),
            members={str(k): Member(str(v[0]), bool(v[1]), Role(v[2]), v[3], bool(v[4]), len(v) > 5 and bool(v[5]))
                     for k, v in (group.get("members") or {}).items()},
            overflow=int(group.get("overflow", 0)),
            since=str(group.get("since", "")),
        )


@dataclass(frozen=True, slots=True)
class GroupDecision:
    role: Role  # what the event's alert is in the group (the worker opens its own ticket for own and child)
    parent: Action  # CREATE (open the parent), NOTE, RESOLVE, REOPEN, or NOTHING
    reason: str
    state: GroupState  # to store once the parent's call succeeded (CREATE: the shell adds the ticket id)


def decide_group(event: EventFacts, state: GroupState | None, spec: GroupSpec,
                 on_resolve: OnResolve = OnResolve.RESOLVE, *, window: InWindow | None = None,
                 flapping: bool = False, held: bool = False) -> GroupDecision:
    """The grouping table (docs/lifecycle.md "Storm grouping"). Every branch returns; none does I/O.

    `window`: the maintenance window of the route covering the alert at the event's time (a Fired inside
    one is deferred: not counted, no parent). `flapping`: the alert's own key is in a flapping period (a
    re-fire does not note the parent). `held`: this Resolved's resolve is held by flap damping (the group
    counts the alert firing until the hold's due event tells it again)."""
    st = state or GroupState()
    member = st.members.get(event.alert)
    if event.kind is Kind.UPDATE:
        return GroupDecision(member.role if member else Role.NONE, Action.NOTHING, "update: not grouped", st)
    if member is not None and event.fired_at < member.fired_at:
        return _with_due_parent(GroupDecision(member.role, Action.NOTHING, "event of an earlier episode", st))
    if event.kind is Kind.FIRED:
        return _with_due_parent(_fired(event, st, member, spec, window, flapping))
    if held and member is not None and member.role.counted and episode(event.fired_at) == episode(member.fired_at):
        return _with_due_parent(GroupDecision(member.role, Action.NOTHING, "flapping: its resolve is held; the "
                                              "group counts it firing until the hold passes", st))
    return _with_due_parent(_resolved(event, st, member, on_resolve))


def release_deferred(alert: str, state: GroupState | None, spec: GroupSpec, *,
                     window: InWindow | None = None) -> GroupDecision:
    """A maintenance window's end for `alert` (its timer's due event): a member whose latest episode fired
    inside the window and still fires joins the group now, as a Fired would (a new alert takes the next
    role: own, child or note; a known member notes or reopens the parent). `window`: another window
    covering it is on at the due time (it waits for that one's end). Once released, nothing more: a due
    event delivered twice acts once."""
    st = state or GroupState()
    member = st.members.get(alert)
    if member is None or not (member.role is Role.DEFERRED or member.deferred):
        return GroupDecision(member.role if member else Role.NONE, Action.NOTHING, "nothing deferred in the group",
                             st)
    if member.resolved:
        return _with_due_parent(GroupDecision(member.role, Action.NOTHING, "resolved inside the maintenance window",
                                              st))
    if window is not None:
        return GroupDecision(member.role, Action.NOTHING, f"inside maintenance window {window.name} now", st)
    rest = replace(st, members={k: m for k, m in st.members.items() if k != alert})
    if member.role is Role.DEFERRED:
        event = EventFacts(alert, Kind.FIRED, member.fired_at, member.fired_at)
        d = _fired(event, rest, None, spec, None, False)
        return _with_due_parent(replace(d, reason="maintenance window ended, still firing: " + d.reason))
    again = replace(member, deferred=False)
    new = replace(st, members={**st.members, alert: again})
    d = _joined(new, again.role, "maintenance window ended: a member fired again inside it", reopen=True)
    return _with_due_parent(d)


def _fired(event: EventFacts, st: GroupState, member: Member | None, spec: GroupSpec, window: InWindow | None,
           flapping: bool) -> GroupDecision:
    since = min(st.since, event.fired_at) if st.since else event.fired_at
    if member is not None and member.role in (Role.NONE, Role.DEFERRED) and event.fired_at > member.fired_at:
        member = None  # it resolved before it fired once (or was deferred); this episode is a new alert
    if member is not None:
        if event.fired_at == member.fired_at:
            return GroupDecision(member.role, Action.NOTHING, "already applied (or resolved before it fired)", st)
        # A new episode of a member: it stays what it was; a parent it had resolved with reopens.
        again = replace(member, fired_at=event.fired_at, resolved=False, deferred=window is not None)
        new = replace(st, members={**st.members, event.alert: again})
        if window is not None:
            return GroupDecision(again.role, Action.NOTHING, f"a member fired again inside maintenance window "
                                 f"{window.name}: the parent hears of it at the window's end", new)
        if flapping and new.parent.open:
            return GroupDecision(again.role, Action.NOTHING, "a flapping member fired again: counted once, the "
                                 "parent is not noted", new)
        return _joined(new, again.role, "a member fired again", reopen=True)
    if window is not None:
        if len(st.members) >= MAX_MEMBERS:
            return GroupDecision(Role.DEFERRED, Action.NOTHING, f"inside maintenance window {window.name}: not "
                                 "counted; past the members tracked, its incident waits for the window's end", st)
        new = replace(st, members={**st.members, event.alert: Member(event.fired_at, False, Role.DEFERRED)})
        return GroupDecision(Role.DEFERRED, Action.NOTHING, f"inside maintenance window {window.name}: not counted "
                             "toward the parent; it joins the group at the window's end if still firing", new)
    if event.alert not in st.members and len(st.members) >= MAX_MEMBERS:
        new = replace(st, overflow=st.overflow + 1, since=since)
        return _joined(new, Role.NOTE, f"past the {MAX_MEMBERS} members tracked: noted, not tracked", reopen=True)
    if st.parent.generation == 0 and st.count < spec.open_parent_after:
        role = Role.OWN
    elif spec.children is GroupChildren.LINK and st.roles(Role.CHILD) < spec.max_children:
        role = Role.CHILD
    else:
        role = Role.NOTE
    new = replace(st, members={**st.members, event.alert: Member(event.fired_at, False, role)}, since=since)
    if role is Role.OWN:
        return GroupDecision(role, Action.NOTHING, f"one of the first {spec.open_parent_after} of the window", new)
    return _joined(new, role, f"alert {new.count} of the window", reopen=True)


def _joined(st: GroupState, role: Role, reason: str, *, reopen: bool) -> GroupDecision:
    """An alert joined (or fired again in) a window: note it on the parent, reopening a resolved one."""
    if st.parent.generation == 0 and role is Role.OWN:
        return GroupDecision(role, Action.NOTHING, reason, st)
    if st.parent.ticket_id is None:  # not opened yet, or its create's outcome is not recorded yet
        return GroupDecision(role, Action.CREATE, reason + ": opens the parent",
                             replace(st, parent=replace(st.parent, open=True, generation=1)))
    if st.parent.open:
        return GroupDecision(role, Action.NOTE, reason + ": noted on the parent", st)
    if reopen:
        return GroupDecision(role, Action.REOPEN, reason + ": the parent reopens",
                             replace(st, parent=replace(st.parent, open=True)))
    return GroupDecision(role, Action.NOTHING, reason, st)


def _resolved(event: EventFacts, st: GroupState, member: Member | None, on_resolve: OnResolve) -> GroupDecision:
    if member is None:
        # Resolved before it fired: remember it, so that its late Fired opens nothing.
        new = replace(st, members={**st.members, event.alert: Member(event.fired_at, True, Role.NONE)})
        if len(st.members) >= MAX_MEMBERS:
            new = st
        return GroupDecision(Role.NONE, Action.NOTHING, "resolved before it fired", new)
    if member.resolved and event.fired_at == member.fired_at:
        return GroupDecision(member.role, Action.NOTHING, "already resolved", st)
    # (A Resolved of a newer episode than the one on record resolves that episode: its late Fired is a repeat.)
    new = replace(st, members={**st.members, event.alert: replace(member, fired_at=event.fired_at, resolved=True)})
    if member.role is Role.DEFERRED:  # never counted: its resolve moves no parent
        return GroupDecision(member.role, Action.NOTHING, "resolved; it was never counted (fired inside a "
                             "maintenance window)", new)
    firing = [m for m in new.members.values() if m.role.counted and not m.resolved]
    if firing or not new.parent.open or new.parent.ticket_id is None:
        return GroupDecision(member.role, Action.NOTHING, f"resolved; {len(firing)} of the window still firing", new)
    if on_resolve is OnResolve.RESOLVE:
        return GroupDecision(member.role, Action.RESOLVE, "resolved; every alert of the window has resolved",
                             replace(new, parent=replace(new.parent, open=False)))
    return GroupDecision(member.role, Action.NOTHING, f"resolved; the parent stays (on_resolve: {on_resolve})", new)


def _with_due_parent(decision: GroupDecision) -> GroupDecision:
    """A parent that is due but was never recorded as opened (its create's outcome was lost, or a replica
    wrote the members and crashed) is opened by whichever delivery comes next: the window never stays
    over N alerts without its parent."""
    st = decision.state
    if decision.parent is not Action.NOTHING or st.parent.generation == 0 or st.parent.ticket_id is not None \
            or not st.parent.open:
        return decision
    if any(m.role.counted and not m.resolved for m in st.members.values()) or st.overflow:
        return replace(decision, parent=Action.CREATE, reason=decision.reason + "; the parent is not open yet")
    # Every alert resolved before the parent could open: it never will.
    return replace(decision, reason=decision.reason + "; every alert resolved before the parent opened",
                   state=replace(st, parent=replace(st.parent, open=False)))


def links_due(state: GroupState) -> list[str]:
    """Members whose ticket is known and not yet linked to the parent (none while there is no parent)."""
    if state.parent.ticket_id is None:
        return []
    return [k for k, m in state.members.items() if m.role.has_ticket and m.ticket_id and not m.linked]


def with_member_ticket(state: GroupState, alert: str, ticket_id: str | None) -> GroupState:
    """The state once a member's own incident is known (a new ticket unlinks: it is linked afresh)."""
    member = state.members.get(alert)
    if member is None or not member.role.has_ticket or ticket_id is None or member.ticket_id == ticket_id:
        return state
    return replace(state, members={**state.members, alert: replace(member, ticket_id=ticket_id, linked=False)})


def with_linked(state: GroupState, alerts: list[str]) -> GroupState:
    members = dict(state.members)
    for alert in alerts:
        if alert in members:
            members[alert] = replace(members[alert], linked=True)
    return replace(state, members=members)


# -- the parent's texts ---------------------------------------------------------------------------

_BY_WORDS = {"alert_rule": "of rule", "resource_group": "in", "subscription": "in subscription",
             "severity": "at", "monitoring_service": "from", "signal_type": "of signal"}


def parent_summary(key: GroupKey, state: GroupState) -> str:
    """`37 alerts of rule cpu-high in rg-web since 10:02 UTC`."""
    parts = [f"{state.count} alerts"]
    parts += [f"{_BY_WORDS[k]} {v}" for k, v in key.values.items() if v]
    since = state.since or key.window_start
    return " ".join(parts) + f" since {since[11:16]} UTC"


def joined_note(count: int, title: str, fired_at: str, alert_id: str, role: Role, again: bool = False) -> str:
    """The parent's work note for one alert that joined the storm (or fired again in it)."""
    what = "fired again" if again else f"joined as alert {count}"
    tail = " (its own incident is linked to this one)" if role is Role.CHILD else ""
    return f"Storm: Azure Monitor alert {title} {what} at {fired_at}{tail}. The group now holds {count} alerts.\n" \
           f"Alert id: {alert_id}"
