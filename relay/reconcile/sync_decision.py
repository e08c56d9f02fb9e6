"""Two-way sync's decision, a pure function: given a ticket's change as its target reports it, what the
store knows of that ticket, the alert's current state in Azure (read by id) and the route's `sync:`
settings, does the relay close the alert, acknowledge it, or leave it? No I/O; the time is passed in.

The rules (docs/reconciliation.md "Two-way sync"): only a person's change moves an alert (never the relay's
own resolve); never an alert whose state changed in Azure after the ticket did; nothing once it is Closed;
acknowledge only from New; each action only where the route enables it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from relay.delivery.routing import RouteSync
from relay.targets import TicketChange

# A ticket change stamped further ahead of the relay's clock than this is not trusted: a target's clock
# that runs ahead would otherwise win every "which changed last" comparison against Azure.
MAX_CLOCK_SKEW = timedelta(minutes=5)
ALERT_STATES = ("New", "Acknowledged", "Closed")  # Alerts Management's alertState
# The reason when the alert's state is needed and absent: the shell reads the alert and decides again.
ALERT_GONE = "Azure no longer has the alert"


class SyncAction(StrEnum):
    CLOSE = "close"  # change-state to Closed
    ACKNOWLEDGE = "acknowledge"  # change-state to Acknowledged
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class TicketFacts:
    """What the store's record says of the ticket: the ticket now current under its key, whether the relay
    resolved it itself, whether a person's close is already recorded, and the relay's account in the target
    (None when the target does not say)."""

    ticket_id: str | None
    relay_resolved: bool = False
    person_closed: bool = False
    relay_account: str | None = None


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """The alert as Alerts Management's Get By Id answers now: alertState, monitorCondition and
    lastModifiedDateTime (timezone-aware)."""

    alert_state: str
    monitor_condition: str
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class SyncDecision:
    action: SyncAction
    reason: str
    # A person resolved or closed the ticket: the shell records it in the ticket record (`closed_by`), so
    # that later events of the episode leave the ticket alone, whatever happens to the alert.
    record_person_close: bool = False


def by_the_relay(change: TicketChange, ticket: TicketFacts) -> bool:
    """Whether the relay itself made this change: its own account changed the ticket, or (when the target
    does not say who, or the relay's account is unknown) the record says the relay resolved the ticket."""
    if change.changed_by and ticket.relay_account:
        return change.changed_by.casefold() == ticket.relay_account.casefold()
    return ticket.relay_resolved and change.state in ("resolved", "closed")


def decide_sync(change: TicketChange, ticket: TicketFacts, alert: AlertFacts | None, settings: RouteSync,
                now: datetime) -> SyncDecision:
    """Close the alert, acknowledge it, or nothing; with the reason (for the log, the trail, the metric)."""
    nothing = SyncAction.NOTHING
    if ticket.ticket_id != change.ticket.id:
        return SyncDecision(nothing, "not the alert's current ticket (a later incident carries its key)")
    if change.state == "open":
        return SyncDecision(nothing, "the ticket is open")
    if by_the_relay(change, ticket):
        return SyncDecision(nothing, "the relay's own change")
    closing = change.state in ("resolved", "closed")
    who = change.changed_by or "a person"
    record = closing and not ticket.person_closed
    if closing and not settings.close_alert:
        return SyncDecision(nothing, f"{who} {change.state} the ticket; the route's sync.close_alert is off", record)
    if not closing and not settings.acknowledge_on_progress:
        return SyncDecision(nothing, f"{who} took the ticket; the route's sync.acknowledge_on_progress is off")
    if change.changed_at > now + MAX_CLOCK_SKEW:
        return SyncDecision(nothing, f"the ticket's change time {change.changed_at.isoformat()} lies ahead of the "
                                     "relay's clock", record)
    if alert is None:
        return SyncDecision(nothing, ALERT_GONE, record)
    if alert.last_modified > change.changed_at:
        return SyncDecision(nothing, f"the alert changed in Azure ({alert.last_modified.isoformat()}) after the "
                                     f"ticket did ({change.changed_at.isoformat()})", record)
    if alert.alert_state == "Closed":
        return SyncDecision(nothing, "the alert is already Closed", record)
    if closing:
        return SyncDecision(SyncAction.CLOSE, f"{who} {change.state} the ticket", record)
    if alert.alert_state != "New":
        return SyncDecision(nothing, f"acknowledge only from New (the alert is {alert.alert_state})")
    return SyncDecision(SyncAction.ACKNOWLEDGE, f"{who} took the ticket (in progress)")
