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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from relay.alerts import Alert, SchemaError, check_times, resource_group_of, subscription_of
from relay.delivery.flapping import shift
from relay.delivery.grouping import (
    GroupDecision,
    GroupKey,
    GroupState,
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
from relay.delivery.route_state import AssumedFlap, AssumedGroup, AssumedState
from relay.delivery.routing import RelayConfig, Route, TargetConfig
from relay.targets import TextLimits, load_kind


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
