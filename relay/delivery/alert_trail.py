"""The alert trail for people: `relay alerts show <alert id | event key>` prints what became of each
event of an alert (every attempt, decision and target call), `relay alerts list` the recent events.
Both only read the store.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import TextIO

from relay.store.base import TRAIL_STATES, Attempt, EventTrail, Store, TrailEntry

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
LIST_LIMIT = 100


def parse_since(text: str, now: float) -> float:
    """'90s', '15m', '1h', '2d', '1w' before `now`, or an ISO 8601 time: the epoch seconds it names."""
    match = _SINCE.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: give a duration (30m, 1h, 2d, 1w) or an ISO 8601 time "
                         "(2025-01-31T08:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def guid(alert_id: str) -> str:
    """The alert's GUID: the last segment of its ARM id (what the portal shows)."""
    return alert_id.rstrip("/").rsplit("/", 1)[-1]


def tickets_text(trail: EventTrail) -> str:
    return ", ".join(f"{t.target} {t.ticket}" for t in trail.tickets) or "-"


def event_as_json(trail: EventTrail) -> dict[str, object]:
    return {
        "key": trail.key,
        "alert_id": trail.alert_id,
        "condition": trail.condition,
        "occurred_at": trail.occurred_at,
        "received_at": iso(trail.received_at),
        "state": trail.state,
        "tickets": [{"target": t.target, "ticket": t.ticket, "link": t.link} for t in trail.tickets],
        "attempts": [
            {"at": iso(a.at), "outcome": a.outcome, "error": a.error, "entries": [e.to_data() for e in a.entries]}
            for a in trail.attempts
        ],
    }


def list_table(trails: list[EventTrail]) -> str:
    if not trails:
        return "no events"
    rows = [("RECEIVED (UTC)", "STATE", "CONDITION", "ALERT", "TICKETS", "KEY")]
    for t in trails:
        rows.append((iso(t.received_at), t.state, t.condition, guid(t.alert_id), tickets_text(t), t.key))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
                     for r in rows)


def show_text(trails: list[EventTrail]) -> str:
    """The whole trail of one alert, event by event, each attempt with its decisions and calls."""
    lines = [f"alert {trails[0].alert_id}"]
    for t in trails:
        lines.append("")
        lines.append(f"{t.condition} at {t.occurred_at}, received {iso(t.received_at)}: {t.state}"
                     f"  (key {t.key})")
        if t.tickets:
            lines.append("  tickets: " + ", ".join(
                f"{x.target} {x.ticket}" + (f" <{x.link}>" if x.link else "") for x in t.tickets))
        if not t.attempts:
            lines.append("  no attempt recorded yet" if t.state == "pending" else "  no attempt recorded")
        for n, a in enumerate(t.attempts, 1):
            lines.extend(_attempt_lines(n, a))
    return "\n".join(lines)


def _attempt_lines(n: int, attempt: Attempt) -> list[str]:
    if attempt.outcome == "sync":  # two-way sync's decision on the event's ticket (relay.reconcile.sync)
        return [f"  two-way sync, {iso(attempt.at)}", *(f"    {entry_text(e)}" for e in attempt.entries)]
    head = f"  attempt {n}, {iso(attempt.at)}: {attempt.outcome}"
    if attempt.error:
        head += f": {_one_line(attempt.error)}"
    return [head, *(f"    {entry_text(e)}" for e in attempt.entries)]


def entry_text(e: TrailEntry) -> str:
    if e.kind == "decision":
        text = f"decide {e.target + ' ' if e.target else ''}{e.what}"
        if e.ticket:
            text += f" (ticket {e.ticket})"
        return text + (f": {_one_line(e.detail)}" if e.detail else "")
    text = f"call   {e.target} {e.what}: {e.status}"
    if e.latency_ms is not None:
        text += f" in {e.latency_ms:.0f} ms"
    if e.ticket:
        text += f", ticket {e.ticket}"
    if e.link:
        text += f" <{e.link}>"
    return text + (f": {_one_line(e.detail)}" if e.detail else "")


async def show_command(store: Store, alert: str, out: TextIO, err: TextIO, *, json_lines: bool = False) -> int:
    trails = await store.alert_trail(alert.strip())
    if not trails:
        err.write(f"relay: no stored event of alert {alert!r} (give its alert id or an event key from "
                  "`relay alerts list`; events older than retention are gone)\n")
        return 1
    if json_lines:
        for t in trails:
            out.write(json.dumps(event_as_json(t)) + "\n")
    else:
        out.write(show_text(trails) + "\n")
    return 0


async def list_command(store: Store, out: TextIO, *, since: float | None, state: str | None,
                       limit: int = LIST_LIMIT, json_lines: bool = False) -> int:
    if state is not None and state not in TRAIL_STATES:
        raise ValueError(f"unknown state {state!r}: use one of {', '.join(TRAIL_STATES)}")
    trails = await store.recent_events(since=since, state=state, limit=limit)
    if json_lines:
        for t in trails:
            out.write(json.dumps(event_as_json(t)) + "\n")
    else:
        out.write(list_table(trails) + "\n")
    return 0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _one_line(text: str) -> str:
    return " ".join(text.split())
