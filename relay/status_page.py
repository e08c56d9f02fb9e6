"""The status page: a read-only HTML view for operators, served on the metrics/admin port only
(RELAY_METRICS_PORT, 127.0.0.1 by default), never on the public listener.

It shows the recent events with their tickets and links, how many wait for delivery, the dead
letters with the command that replays them, each target's circuit, and the start-up target check.
Server-rendered (no JavaScript); everything shown is escaped. `render_*` are pure functions over a
`StatusSnapshot`; `status_handler` gathers one from the store and the running worker (by default in
the delivery process).
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from relay.delivery.alert_trail import entry_text, guid
from relay.schema import STATUS_PATH
from relay.store.base import DeadLetter, EventTrail, Store, StoreUnavailable

log = logging.getLogger(__name__)

ALERT_PAGE_PATH = STATUS_PATH + "/alert"  # one alert's trail: ?key=<event key> or ?id=<alert id>
RECENT_EVENTS = 50  # events the page lists
# ...received in the last day: on Azure Storage the listing scans event rows, and this bounds what it returns.
RECENT_WINDOW_SECONDS = 24 * 3600
READ_TIMEOUT_SECONDS = 5.0  # a slow store shows as "unavailable" rather than hanging the page
# What a browser may do with the page: nothing but show it (no script, no frames, no outside requests).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

STORE_KEY = web.AppKey("status_store", Store)
SOURCES_KEY = web.AppKey("status_sources", dict)


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """Everything the page shows, read at `now` (epoch seconds). None: could not be read."""

    now: float
    pending: int | None
    recent: list[EventTrail] | None
    dead_letters: list[DeadLetter] | None
    circuits: Mapping[str, str]  # target -> closed | open | half-open
    target_check: Any = None  # the start-up target check's result; None: not run
    store_error: str = ""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def safe_link(url: str) -> str:
    """Only http(s) links become anchors: a stored link can never carry script (javascript:, data:)."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return ""
    return url if scheme in ("http", "https") else ""


def _ticket_cell(trail: EventTrail) -> str:
    if not trail.tickets:
        return "&ndash;"
    parts = []
    for t in trail.tickets:
        label = f"{_e(t.target)} {_e(t.ticket)}"
        link = safe_link(t.link)
        parts.append(f'<a href="{_e(link)}" rel="noreferrer">{label}</a>' if link else label)
    return ", ".join(parts)


def render_status(snap: StatusSnapshot) -> str:
    """The whole page."""
    sections = [
        _summary(snap),
        _circuits(snap.circuits),
        _target_check(snap.target_check),
        _recent(snap.recent),
        _dead(snap.dead_letters),
    ]
    return _page("Relay status", "".join(sections), snap.now)


def render_alert(trails: list[EventTrail], alert: str, now: float) -> str:
    """One alert's trail: each event, each attempt, each decision and call."""
    if not trails:
        body = f"<p id='none'>No stored event of alert <code>{_e(alert)}</code> (gone with retention?).</p>"
        return _page("Alert trail", body, now)
    parts = [f"<h2 id='alert'>{_e(trails[0].alert_id)}</h2>"]
    for t in trails:
        parts.append(f"<section class='event' data-state='{_e(t.state)}'><h3>{_e(t.condition)} at "
                     f"{_e(t.occurred_at)} <span class='state {_e(t.state)}'>{_e(t.state)}</span></h3>"
                     f"<p>received {_e(_iso(t.received_at))}, key <code>{_e(t.key)}</code>; tickets: "
                     f"{_ticket_cell(t)}</p>")
        if not t.attempts:
            parts.append("<p>No attempt recorded yet.</p>")
        for n, a in enumerate(t.attempts, 1):
            error = f": {_e(a.error)}" if a.error else ""
            items = "".join(f"<li>{_e(entry_text(x))}</li>" for x in a.entries)
            parts.append(f"<h4>Attempt {n}, {_e(_iso(a.at))}: {_e(a.outcome)}{error}</h4><ul>{items}</ul>")
        parts.append("</section>")
    return _page("Alert trail", "".join(parts), now)


def _page(title: str, body: str, now: float) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p>secure-export relay &middot; read-only &middot; as of "
        f"{_e(_iso(now))} &middot; <a href='{STATUS_PATH}'>status</a> &middot; <a href='/metrics'>metrics</a></p>"
        f"</header><main>{body}</main></body></html>"
    )


def _summary(snap: StatusSnapshot) -> str:
    pending = "unavailable" if snap.pending is None else str(snap.pending)
    dead = "unavailable" if snap.dead_letters is None else str(len(snap.dead_letters))
    error = f"<p class='error' id='store-error'>Store: {_e(snap.store_error)}</p>" if snap.store_error else ""
    return (f"<section id='summary'><dl><dt>Pending</dt><dd id='pending'>{_e(pending)}</dd>"
            f"<dt>Dead letters</dt><dd id='dead-count'>{_e(dead)}</dd></dl>{error}</section>")


def _circuits(circuits: Mapping[str, str]) -> str:
    if not circuits:
        return "<section id='circuits'><h2>Circuits</h2><p>No delivery worker is running.</p></section>"
    rows = "".join(f"<tr><td>{_e(name)}</td><td class='circuit {_e(state)}'>{_e(state)}</td></tr>"
                   for name, state in sorted(circuits.items()))
    return (f"<section id='circuits'><h2>Circuits</h2><table><tr><th>Target</th><th>Circuit</th></tr>"
            f"{rows}</table></section>")


def _target_check(result: Any) -> str:
    head = "<section id='target-check'><h2>Target check</h2>"
    if result is None:
        return head + "<p id='target-check-result'>not run</p></section>"
    return head + f"<div id='target-check-result'>{_value(_plain(result))}</div></section>"


def _plain(value: Any) -> Any:
    """A check result of any shape (dataclass, mapping, list, text) as plain data to show."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "as_dict") and callable(value.as_dict):
        return _plain(value.as_dict())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def _value(value: Any) -> str:
    if isinstance(value, dict):
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value(v)}</td></tr>" for k, v in value.items())
        return f"<table class='kv'>{rows}</table>"
    if isinstance(value, list):
        return "<ul>" + "".join(f"<li>{_value(v)}</li>" for v in value) + "</ul>" if value else "&ndash;"
    if value is True or value is False:
        return f"<span class='{'ok' if value else 'bad'}'>{'yes' if value else 'no'}</span>"
    return _e(value)


def _recent(recent: list[EventTrail] | None) -> str:
    head = "<section id='recent'><h2>Recent events (last 24 hours, newest first)</h2>"
    if recent is None:
        return head + "<p>unavailable</p></section>"
    if not recent:
        return head + "<p>None received.</p></section>"
    rows = []
    for t in recent:
        href = f"{ALERT_PAGE_PATH}?key={quote(t.key)}"
        rows.append(
            f"<tr class='event' data-state='{_e(t.state)}'><td>{_e(_iso(t.received_at))}</td>"
            f"<td><a href='{_e(href)}' title='{_e(t.alert_id)}'>{_e(guid(t.alert_id))}</a></td>"
            f"<td>{_e(t.condition)}</td><td class='state {_e(t.state)}'>{_e(t.state)}</td>"
            f"<td class='tickets'>{_ticket_cell(t)}</td></tr>")
    return (head + "<table><tr><th>Received</th><th>Alert</th><th>Condition</th><th>State</th>"
            "<th>Tickets</th></tr>" + "".join(rows) + "</table></section>")


def _dead(letters: list[DeadLetter] | None) -> str:
    head = "<section id='dead-letters'><h2>Dead letters</h2>"
    if letters is None:
        return head + "<p>unavailable</p></section>"
    if not letters:
        return head + "<p>None.</p></section>"
    rows = "".join(
        f"<tr class='dead'><td>{_e(d.id)}</td><td>{_e(_iso(d.dead_at))}</td><td>{_e(guid(d.event.alert_id))}</td>"
        f"<td>{_e(d.event.condition)}</td><td>{_e(d.attempts)}</td><td class='err'>{_e(d.error)}</td>"
        f"<td><code class='replay'>relay dead-letters replay {_e(d.id)}</code></td></tr>"
        for d in letters)
    return (head + "<p>Replay with the relay's RELAY_STORE set (or <code>--store</code>): "
            "<code>relay dead-letters replay ID</code>, or <code>--all</code>.</p>"
            "<table><tr><th>ID</th><th>Dead since</th><th>Alert</th><th>Condition</th><th>Attempts</th>"
            "<th>Error</th><th>Replay</th></tr>" + rows + "</table></section>")


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b;background:#fafafa}"
    "h1{margin:0 0 .2rem}header p{margin:0 0 1rem;color:#555}"
    "table{border-collapse:collapse;margin:.4rem 0 1.2rem;background:#fff}"
    "th,td{border:1px solid #ddd;padding:.3rem .55rem;text-align:left;vertical-align:top;font-size:.92rem}"
    "th{background:#f0f0f0}dl{display:flex;gap:2rem}dt{font-weight:600}dd{margin:0;font-size:1.4rem}"
    ".delivered,.closed,.ok{color:#1a7f37}.pending,.half-open{color:#9a6700}.dead,.open,.bad,.error{color:#cf222e}"
    "code{background:#eee;padding:0 .25rem}td.err{max-width:40rem}"
)


# -- serving -------------------------------------------------------------------------------------------


async def _guarded(read: Any, errors: list[str]) -> Any:
    try:
        async with asyncio.timeout(READ_TIMEOUT_SECONDS):
            return await read
    except (StoreUnavailable, TimeoutError) as exc:
        errors.append(str(exc) or "the store did not answer in time")
        return None


async def snapshot(store: Store, circuits: Mapping[str, str], target_check: Any, now: float) -> StatusSnapshot:
    errors: list[str] = []
    pending = await _guarded(store.pending(), errors)
    recent = await _guarded(store.recent_events(since=now - RECENT_WINDOW_SECONDS, limit=RECENT_EVENTS), errors)
    dead = await _guarded(store.dead_letters(), errors)
    return StatusSnapshot(now=now, pending=pending, recent=recent, dead_letters=dead, circuits=circuits,
                          target_check=target_check, store_error=errors[0] if errors else "")


def _html(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)


async def status_handler(request: web.Request) -> web.Response:
    import time

    sources = request.app[SOURCES_KEY]
    # The circuits are the delivery worker's, read from wherever it runs (its own process, by default).
    snap = await snapshot(request.app[STORE_KEY], await sources["circuits"](), sources["target_check"](),
                          time.time())
    return _html(render_status(snap))


async def alert_handler(request: web.Request) -> web.Response:
    import time

    alert = request.query.get("key") or request.query.get("id") or ""
    if not alert.strip():
        raise web.HTTPBadRequest(text="give ?id=<alert id> or ?key=<event key>")
    try:
        async with asyncio.timeout(READ_TIMEOUT_SECONDS):
            trails = await request.app[STORE_KEY].alert_trail(alert.strip())
    except (StoreUnavailable, TimeoutError) as exc:
        return web.Response(status=503, text=f"store unavailable: {exc}", headers=SECURITY_HEADERS)
    return _html(render_alert(trails, alert, time.time()))


def add_routes(app: web.Application, store: Store, *, circuits: Callable[[], Awaitable[Mapping[str, str]]],
               target_check: Callable[[], Any]) -> None:
    """Serve the status page and its alert pages on `app` (the metrics/admin site, never the public one)."""
    app[STORE_KEY] = store
    app[SOURCES_KEY] = {"circuits": circuits, "target_check": target_check}
    app.router.add_get(STATUS_PATH, status_handler)
    app.router.add_get(ALERT_PAGE_PATH, alert_handler)
