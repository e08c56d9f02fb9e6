"""STATE.json for `relay route`: the ticket, storm group and flap damping state to assume, checked.

`parse_state` turns the document into plain lifecycle data (`TicketState`, `GroupState` members, a key's
flap `noise`), or raises `StateError` naming the JSON path of the first thing that is wrong. The shape
is documented in docs/configuration.md (`relay route`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from relay.delivery.grouping import GroupSpec, GroupState, Member, Role
from relay.delivery.lifecycle import TicketState, instant

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
