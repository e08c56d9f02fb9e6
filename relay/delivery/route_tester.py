"""`relay route`: what the relay would do with one alert under a RELAY_CONFIG, sending nothing.

For every route it says whether it matches (and, when not, which key fails), and for each matching
route's target the ticket keys, the rendered summary, description and fields, and what the lifecycle
would do given the ticket state to assume (STATE.json, default: none). It reads no clock (the time is
passed in), builds no target (a kind's text limits and severity fields are class facts) and opens no
connection, so it runs anywhere a config file and an alert body are.

Each feature that changes what happens to an alert on a route (maintenance windows, storm grouping,
flap damping) adds one line per route through `EXPLAINERS`: a function from a `RouteView` to the
lines it prints, usually one, `<feature>: <what applies>`. It reads its own section of STATE.json from
`RouteView.state.raw` (`group`, `flap`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from relay.alerts import Alert, SchemaError, check_times, resource_group_of, subscription_of
from relay.delivery.lifecycle import (
    Action,
    Decision,
    EventFacts,
    TicketKey,
    TicketState,
    correlation_key,
    decide,
    event_facts,
    instant,
    ticket_keys,
)
from relay.delivery.rendering import note_text, render_incident
from relay.delivery.routing import RelayConfig, Route, TargetConfig
from relay.targets import TextLimits, load_kind

# The sections STATE.json may hold. `tickets` is read here; `group` (storm grouping) and `flap` (flap
# damping) belong to those features' explainers, which read them from `AssumedState.raw`.
STATE_SECTIONS = ("tickets", "group", "flap")
ANY_KEY = "*"  # a `tickets.<target>` entry that stands for every ticket key of the alert
_TICKET_KEYS = ("ticket_id", "ticket_number", "open", "generation", "last_at", "alerts", "alert_ids", "refused")


class StateError(ValueError):
    """STATE.json is not the documented shape; `path` names the offending JSON path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class AssumedState:
    """The state `relay route` assumes: ticket records per target and key, and the other sections raw."""

    tickets: Mapping[str, Mapping[str, TicketState]] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)

    def ticket(self, target: str, key: str) -> TicketState | None:
        per_target = self.tickets.get(target) or {}
        return per_target.get(key, per_target.get(ANY_KEY))


def parse_state(doc: Any) -> AssumedState:
    """STATE.json as `AssumedState`; raises StateError naming the path of the first thing that is wrong.

    Shape: `{"tickets": {"<target>": {"<ticket key>" or "*": <ticket record>}}, "group": ..., "flap": ...}`,
    a ticket record being what the store keeps (`TicketState.to_data`): `ticket_id`, `ticket_number`,
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
    return AssumedState(tickets=tickets, raw=doc)


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


Explainer = Callable[[RouteView], Iterable[str]]
# One per feature that changes what happens on a route; each adds its line(s) to the route's output.
EXPLAINERS: list[Explainer] = []


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
    view = RouteView(config, route, cfg, alert, at, state, facts, keys)
    for explainer in explainers:
        out += [f"  {line}" for line in explainer(view)]
    for key in keys:
        assumed = state.ticket(cfg.name, key.key)
        decision = decide(facts, assumed, route.policy)
        out += _key_lines(route, cfg, target, alert, key, assumed, decision)
    return out


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
        out += _block(note_text(decision.action, event_facts(alert).kind, alert, target))  # type: ignore[arg-type]
        out.append("      (the relay ends it with the event's step marker, [azure-relay:...])")
    return out


def _block(text: str) -> list[str]:
    return [f"      | {line}".rstrip() for line in text.splitlines()]
