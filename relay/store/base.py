"""The durable store between intake and delivery: the contract every backend implements.

Backends (`relay.store.sqlite`, `relay.store.azure`) import this module, never the package face
(`relay.store`), which builds them; so the contract knows no backend and no import cycle forms.

Intake calls `accept`, which records an event and enqueues it for delivery in one atomic step.
The delivery worker `claim`s events (at most one in flight per alert, oldest first), then
`complete`s, `retry_later`s or `dead_letter`s each claim. Ticket records keep what we know of each
alert's ticket in each target, guarded by a version so that two workers can never both act on one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from relay.alerts import Alert


class StoreUnavailable(Exception):
    """The store cannot commit or answer right now; intake answers 503 so that Azure retries."""


class VersionConflict(Exception):
    """A ticket record changed since it was read; re-read it and decide again."""


class LeaseLost(Exception):
    """A claim's lease is no longer this worker's (it ran out, or another worker took the event over)."""


class StoreInUse(Exception):
    """Another running relay owns this store (SQLite: it holds the lock file beside the database)."""


class StoreNotFound(Exception):
    """An operating command named a store that does not exist (or is no relay store): nothing was created."""


# Delivery priorities, highest first. Only alerts' next events compete: one alert's events always go
# in order, whatever their priorities.
PRIORITY_URGENT = 2  # resolves (they close incidents) and Sev0/Sev1
PRIORITY_NORMAL = 1  # Sev2, no severity, and events stored before priorities existed
PRIORITY_LOW = 0  # Sev3/Sev4
PRIORITIES = (PRIORITY_URGENT, PRIORITY_NORMAL, PRIORITY_LOW)
_SEVERITY_PRIORITY = {"Sev0": PRIORITY_URGENT, "Sev1": PRIORITY_URGENT, "Sev2": PRIORITY_NORMAL,
                      "Sev3": PRIORITY_LOW, "Sev4": PRIORITY_LOW}


def delivery_priority(condition: str, severity: str | None) -> int:
    """How soon a backlog delivers an event: a Resolved, or a Sev0/Sev1, before a Sev3/Sev4."""
    if condition == "Resolved":
        return PRIORITY_URGENT
    return _SEVERITY_PRIORITY.get(severity or "", PRIORITY_NORMAL)


@dataclass(frozen=True, slots=True)
class Event:
    """One delivery from Azure, as stored: its idempotency key, what it is about, and the raw body."""

    key: str
    alert_id: str
    condition: str
    occurred_at: str
    body: bytes = field(repr=False)
    # Which alert's next event a backlog delivers first (`delivery_priority`); derived from the body, so
    # not part of an event's identity. Events stored before the field existed read as PRIORITY_NORMAL.
    priority: int = field(default=PRIORITY_NORMAL, compare=False)
    # The W3C traceparent of intake's span for this event when tracing is on (relay/telemetry.py), "" when
    # it was off: delivery's span joins that trace, whichever replica claims the event and when.
    trace_context: str = field(default="", compare=False)

    @classmethod
    def from_alert(cls, alert: Alert, body: bytes) -> Event:
        return cls(
            key=idempotency_key(alert.essentials.alert_id, alert.condition, alert.occurred_at),
            alert_id=alert.essentials.alert_id,
            condition=alert.condition,
            occurred_at=alert.occurred_at,
            body=body,
            priority=delivery_priority(alert.condition, alert.essentials.severity),
        )


def idempotency_key(alert_id: str, condition: str, occurred_at: str) -> str:
    """alert id + condition + time: a retry maps to the same key; Fired, Resolved, Fired are three.

    The time is `key_time(occurred_at)`, so the webhook's firedDateTime / resolvedDateTime and the
    Alerts Management API's startDateTime / monitorConditionResolvedDateTime (which reconciliation
    reads, through an SDK that keeps microseconds) give one key for one event.
    """
    # ARM ids are case-insensitive; Azure may change the case between retries of one notification.
    raw = f"{alert_id.lower()}|{condition}|{key_time(occurred_at)}"
    return hashlib.sha256(raw.encode()).hexdigest()


_KEY_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:[.,]\d+)?(Z|z|[+-]\d{2}:?\d{2})?$")


def key_time(text: str) -> str:
    """An event time as the idempotency key holds it: UTC, whole seconds, `YYYY-MM-DDTHH:MM:SSZ`.

    Whole seconds because the two ways an event reaches the relay write its time with 7, 6, 3 or no
    fractional digits (and sometimes an offset instead of Z); two events of one alert and condition are
    always minutes apart (an alert rule evaluates at most once a minute). Text that is not an ISO 8601
    time is kept as it is (the key then depends on the exact text, as every key did before).
    """
    m = _KEY_TIME.match(text.strip())
    if not m:
        return text
    date, clock, tz = m.groups()
    if tz in (None, "Z", "z"):
        return f"{date}T{clock}Z"
    offset = tz if ":" in tz else f"{tz[:3]}:{tz[3:]}"
    try:
        dt = datetime.fromisoformat(f"{date}T{clock}{offset}").astimezone(UTC)
    except ValueError:
        return text
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Claim:
    """A leased event. `receipt` proves the lease; `attempts` counts earlier delivery attempts."""

    event: Event
    receipt: str
    attempts: int
    handle: str  # the backend's id of the queued delivery
    received_at: float = 0.0  # wall-clock time (epoch seconds) intake accepted the event
    # What this attempt did (decisions, target calls), set by the worker before it records the outcome:
    # complete, retry_later and dead_letter store it in the same write as the outcome (the alert trail).
    trail: tuple[TrailEntry, ...] = field(default=(), compare=False)


# -- the alert trail: what happened to each event, kept as long as the event (docs/storage.md) ----------

TRAIL_STATES = ("pending", "delivered", "dead")
TRAIL_DETAIL_LIMIT = 500  # characters of a reason or error kept per entry
TRAIL_ENTRIES_LIMIT = 60  # entries kept per attempt (the first ones and the last one)
# One attempt's JSON at most: an Azure Table string property holds 32K characters (64 KiB of UTF-16).
TRAIL_JSON_LIMIT = 30_000


@dataclass(frozen=True, slots=True)
class TrailEntry:
    """One thing delivery did for an event: a decision (`kind` "decision") or a target call ("call").

    decision: `what` is the action (new, note, resolve, ...), `detail` its reason, `ticket` the ticket
    it concerns. call: `what` is the call (create, note, search, ...), `status` "ok" or the error's HTTP
    status (else "error"), `latency_ms`, `detail` the error, `ticket`/`link` the ticket it returned or
    acted on. Targets never see these: the worker writes them, the store keeps them with the event.
    """

    at: float  # wall-clock time (epoch seconds)
    kind: str
    target: str = ""
    what: str = ""
    detail: str = ""
    status: str = ""
    latency_ms: float | None = None
    ticket: str = ""
    link: str = ""

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"at": round(self.at, 3), "kind": self.kind}
        for name in ("target", "what", "detail", "status", "ticket", "link"):
            value = getattr(self, name)
            if value:
                data[name] = value[:TRAIL_DETAIL_LIMIT]
        if self.latency_ms is not None:
            data["latency_ms"] = round(self.latency_ms, 1)
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> TrailEntry:
        latency = data.get("latency_ms")
        return cls(at=float(data.get("at", 0.0)), kind=str(data.get("kind", "")),
                   target=str(data.get("target", "")), what=str(data.get("what", "")),
                   detail=str(data.get("detail", "")), status=str(data.get("status", "")),
                   latency_ms=float(latency) if latency is not None else None,
                   ticket=str(data.get("ticket", "")), link=str(data.get("link", "")))


def trail_json(entries: tuple[TrailEntry, ...] | list[TrailEntry]) -> str:
    """One attempt's entries as stored (both backends): bounded, so one attempt fits one table property."""
    kept = list(entries)
    if len(kept) > TRAIL_ENTRIES_LIMIT:  # a delivery that looped: keep how it began and how it ended
        kept = [*kept[:TRAIL_ENTRIES_LIMIT - 1], kept[-1]]
    while True:
        text = json.dumps([e.to_data() for e in kept], separators=(",", ":"))
        if len(text) <= TRAIL_JSON_LIMIT or len(kept) <= 1:
            return text  # one entry is a few KB at most: its fields are cut to TRAIL_DETAIL_LIMIT
        kept = [*kept[:len(kept) // 2 - 1], kept[-1]]


def trail_from_json(text: str | None) -> tuple[TrailEntry, ...]:
    if not text:
        return ()
    try:
        rows = json.loads(text)
    except ValueError:
        return ()
    return tuple(TrailEntry.from_data(r) for r in rows if isinstance(r, dict))


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt of an event as the store recorded it: its outcome and what it did."""

    at: float  # when its outcome was recorded
    outcome: str  # delivered | retry | dead_letter
    error: str = ""
    entries: tuple[TrailEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class TicketLink:
    target: str
    ticket: str
    link: str = ""


@dataclass(frozen=True, slots=True)
class EventTrail:
    """One received event and what became of it: `state` is one of TRAIL_STATES."""

    key: str
    alert_id: str
    condition: str
    occurred_at: str
    received_at: float
    state: str
    attempts: tuple[Attempt, ...] = ()  # oldest first; empty in listings (`recent_events`)
    tickets: tuple[TicketLink, ...] = ()  # the tickets its calls returned or acted on


def tickets_of(attempts: tuple[Attempt, ...] | list[Attempt]) -> tuple[TicketLink, ...]:
    """The distinct tickets an event's decisions concerned and its calls touched, in the order first seen."""
    seen: dict[tuple[str, str], TicketLink] = {}
    for attempt in attempts:
        for e in attempt.entries:
            if e.ticket and (e.kind == "decision" or e.status == "ok"):
                key = (e.target, e.ticket)
                if key not in seen or (e.link and not seen[key].link):
                    seen[key] = TicketLink(e.target, e.ticket, e.link)
    return tuple(seen.values())


def check_trail_query(state: str | None, limit: int) -> None:
    """What `recent_events` accepts, checked once for every backend."""
    if state is not None and state not in TRAIL_STATES:
        raise ValueError(f"unknown state {state!r}: use one of {', '.join(TRAIL_STATES)}")
    if limit < 1:
        raise ValueError(f"limit must be 1 or more (got {limit})")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    event: Event
    attempts: int
    error: str
    dead_at: float


@dataclass(frozen=True, slots=True)
class TicketRecord:
    """What we know of one alert's ticket in one target. `data` belongs to the lifecycle code."""

    target: str
    key: str
    data: dict[str, Any]
    version: str | None = None  # None: never stored
    # Wall-clock time (epoch seconds) the ticket was resolved, None while it is open or unknown;
    # the worker sets it, retention expires the record a while after it (`Retention.ticket_seconds`).
    closed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Retention:
    """How long the store keeps what it no longer needs for delivery, in seconds."""

    delivered_seconds: float  # events (and their payload blobs) once delivered
    dead_letter_seconds: float  # dead letters (and their events and blobs)
    ticket_seconds: float  # ticket records, counted from their `closed_at`; open tickets never expire


@dataclass(frozen=True, slots=True)
class Expired:
    """What one `expire` pass deleted."""

    events: int = 0
    dead_letters: int = 0
    tickets: int = 0
    blobs: int = 0


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def accept(self, event: Event) -> bool:
        """Durably record and enqueue; True if new, False if this key was seen before."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store can commit."""
        ...

    async def pending(self) -> int:
        """Events waiting for delivery (queued or leased)."""
        ...

    async def claim(self, limit: int, lease_seconds: float) -> list[Claim]:
        """Lease up to `limit` due events, never two of one alert at once, each alert's oldest first."""
        ...

    async def renew(self, claim: Claim, lease_seconds: float) -> None:
        """Extend the claim's lease to `lease_seconds` from now. The claim (its receipt) stays valid;
        a backend whose lease token changes on renewal keeps the new one itself. LeaseLost when the
        lease ran out and the event was claimed again, or was settled meanwhile."""
        ...

    async def complete(self, claim: Claim) -> None: ...

    async def retry_later(self, claim: Claim, delay_seconds: float, error: str, *,
                          count_attempt: bool = True) -> None:
        """Give the event back, due in `delay_seconds`. `count_attempt=False` hands back the attempt
        this claim counted (the event was not tried: its target's circuit was open)."""
        ...

    async def dead_letter(self, claim: Claim, error: str) -> None: ...

    async def dead_letters(self) -> list[DeadLetter]: ...

    async def replay(self, ids: list[str] | None) -> int:
        """Re-enqueue the named dead letters (all when None); returns how many."""
        ...

    async def event(self, alert_id: str, key: str) -> Event | None:
        """The stored event with this idempotency key (of this alert), None once retention removed it."""
        ...

    async def get_ticket(self, target: str, key: str) -> TicketRecord | None: ...

    async def put_ticket(self, record: TicketRecord) -> TicketRecord:
        """Write if `record.version` is still current (None: must not exist); else VersionConflict."""
        ...

    async def expire(self, now: float, retention: Retention) -> Expired:
        """Delete delivered events, dead letters and closed ticket records older than `retention`
        allows at wall-clock time `now` (with their payload blobs and trail). Never touches pending events."""
        ...

    async def add_trail(self, alert_id: str, key: str, outcome: str, entries: tuple[TrailEntry, ...]) -> bool:
        """Add one attempt (`outcome`, e.g. "sync") with `entries` to a stored event's trail, outside any
        claim (two-way sync's actions on the event's ticket). False when the store no longer holds the event."""
        ...

    async def alert_trail(self, alert: str) -> list[EventTrail]:
        """Every stored event of one alert (named by its alert id, any case, or by one of its events'
        keys), oldest first, each with its attempts; [] when the store holds none. Read-only."""
        ...

    async def recent_events(self, *, since: float | None = None, state: str | None = None,
                            limit: int = 100) -> list[EventTrail]:
        """Stored events received at or after `since` (epoch seconds), newest first, at most `limit`,
        optionally only those in `state` (one of TRAIL_STATES); without their attempts. Read-only."""
        ...
