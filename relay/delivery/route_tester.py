"""`relay route`: what the relay would do with one alert under a RELAY_CONFIG, sending nothing.

For every route it says whether it matches (and, when not, which key fails), and for each matching
route's target the ticket keys, the rendered summary, description and fields, and what the lifecycle
would do given the ticket state to assume (STATE.json, default: none). It reads no clock (the time is
passed in), builds no target (a kind's text limits and severity fields are class facts) and opens no
connection, so it runs anywhere a config file and an alert body are.

Each feature that changes what happens to an alert on a route (maintenance windows, storm grouping,
flap damping) adds its lines per route through `EXPLAINERS`: a function from a `RouteView` to the
lines it prints, `<feature>: <what applies>`. The view carries what the pure core decided for the route
(the window on at `--at`, each ticket key's `decide_with_noise`, the group's `decide_group`), so an
explainer only words it; STATE.json's `group` and `flap` sections are parsed here, with the ticket state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from relay.alerts import Alert, SchemaError, check_times, resource_group_of, subscription_of
from relay.delivery.flapping import shift
from relay.delivery.grouping import (
    GroupDecision,
    GroupKey,
    GroupSpec,
    GroupState,
    Member,
    Role,
    decide_group,
    group_key,
    parent_summary,
    release_deferred,
)
from relay.delivery.lifecycle import (
    Action,
    Decision,
    EventFacts,
    InWindow,
    Kind,
    Mark,
    TicketKey,
    TicketState,
    correlation_key,
    decide_due,
    decide_with_noise,
    episode,
    event_facts,
    instant,
    ticket_keys,
)
from relay.delivery.maintenance import active_window
from relay.delivery.rendering import note_text, render_incident
from relay.delivery.routing import RelayConfig, Route, TargetConfig
from relay.targets import TextLimits, load_kind

# The sections STATE.json may hold: ticket records, the storm group's state, and flap damping's state.
STATE_SECTIONS = ("tickets", "group", "flap")
ANY_KEY = "*"  # a `tickets.<target>` (or `flap.<target>`) entry that stands for every ticket key of the alert
_TICKET_KEYS = ("ticket_id", "ticket_number", "open", "generation", "last_at", "alerts", "alert_ids", "refused")
_GROUP_KEYS = ("alerts", "firing", "children", "parent", "since", "member")
_PARENT_KEYS = ("ticket_id", "ticket_number", "open")
_MEMBER_KEYS = ("role", "fired_at", "resolved")
_FLAP_KEYS = ("flips", "flapping", "held")
_HELD_KEYS = ("at", "fired_at", "until")


class StateError(ValueError):
    """STATE.json is not the documented shape; `path` names the offending JSON path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class AssumedGroup:
    """`group.<target>`: the storm group this alert's window holds so far (its other alerts) and its parent."""

    alerts: int = 0  # other alerts of the window so far
    firing: int = 0  # of them, still firing
    children: int = 0  # of them, linked children (children: link)
    parent: TicketState | None = None  # None: no parent opened yet
    since: str = ""  # the window's earliest firedDateTime ("" : this alert's)
    member: Member | None = None  # this alert, when it is already in the group (fired_at "" : its episode)

    def state(self, spec: GroupSpec, alert: str, fired_at: str) -> GroupState:
        """As the store would hold it: the other alerts as members, roles given in the order the group gives
        them (the first N own, then children, then notes)."""
        members: dict[str, Member] = {}
        for i in range(self.alerts):
            if i < spec.open_parent_after:
                role = Role.OWN
            elif i < spec.open_parent_after + self.children:
                role = Role.CHILD
            else:
                role = Role.NOTE
            members[f"other-{i + 1}"] = Member(fired_at, i >= self.firing, role)
        if self.member is not None:
            members[alert] = replace(self.member, fired_at=self.member.fired_at or fired_at)
        return GroupState(parent=self.parent or TicketState(), members=members, since=self.since or fired_at)


@dataclass(frozen=True, slots=True)
class AssumedFlap:
    """`flap.<target>.<key>`: an alert's flap damping state (`TicketState.noise`)."""

    flips: tuple[str, ...] = ()
    flapping: str | None = None  # when its flapping period began
    held: Mapping[str, str] | None = None  # a held resolve: at, fired_at ("": the alert's episode), until ("": +hold)


@dataclass(frozen=True, slots=True)
class AssumedState:
    """The state `relay route` assumes: ticket records per target and key, group and flap state per target,
    and the document as written."""

    tickets: Mapping[str, Mapping[str, TicketState]] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)
    groups: Mapping[str, AssumedGroup] = field(default_factory=dict)
    flaps: Mapping[str, Mapping[str, AssumedFlap]] = field(default_factory=dict)

    def ticket(self, target: str, key: str) -> TicketState | None:
        per_target = self.tickets.get(target) or {}
        return per_target.get(key, per_target.get(ANY_KEY))

    def flap(self, target: str, key: str) -> AssumedFlap | None:
        per_target = self.flaps.get(target) or {}
        return per_target.get(key, per_target.get(ANY_KEY))


def parse_state(doc: Any) -> AssumedState:
    """STATE.json as `AssumedState`; raises StateError naming the path of the first thing that is wrong.

    Shape (docs/configuration.md, `relay route`): `{"tickets": {"<target>": {"<ticket key>" or "*": <ticket
    record>}}, "group": {"<target>": <group>}, "flap": {"<target>": {"<ticket key>" or "*": <flap>}}}`, a
    ticket record being what the store keeps (`TicketState.to_data`): `ticket_id`, `ticket_number`,
    `open`, `generation`, `last_at`, `alerts: {"<alert>": [firedDateTime, resolved, time]}`.
    """
    if not isinstance(doc, dict):
        raise StateError("$", "must be a JSON object")
    for key in doc:
        if key not in STATE_SECTIONS:
            raise StateError(key, f"unknown section; expected one of {', '.join(STATE_SECTIONS)}")
    tickets_doc = doc.get("tickets", {})
    if not isinstance(tickets_doc, dict):
        raise StateError("tickets", "must be an object of target names")
    tickets: dict[str, dict[str, TicketState]] = {}
    for target, keys in tickets_doc.items():
        if not isinstance(keys, dict):
            raise StateError(f"tickets.{target}", 'must be an object of ticket keys (or "*")')
        tickets[target] = {key: _ticket(record, f"tickets.{target}.{key}") for key, record in keys.items()}
    groups_doc = doc.get("group", {})
    if not isinstance(groups_doc, dict):
        raise StateError("group", "must be an object of target names")
    groups = {target: _group(g, f"group.{target}") for target, g in groups_doc.items()}
    flaps_doc = doc.get("flap", {})
    if not isinstance(flaps_doc, dict):
        raise StateError("flap", "must be an object of target names")
    flaps: dict[str, dict[str, AssumedFlap]] = {}
    for target, keys in flaps_doc.items():
        if not isinstance(keys, dict):
            raise StateError(f"flap.{target}", 'must be an object of ticket keys (or "*")')
        flaps[target] = {key: _flap(f, f"flap.{target}.{key}") for key, f in keys.items()}
    return AssumedState(tickets=tickets, raw=doc, groups=groups, flaps=flaps)


def _object(value: Any, path: str, allowed: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StateError(path, f"must be {what} (an object)")
    for key in value:
        if key not in allowed:
            raise StateError(f"{path}.{key}", f"unknown key; expected one of {', '.join(allowed)}")
    return value


def _count(doc: Mapping[str, Any], key: str, path: str, default: int = 0) -> int:
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StateError(f"{path}.{key}", f"must be a whole number, 0 or more (got {json.dumps(value)[:40]})")
    return value


def _bool(doc: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise StateError(f"{path}.{key}", f"must be true or false (got {json.dumps(value)[:40]})")
    return value


def _time(doc: Mapping[str, Any], key: str, path: str) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise StateError(f"{path}.{key}", f"must be an ISO 8601 time (got {json.dumps(value)[:40]})")
    return _instant(value, f"{path}.{key}") if value else ""


def _group(doc: Any, path: str) -> AssumedGroup:
    doc = _object(doc, path, _GROUP_KEYS, "a group state")
    alerts = _count(doc, "alerts", path)
    firing = _count(doc, "firing", path, alerts)
    children = _count(doc, "children", path)
    if firing > alerts:
        raise StateError(f"{path}.firing", f"must be at most alerts ({alerts})")
    if children > alerts:
        raise StateError(f"{path}.children", f"must be at most alerts ({alerts})")
    parent = None
    if "parent" in doc:
        p = _object(doc["parent"], f"{path}.parent", _PARENT_KEYS, "the parent incident")
        for key in ("ticket_id", "ticket_number"):
            if key in p and not isinstance(p[key], str):
                raise StateError(f"{path}.parent.{key}", f"must be a string (got {json.dumps(p[key])[:40]})")
        name = p.get("ticket_id") or p.get("ticket_number")
        if not name:
            raise StateError(f"{path}.parent", "name the parent's ticket_id or ticket_number")
        if "open" not in p:
            raise StateError(f"{path}.parent", "say whether the parent is open (open: true or false)")
        parent = TicketState(ticket_id=name, ticket_number=p.get("ticket_number") or name,
                             open=_bool(p, "open", f"{path}.parent", True), generation=1)
    member = None
    if "member" in doc:
        m = _object(doc["member"], f"{path}.member", _MEMBER_KEYS, "this alert's place in the group")
        roles = tuple(str(r) for r in Role if r is not Role.NONE)
        if m.get("role") not in roles:
            raise StateError(f"{path}.member.role", f"must be one of {', '.join(roles)} "
                                                    f"(got {json.dumps(m.get('role'))[:40]})")
        member = Member(_time(m, "fired_at", f"{path}.member"), _bool(m, "resolved", f"{path}.member", False),
                        Role(m["role"]))
    return AssumedGroup(alerts, firing, children, parent, _time(doc, "since", path), member)


def _flap(doc: Any, path: str) -> AssumedFlap:
    doc = _object(doc, path, _FLAP_KEYS, "a flap state")
    flips = doc.get("flips", [])
    if not isinstance(flips, list):
        raise StateError(f"{path}.flips", "must be a list of the times of state changes")
    times = []
    for i, flip in enumerate(flips):
        if not isinstance(flip, str):
            raise StateError(f"{path}.flips[{i}]", f"must be an ISO 8601 time (got {json.dumps(flip)[:40]})")
        times.append(_instant(flip, f"{path}.flips[{i}]"))
    held = None
    if "held" in doc:
        h = _object(doc["held"], f"{path}.held", _HELD_KEYS, "a held resolve")
        if "at" not in h:
            raise StateError(f"{path}.held.at", "is required: the resolvedDateTime of the held resolve")
        held = {k: _time(h, k, f"{path}.held") for k in _HELD_KEYS}
    return AssumedFlap(tuple(sorted(times)), _time(doc, "flapping", path) or None, held)


def _ticket(record: Any, path: str) -> TicketState:
    if not isinstance(record, dict):
        raise StateError(path, "must be a ticket record (an object)")
    for key in record:
        if key not in _TICKET_KEYS:
            raise StateError(f"{path}.{key}", f"unknown key; expected one of {', '.join(_TICKET_KEYS)}")
    checks: tuple[tuple[str, type | tuple[type, ...]], ...] = (
        ("ticket_id", (str, type(None))), ("ticket_number", (str, type(None))), ("open", bool),
        ("generation", int), ("last_at", str), ("alerts", dict), ("alert_ids", dict), ("refused", list),
    )
    for key, kind in checks:
        if key in record and (not isinstance(record[key], kind) or (kind is int and isinstance(record[key], bool))):
            raise StateError(f"{path}.{key}", f"must be {_KIND_NAMES[key]} (got {json.dumps(record[key])[:40]})")
    named = bool(record.get("ticket_id") or record.get("ticket_number"))
    if record.get("open") and not named:
        raise StateError(f"{path}.open", "an open ticket needs its ticket_id or ticket_number")
    if named and "open" not in record:
        raise StateError(path, "say whether the ticket is open (open: true or false)")
    for alert, mark in (record.get("alerts") or {}).items():
        if not (isinstance(mark, list) and len(mark) == 3 and isinstance(mark[0], str) and isinstance(mark[1], bool)
                and isinstance(mark[2], str)):
            raise StateError(f"{path}.alerts.{alert}", "must be [firedDateTime, resolved (true/false), time]")
    data = dict(record)
    # Times as the lifecycle compares them (fixed-width UTC text), whatever ISO 8601 form was written.
    if "last_at" in data:
        data["last_at"] = _instant(data["last_at"], f"{path}.last_at")
    data["alerts"] = {alert: [_instant(m[0], f"{path}.alerts.{alert}[0]"), m[1],
                              _instant(m[2], f"{path}.alerts.{alert}[2]")]
                      for alert, m in (record.get("alerts") or {}).items()}
    if data.get("ticket_id") is None and data.get("ticket_number"):
        data["ticket_id"] = data["ticket_number"]  # the relay keeps both; a person usually knows the number
    if data.get("ticket_id") and "generation" not in data:
        data["generation"] = 1
    return TicketState.from_data(data)


def _instant(text: str, path: str) -> str:
    try:
        return instant(text)
    except ValueError:
        raise StateError(path, f"must be an ISO 8601 time (got {text[:40]!r})") from None


_KIND_NAMES = {"ticket_id": "a string or null", "ticket_number": "a string or null", "open": "true or false",
               "generation": "a whole number", "last_at": "a time (text)", "alerts": "an object",
               "alert_ids": "an object", "refused": "a list"}


@dataclass(frozen=True, slots=True)
class KeyView:
    """One ticket key of the route: the ticket state assumed (with its flap state) and what its lifecycle
    would do (`decide_with_noise`)."""

    key: TicketKey
    assumed: TicketState | None
    decision: Decision


@dataclass(frozen=True, slots=True)
class GroupView:
    """The route's storm group for this alert: its key, the state assumed, and what `decide_group` says."""

    key: GroupKey | None  # None: a Service Health notification, never grouped
    assumed: GroupState
    decision: GroupDecision | None


@dataclass(frozen=True, slots=True)
class RouteView:
    """What an explainer sees of one matching route."""

    config: RelayConfig
    route: Route
    target: TargetConfig
    alert: Alert
    at: datetime  # the time to explain at (`--at`, else now)
    state: AssumedState
    facts: EventFacts
    keys: tuple[TicketKey, ...]
    window: InWindow | None = None  # the maintenance window covering the alert on at `at`
    decisions: tuple[KeyView, ...] = ()
    group: GroupView | None = None  # None: the route does not group (or forwards)


Explainer = Callable[[RouteView], Iterable[str]]


@dataclass(frozen=True, slots=True)
class _KindFacts:
    """What rendering reads of a target: its kind's class facts, with no instance and no credentials."""

    name: str
    kind: str
    limits: TextLimits | None
    severity_fields: Mapping[str, Mapping[str, Any]]


def explain(config: RelayConfig, alert: Alert, *, at: datetime, state: AssumedState | None = None,
            explainers: Iterable[Explainer] | None = None) -> str:
    """The whole report for one alert, as text (what `relay route` prints)."""
    state = state or AssumedState()
    explainers = tuple(EXPLAINERS if explainers is None else explainers)
    e = alert.essentials
    facts = event_facts(alert)
    out = [
        f"alert: {e.alert_rule or e.monitoring_service} ({e.monitoring_service}, {e.severity or 'no severity'}, "
        f"{alert.condition})",
        f"  id: {e.alert_id}",
        f"  event: {facts.kind} at {alert.occurred_at} (episode fired {e.fired_at})",
        f"  alert key: {facts.alert} (its mark in a ticket record's alerts)",
        f"  subscription: {subscription_of(alert) or '-'} | resource group: {resource_group_of(alert) or '-'}",
        f"at: {at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
    ]
    try:
        check_times(alert, at)
    except SchemaError as exc:
        out.append(f"intake: refused with 422 ({exc}); nothing is stored or delivered")
        return "\n".join(out) + "\n"
    chosen = config.routes_for(alert)
    # Matching stops at the first matching route that does not continue (`RelayConfig.routes_for`).
    stopped_at = next((r.index for r in config.routes if not r.continue_ and r.match.matches(alert)), None)
    for route in config.routes:
        head = f"route {route.index} -> {route.target}"
        if route in chosen:
            out.append(f"{head}: matches{' (continue)' if route.continue_ else ''}")
            out += _route_lines(config, route, alert, at, state, facts, explainers)
        elif stopped_at is not None and route.index > stopped_at:
            out.append(f"{head}: not tried (route {stopped_at} matched and does not continue)")
        elif (why := route.match.mismatch(alert)) is not None:
            out.append(f"{head}: no match ({why})")
        else:
            out.append(f"{head}: matches, but an earlier route already takes this alert to {route.target}")
    if not chosen:
        out.append("no route matches: the relay logs the alert, counts it (relay_unrouted_alerts_total) "
                   "and delivers nothing")
    return "\n".join(out) + "\n"


def _route_lines(config: RelayConfig, route: Route, alert: Alert, at: datetime, state: AssumedState,
                 facts: EventFacts, explainers: tuple[Explainer, ...]) -> list[str]:
    cfg = config.targets[route.target]
    cls = load_kind(cfg.kind).TARGET_CLASS
    target = _KindFacts(cfg.name, cfg.kind, cls.limits, cls.severity_fields)
    out = []
    if target.limits is None:
        out.append(f"  {cfg.kind}: forwards the alert's body as received, once, in order per alert; "
                   "the receiver owns the lifecycle")
        keys: tuple[TicketKey, ...] = ()
    else:
        keys = tuple(ticket_keys(alert, route.incident_per, config.delivery.max_configuration_items))
    view = decide_route(config, route, alert, at, state, facts, keys)
    for explainer in explainers:
        out += [f"  {line}" for line in explainer(view)]
    grouped_away = view.group is not None and view.group.decision is not None \
        and not view.group.decision.role.own_key
    for kv in view.decisions:
        decision = kv.decision
        if grouped_away:
            assert view.group is not None and view.group.decision is not None
            decision = Decision(Action.NOTHING, f"grouped: {_ROLE_WORDS[view.group.decision.role]}", kv.decision.state)
        out += _key_lines(route, cfg, target, alert, kv.key, kv.assumed, decision)
    return out


def decide_route(config: RelayConfig, route: Route, alert: Alert, at: datetime, state: AssumedState,
                 facts: EventFacts, keys: tuple[TicketKey, ...]) -> RouteView:
    """What the pure core decides for this alert on this route, as the worker would decide it with the
    event happening at `at`: the window on then, each key's `decide_with_noise` (the assumed ticket with
    its flap state), and the group's `decide_group` (a Resolved after its own keys, to see a held resolve)."""
    target = config.targets[route.target]
    when = instant(at.astimezone(UTC).isoformat())
    window = active_window(config.maintenance, alert, when) if config.maintenance else None
    views = []
    for key in keys:
        assumed = _with_flap(state.ticket(target.name, key.key), state.flap(target.name, key.key), facts,
                             route)
        views.append(KeyView(key, assumed, decide_with_noise(facts, assumed, route.policy, window=window,
                                                             damping=route.damping)))
    group = None
    if route.group is not None and keys:
        gk = group_key(alert, route.group, route.index, facts.fired_at)
        assumed_group = state.groups.get(target.name, AssumedGroup()).state(route.group, facts.alert, facts.fired_at)
        decision = None
        if gk is not None:
            noise = [(kv.assumed.noise.get(facts.alert) or {}) if kv.assumed else {} for kv in views]
            held = facts.kind is Kind.RESOLVED and any(
                "held" in (kv.decision.state.noise.get(facts.alert) or {}) for kv in views)
            decision = decide_group(facts, assumed_group, route.group, route.policy.on_resolve, window=window,
                                    flapping=any("flapping" in n for n in noise), held=held)
        group = GroupView(gk, assumed_group, decision)
    return RouteView(config, route, target, alert, at, state, facts, keys, window, tuple(views), group)


def _with_flap(ticket: TicketState | None, flap: AssumedFlap | None, facts: EventFacts,
               route: Route) -> TicketState | None:
    """The assumed ticket with the flap state of `flap.<target>.<key>` as its `noise` for this alert (a held
    resolve also marks the held episode resolved, as the store holds it)."""
    if flap is None:
        return ticket
    st = ticket or TicketState()
    noise: dict[str, Any] = {"flips": list(flap.flips)}
    if flap.flapping:
        noise["flapping"] = flap.flapping
    mark = st.alerts.get(facts.alert)
    if flap.held is not None:
        fired_at = flap.held["fired_at"] or facts.fired_at
        hold = route.damping.hold_seconds if route.damping else 0
        noise["held"] = {"at": flap.held["at"], "fired_at": fired_at,
                         "until": flap.held["until"] or shift(flap.held["at"], hold)}
        if mark is None or episode(mark.fired_at) <= episode(fired_at):
            mark = Mark(fired_at, True, flap.held["at"])
    alerts = {**st.alerts, facts.alert: mark} if mark is not None else st.alerts
    return replace(st, alerts=alerts, noise={**st.noise, facts.alert: noise})


# -- the explainers: one per feature, each words what `decide_route` found -----------------------------

_ROLE_WORDS = {
    Role.OWN: "its own incident, as without grouping (linked to the parent once there is one)",
    Role.CHILD: "its own incident, linked to the parent",
    Role.NOTE: "a work note on the parent, no incident of its own",
    Role.NONE: "nothing: it resolved before it fired",
    Role.DEFERRED: "not counted toward the parent (inside a maintenance window); it joins at the window's end",
}


def _utc(instant_text: str) -> str:
    return instant_text[:19] + "Z"


def explain_maintenance(view: RouteView) -> list[str]:
    """Which window covers the alert at `--at` (or next), its mode, what happens now and at its end."""
    windows = view.config.maintenance
    if not windows:
        return []
    covering = [w for w in windows if w.covers(view.alert)]
    if not covering:
        return [f"maintenance: none of the {len(windows)} window(s) covers this alert"]
    out = []
    if view.window is not None:
        w = view.window
        out.append(f"maintenance: window {w.name} is on at --at, until {_utc(w.until)} (mode {w.mode})")
        for kv in view.decisions:
            out.append(f"  now, ticket key {kv.key.key}: {kv.decision.action} ({kv.decision.reason})")
            if not kv.decision.timers:
                out.append(f"  at its end ({_utc(w.until)}): nothing of this alert waits for it")
                continue
            after = active_window(windows, view.alert, w.until)
            absorbed = False
            if view.group is not None and view.group.decision is not None:
                released = release_deferred(view.facts.alert, view.group.decision.state, view.route.group,  # type: ignore[arg-type]
                                            window=after)
                absorbed = released.role is Role.NOTE
                out.append(f"  at its end, in the group: {released.role} ({released.reason}); "
                           f"parent: {released.parent}")
            due = decide_due(view.facts.alert, w.until, kv.decision.state, view.route.policy, window=after,
                             absorbed=absorbed)
            out.append(f"  at its end ({_utc(w.until)}): {due.action} ({due.reason})")
    else:
        upcoming = [(nxt, w) for w in covering if (nxt := w.schedule.next_after(view.at)) is not None]
        if upcoming:
            (start, end), w = min(upcoming, key=lambda pair: pair[0][0])
            zone = ZoneInfo(w.schedule.zone)
            out.append(f"maintenance: no window on at --at; next {w.name} (mode {w.mode}), "
                       f"{start.astimezone(zone):%Y-%m-%d %H:%M} to {end.astimezone(zone):%Y-%m-%d %H:%M} "
                       f"{w.schedule.zone}")
        else:
            out.append(f"maintenance: no window on at --at, and none of the {len(covering)} covering it runs again")
    event_window = active_window(windows, view.alert, view.facts.occurred_at)
    if (event_window and event_window.name) != (view.window and view.window.name):
        out.append(f"  (the relay decides by the event's own time, {_utc(view.facts.occurred_at)}: "
                   + (f"window {event_window.name} on then)" if event_window else "no window on then)"))
    return out


def explain_group(view: RouteView) -> list[str]:
    """The group key of this alert, where the assumed group state puts it, and what the parent does."""
    spec, group = view.route.group, view.group
    if spec is None or group is None:
        return []
    if group.key is None or group.decision is None:
        return ["group: none (Service Health notifications are never grouped: a thread is one incident)"]
    key, st, d = group.key, group.assumed, group.decision
    by = ", ".join(f"{k}={v or '(none)'}" for k, v in key.values.items())
    children = f"link, at most {spec.max_children}" if spec.children == "link" else "note"
    out = [f"group: {key.key} ({by}; window from {_utc(key.window_start)}, {spec.window_seconds:g} s; "
           f"parent after {spec.open_parent_after}, children {children})"]
    parent = st.parent.ticket_number or st.parent.ticket_id
    others = st.count - (1 if view.facts.alert in st.members and st.members[view.facts.alert].role.counted else 0)
    out.append(f"  assumed: {others} other alert(s) in the window, "
               + (f"parent {parent} {'open' if st.parent.open else 'resolved'}" if parent else "no parent yet"))
    out.append(f"  this alert: {d.role} ({d.reason})")
    out.append(f"    it gets {_ROLE_WORDS[d.role]}")
    out.append(f"  parent: {d.parent}" + (f": {parent_summary(key, d.state)}" if d.parent is Action.CREATE else ""))
    return out


def explain_flapping(view: RouteView) -> list[str]:
    """Per key: the state changes counted from the assumed flap state, flapping or not, a held resolve."""
    damping = view.route.damping
    if damping is None or not view.decisions:
        return []
    out = [f"flapping: more than {damping.transitions} state changes within {damping.window_seconds:g} s is "
           f"flapping; a flapping alert's resolve is held {damping.hold_seconds:g} s"]
    alert = view.facts.alert
    for kv in view.decisions:
        before = (kv.assumed.noise.get(alert) or {}) if kv.assumed else {}
        after = kv.decision.state.noise.get(alert) or {}
        flips = after.get("flips", before.get("flips", []))
        counted = f"{len(flips)} state change(s) counted in the window (from {_utc(flips[0])})" if flips else \
            "no state change counted"
        if "flapping" in after:
            status = f"flapping since {_utc(after['flapping'])}"
        else:
            status = "not flapping"
        out.append(f"  ticket key {kv.key.key}: {counted}; {status}")
        held = after.get("held")
        if held:
            due = decide_due(alert, held["until"], kv.decision.state, view.route.policy)
            out.append(f"  resolve held until {_utc(held['until'])}; then, with no re-fire: {due.action} "
                       f"({due.reason})")
        elif before.get("held"):
            out.append(f"  the held resolve (until {_utc(before['held']['until'])}) is cancelled by this event")
    return out


# One per feature that changes what happens on a route; each adds its line(s) to the route's output.
EXPLAINERS: list[Explainer] = [explain_maintenance, explain_group, explain_flapping]


def _key_lines(route: Route, cfg: TargetConfig, target: _KindFacts, alert: Alert, key: TicketKey,
               assumed: TicketState | None, decision: Decision) -> list[str]:
    generation = max(decision.state.generation, 1)
    out = [f"  ticket key {key.key} (correlation key {correlation_key(key.key, generation)})"]
    if assumed is None:
        out.append("    assumed state: no ticket")
    else:
        ticket = assumed.ticket_number or assumed.ticket_id or "none"
        out.append(f"    assumed state: ticket {ticket}, {'open' if assumed.open else 'resolved'}, "
                   f"generation {assumed.generation}, {len(assumed.alerts)} alert(s) on record")
    if key.configuration_items:
        out.append(f"    configuration items: {', '.join(key.configuration_items)}")
    out.append(f"    lifecycle: {decision.action} ({decision.reason})")
    previous = (assumed.ticket_number or assumed.ticket_id) if assumed and decision.action is Action.NEW else None
    incident = render_incident(
        alert, target=target,  # type: ignore[arg-type]  # rendering reads only the kind's facts
        correlation_key=correlation_key(key.key, generation), configuration_items=key.configuration_items,
        unbound_configuration_items=key.unbound, summary=route.summary, description=route.description,
        fields=route.fields, severity_fields=cfg.severity, previous_ticket=previous,
    )
    out.append(f"    summary: {incident.summary}")
    out.append("    description:")
    out += _block(incident.description)
    if incident.fields:
        out.append("    fields:")
        out += [f"      {name}: {json.dumps(value, ensure_ascii=False)}" for name, value in incident.fields.items()]
    else:
        out.append("    fields: none")
    if decision.action in (Action.NOTE, Action.RESOLVE, Action.REOPEN):
        out.append(f"    {decision.action} text:")
        out += _block(decision.note or note_text(decision.action, event_facts(alert).kind, alert,
                                                 target))  # type: ignore[arg-type]
        out.append("      (the relay ends it with the event's step marker, [azure-relay:...])")
    return out


def _block(text: str) -> list[str]:
    return [f"      | {line}".rstrip() for line in text.splitlines()]
