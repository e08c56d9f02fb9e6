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
from dataclasses import dataclass, field
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
    """alert id + condition + time: a retry maps to the same key; Fired, Resolved, Fired are three."""
    # ARM ids are case-insensitive; Azure may change the case between retries of one notification.
    raw = f"{alert_id.lower()}|{condition}|{occurred_at}"
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """A leased event. `receipt` proves the lease; `attempts` counts earlier delivery attempts."""

    event: Event
    receipt: str
    attempts: int
    handle: str  # the backend's id of the queued delivery
    received_at: float = 0.0  # wall-clock time (epoch seconds) intake accepted the event


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
        allows at wall-clock time `now` (with their payload blobs). Never touches pending events."""
        ...
