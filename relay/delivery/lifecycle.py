"""The ticket lifecycle: one pure function from (event, what we know of its ticket, route policy) to an action.

No I/O, no clock, no config lookups: `decide` reads like the lifecycle table in docs/lifecycle.md, and
the worker (the imperative shell) carries out what it returns. Around it sit the pure helpers that turn
an alert into the facts `decide` needs: which ticket an event concerns (`ticket_keys`) and when.

The state of one ticket key keeps a mark per alert that joined it: the firing episode (its
firedDateTime) and whether that episode resolved. Episodes make the decision order-proof: a late
Fired of an episode that already resolved, or any event of an older episode, is recorded and makes
no call, so nothing moves a ticket backwards; a ticket resolves once every alert on it has resolved.

Two more pure pieces keep a crash or a lost store from doubling anything: the step markers and
`step_done` (a retried note, resolve or reopen whose earlier attempt may have landed), and
`recovered_state` / `decide_recovered` (an event whose key the store holds no record of, decided from
the tickets the target holds under the key).

The key is the alert GUID (targets hold it), so the state also keeps each alert's full id: an event
whose GUID matches but whose full id differs (another subscription reusing the GUID) is refused
delivery and recorded in the state's `refused` list.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from relay.alerts import Alert, ServiceHealthContext, bind_configuration_items, configuration_items, subscription_of
from relay.delivery.flapping import Damping, flapping_note, is_flapping, recent_flips, shift
from relay.schema import DELIVERY, IncidentPer, OnRefire, OnRepeat, OnResolve
from relay.targets import FoundTicket, TicketView

MAX_MARKS = 50  # alerts remembered per ticket key; the oldest resolved ones are forgotten first
MAX_REFUSED = 20  # refused alert ids remembered per ticket key (the latest)
# Service Health stages that only inform about an incident already handled (the post-incident review):
# they add a note to the ticket and never open one.
UPDATE_STAGES = frozenset({"rca"})


class Kind(StrEnum):
    FIRED = "fired"
    RESOLVED = "resolved"
    UPDATE = "update"  # informational follow-up: notes an existing ticket, never opens one


class Action(StrEnum):
    CREATE = "create"  # open the first incident for this key
    NEW = "new"  # open a new incident: the previous one was resolved and the alert fired again
    NOTE = "note"  # add a work note to the open (or, for updates, resolved) incident
    RESOLVE = "resolve"
    REOPEN = "reopen"
    NOTHING = "nothing"  # already applied, or a repeat the route does not want noted
    RECORD = "record"  # remember the event; no call (it is out of order, or there is no ticket to move)
    ADOPT = "adopt"  # remember an open ticket the target holds and the store had no record of; no call
    REFUSE = "refuse"  # the event's full alert id is not the one this ticket belongs to: no call, recorded

    @property
    def calls_target(self) -> bool:
        return self not in (Action.NOTHING, Action.RECORD, Action.ADOPT, Action.REFUSE)

    @property
    def opens_incident(self) -> bool:
        return self in (Action.CREATE, Action.NEW)




@dataclass(frozen=True, slots=True)
class Policy:
    """A route's lifecycle choices (see docs/configuration.md)."""

    on_repeat: OnRepeat = OnRepeat.NOTE  # fired again while the incident is open
    on_refire: OnRefire = OnRefire.NEW  # fired again after the incident was resolved
    on_resolve: OnResolve = OnResolve.RESOLVE  # the alert resolved


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What `decide` needs of one event. Times are `instant()` strings, so they compare as text."""

    alert: str  # the alert (or Service Health thread) this event belongs to
    kind: Kind
    fired_at: str  # identifies the firing episode
    occurred_at: str  # when this state happened
    alert_id: str = ""  # the full alertId, lower-case ("" when the key is not the GUID alone: not checked)


@dataclass(frozen=True, slots=True)
class Mark:
    """The latest firing episode seen of one alert on a ticket key."""

    fired_at: str
    resolved: bool
    at: str  # the time of the latest event applied for this alert


@dataclass(frozen=True, slots=True)
class TicketState:
    """What we know of one ticket key in one target (stored as `TicketRecord.data`)."""

    ticket_id: str | None = None
    ticket_number: str | None = None
    open: bool = False
    generation: int = 0  # incidents opened under this key so far
    last_at: str = ""  # time of the latest event that changed the ticket
    alerts: Mapping[str, Mark] = field(default_factory=dict)
    alert_ids: Mapping[str, str] = field(default_factory=dict)  # the full alertId of each alert in `alerts`
    refused: tuple[str, ...] = ()  # "<time> <full alert id>" of events refused for a different full id
    # Issue 15, per alert: flap damping (`flips`, `flapping`, a `held` resolve) and a create `deferred` by
    # a maintenance window; plain JSON, read by `decide_with_noise` and `decide_due` only.
    noise: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Issue 16 (two-way sync): a person resolved or closed the ticket in the target: {"by", "at", "ticket"}.
    # The ticket is then not open; later events of the episode make no call (a Resolved is recorded), a
    # re-fire follows on_refire, and opening an incident again clears it.
    closed_by: Mapping[str, str] | None = None

    def with_ticket(self, ticket_id: str, number: str | None) -> TicketState:
        return replace(self, ticket_id=ticket_id, ticket_number=number)

    def to_data(self) -> dict[str, Any]:
        return {
            "ticket_id": self.ticket_id,
            "ticket_number": self.ticket_number,
            "open": self.open,
            "generation": self.generation,
            "last_at": self.last_at,
            "alerts": {k: [m.fired_at, m.resolved, m.at] for k, m in self.alerts.items()},
            **({"alert_ids": dict(self.alert_ids)} if self.alert_ids else {}),
            **({"refused": list(self.refused)} if self.refused else {}),
            **({"noise": {k: dict(v) for k, v in self.noise.items()}} if self.noise else {}),
            **({"closed_by": dict(self.closed_by)} if self.closed_by else {}),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> TicketState:
        return cls(
            ticket_id=data.get("ticket_id"),
            ticket_number=data.get("ticket_number"),
            open=bool(data.get("open", False)),
            generation=int(data.get("generation", 0)),
            last_at=str(data.get("last_at", "")),
            alerts={k: Mark(str(v[0]), bool(v[1]), str(v[2])) for k, v in (data.get("alerts") or {}).items()},
            alert_ids={str(k): str(v) for k, v in (data.get("alert_ids") or {}).items()},
            refused=tuple(str(r) for r in data.get("refused") or ()),
            noise={str(k): dict(v) for k, v in (data.get("noise") or {}).items()},
            closed_by={str(k): str(v) for k, v in data["closed_by"].items()} if data.get("closed_by") else None,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str  # why, in a few words, for logs and the dry-run output
    state: TicketState  # what to store once the call succeeded (CREATE/NEW: the shell adds the ticket id)
    # Issue 15: instants at which this alert's key must be decided again (`decide_due`): a window's end, a
    # held resolve's expiry. The shell registers them with the scheduler before it records the state.
    timers: tuple[str, ...] = ()
    note: str | None = None  # a NOTE's own text (the flapping note), instead of the event's


def decide(event: EventFacts, state: TicketState | None, policy: Policy) -> Decision:
    """The lifecycle table. Every branch returns; none does I/O."""
    st = state or TicketState()
    known = st.alert_ids.get(event.alert)
    if event.alert_id and known is not None and known != event.alert_id:
        refused = (*st.refused, f"{event.occurred_at} {event.alert_id}")[-MAX_REFUSED:]
        return Decision(Action.REFUSE, "full alert id differs from the ticket's (same GUID, another source)",
                        replace(st, refused=refused))
    decision = _decide(event, st, policy)
    if not event.alert_id:
        return decision
    # Remember the full id of every alert the state keeps a mark for (and only those).
    kept = decision.state.alerts
    ids = {k: v for k, v in {**decision.state.alert_ids, event.alert: event.alert_id}.items() if k in kept}
    return replace(decision, state=replace(decision.state, alert_ids=ids))


def _decide(event: EventFacts, st: TicketState, policy: Policy) -> Decision:
    mark = st.alerts.get(event.alert)

    if mark is not None and episode(event.fired_at) < episode(mark.fired_at):
        return Decision(Action.RECORD, "event of an earlier firing episode", st)
    if mark is not None and episode(event.fired_at) == episode(mark.fired_at):
        if event.kind is Kind.FIRED and mark.resolved:
            return Decision(Action.RECORD, "fired after its own resolve arrived (out of order)", st)
        if event.kind is not Kind.RESOLVED or mark.resolved:
            return Decision(Action.NOTHING, "already applied", st)

    if event.kind is Kind.FIRED:
        return _fired(event, st, policy)
    if event.kind is Kind.RESOLVED:
        return _resolved(event, st, policy)
    return _update(event, st, mark, policy)


def _fired(event: EventFacts, st: TicketState, policy: Policy) -> Decision:
    marked = _with_mark(st, event.alert, Mark(event.fired_at, False, event.occurred_at))
    if st.ticket_id is None:
        return Decision(Action.CREATE, "fired, no ticket yet", _opened(marked, event, new_ticket=True))
    if event.occurred_at < st.last_at:
        return Decision(Action.RECORD, "older than the ticket's last state", marked)
    if st.open:
        if policy.on_repeat == OnRepeat.NOTE:
            return Decision(Action.NOTE, "fired again while open", _touched(marked, event))
        return Decision(Action.NOTHING, "fired again while open (on_repeat: nothing)", marked)
    if policy.on_refire == OnRefire.NEW:
        return Decision(Action.NEW, "fired after resolve (on_refire: new)", _opened(marked, event, new_ticket=True))
    if policy.on_refire == OnRefire.REOPEN:
        return Decision(Action.REOPEN, "fired after resolve (on_refire: reopen)",
                        _opened(marked, event, new_ticket=False))
    return Decision(Action.RECORD, "fired after resolve (on_refire: ignore)", marked)


def _resolved(event: EventFacts, st: TicketState, policy: Policy) -> Decision:
    marked = _with_mark(st, event.alert, Mark(event.fired_at, True, event.occurred_at))
    if st.ticket_id is None:
        return Decision(Action.RECORD, "resolved, no ticket (resolved before fired, or unknown alert)", marked)
    if not st.open:
        if st.closed_by:
            return Decision(Action.RECORD, f"resolved, ticket already closed by {st.closed_by.get('by') or 'a person'} "
                                           "in the target (two-way sync): not touched again", marked)
        return Decision(Action.RECORD, "resolved, ticket already resolved", marked)
    if any(not m.resolved for m in marked.alerts.values()):
        return Decision(Action.RECORD, "resolved, other alerts on this ticket still firing", marked)
    # No staleness check here: every alert on the ticket has resolved, so resolving only moves forward.
    if policy.on_resolve == OnResolve.RESOLVE:
        return Decision(Action.RESOLVE, "resolved", replace(_touched(marked, event), open=False))
    if policy.on_resolve == OnResolve.NOTE:
        return Decision(Action.NOTE, "resolved (on_resolve: note)", _touched(marked, event))
    return Decision(Action.RECORD, "resolved (on_resolve: nothing)", marked)


def _update(event: EventFacts, st: TicketState, mark: Mark | None, policy: Policy) -> Decision:
    marked = _with_mark(st, event.alert, Mark(event.fired_at, mark.resolved if mark else True, event.occurred_at))
    if st.ticket_id is None:
        return Decision(Action.RECORD, "update, no ticket", marked)
    if policy.on_repeat == OnRepeat.NOTHING:
        return Decision(Action.NOTHING, "update (on_repeat: nothing)", marked)
    return Decision(Action.NOTE, "update", _touched(marked, event))


def _opened(st: TicketState, event: EventFacts, new_ticket: bool) -> TicketState:
    st = replace(_touched(st, event), closed_by=None)
    if new_ticket:
        return replace(st, ticket_id=None, ticket_number=None, open=True, generation=st.generation + 1)
    return replace(st, open=True)


def _touched(st: TicketState, event: EventFacts) -> TicketState:
    return replace(st, last_at=max(st.last_at, event.occurred_at))


def _with_mark(st: TicketState, alert: str, mark: Mark) -> TicketState:
    alerts = {**st.alerts, alert: mark}
    if len(alerts) > MAX_MARKS:
        # Forget resolved alerts first, oldest first; a firing alert is forgotten only if all are firing.
        order = sorted(alerts, key=lambda k: (not alerts[k].resolved, alerts[k].at))
        for k in order[: len(alerts) - MAX_MARKS]:
            if k != alert:
                del alerts[k]
    return replace(st, alerts=alerts)


def closed_by_person(state: TicketState, *, ticket_id: str, by: str | None, at: str) -> TicketState | None:
    """The state once a person resolved or closed ticket `ticket_id` in the target (two-way sync saw it), or
    None when there is nothing to record: another ticket is current under the key, or the ticket is already
    recorded closed. Later events of the episode then leave the ticket alone (`decide`: not open)."""
    if state.ticket_id != ticket_id or (not state.open and state.closed_by):
        return None
    return replace(state, open=False, closed_by={"by": by or "", "at": at, "ticket": ticket_id})


# -- from an alert to facts -----------------------------------------------------------------------

_INSTANT = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?$")


def instant(text: str) -> str:
    """An ISO 8601 time as fixed-width UTC text with nanoseconds, so that times compare as strings.

    Azure writes 3 or 7 fractional digits ("...24.3713213Z"); as plain text "24.3Z" > "24.31Z".
    """
    m = _INSTANT.match(text.strip())
    if not m:
        raise ValueError(f"not an ISO 8601 time: {text[:40]!r}")
    whole, frac, tz = m.groups()
    digits = (frac or "").ljust(9, "0")[:9]
    if tz in (None, "Z") and whole[0] != "0":
        # Already UTC (Azure always writes Z): the text is its own UTC form once it is known to be a real
        # time; converting (astimezone, strftime) cost a delivery more than deciding did.
        datetime.fromisoformat(whole)
        return f"{whole}.{digits}Z"
    offset = "+00:00" if tz in (None, "Z") else (tz if ":" in tz else f"{tz[:3]}:{tz[3:]}")
    dt = datetime.fromisoformat(whole + offset).astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + "." + digits + "Z"


def episode(fired_at: str) -> str:
    """The firing episode an `instant` firedDateTime names: its whole second (as the idempotency key
    holds it). The webhook writes 7 fractional digits, the Alerts Management API's startDateTime
    reaches reconciliation with 6 (or none): one episode either way. Marks stored before this compare
    the same, since every mark holds an `instant`."""
    return fired_at[:19]


@dataclass(frozen=True, slots=True)
class TicketKey:
    """One ticket an event concerns: its store key and the CIs its incident carries."""

    key: str
    configuration_items: tuple[str, ...]
    unbound: tuple[str, ...] = ()  # CIs over the per-alert limit: listed in the description, bound to nothing


def event_facts(alert: Alert) -> EventFacts:
    """The lifecycle facts of one alert notification."""
    ctx = alert.context
    stage = (ctx.stage or "").lower() if isinstance(ctx, ServiceHealthContext) else ""
    if alert.resolves:
        kind = Kind.RESOLVED
    elif stage in UPDATE_STAGES:
        kind = Kind.UPDATE
    else:
        kind = Kind.FIRED
    thread = _thread(alert)
    return EventFacts(
        alert=thread or alert.correlation_key.lower(),
        kind=kind,
        fired_at=instant(alert.essentials.fired_at),
        occurred_at=instant(alert.occurred_at),
        # A Service Health thread's notifications are alerts of their own ids: their key is not a GUID.
        alert_id="" if thread else alert.essentials.alert_id.rstrip("/").lower(),
    )


def ticket_keys(alert: Alert, incident_per: IncidentPer,
                max_configuration_items: int = int(DELIVERY["max_configuration_items"].default)) -> list[TicketKey]:
    """The ticket keys an alert maps to: one per alert (default) or one per (alert rule, CI).

    Per alert: the alert GUID, or `sh-<trackingId>-<subscription>` for Service Health, whose every
    notification (Active, updates, Resolved) is a new alert of one incident. Per CI (ITSMC parity):
    `ci-<hash of rule and CI>`, so alerts of one rule on one resource share an incident. At most
    `max_configuration_items` CIs are bound; the rest ride along as `unbound`.
    """
    cis, rest = bind_configuration_items(configuration_items(alert), max_configuration_items)
    if incident_per == IncidentPer.CONFIGURATION_ITEM and cis:
        thread = _thread(alert) or (alert.essentials.alert_rule_id or alert.essentials.alert_rule or "").lower()
        if thread:
            keys = {}
            for ci in cis:
                digest = hashlib.sha256(f"{thread}|{ci.lower()}".encode()).hexdigest()[:32]
                keys.setdefault(f"ci-{digest}", TicketKey(f"ci-{digest}", (ci,), rest))
            return list(keys.values())
    return [TicketKey(_thread(alert) or _safe(alert.correlation_key.lower()), cis, rest)]


def correlation_key(key: str, generation: int) -> str:
    """What the target stores and searches: the key, with `.N` for the N-th incident of one key."""
    return key if generation <= 1 else f"{key}.{generation}"


_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def _safe(text: str, limit: int = 40) -> str:
    """Text made safe for a correlation field: kept when short and plain, else a hash."""
    if text and len(text) <= limit and not _SAFE.search(text):
        return text
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[: min(32, limit - 2)]


def _thread(alert: Alert) -> str | None:
    """Service Health notifications of one incident share its tracking id (per subscription)."""
    ctx = alert.context
    if not isinstance(ctx, ServiceHealthContext) or not ctx.tracking_id:
        return None
    sub = subscription_of(alert) or ""
    return "sh-" + _safe(ctx.tracking_id.lower(), 20) + ("-" + _safe(sub.lower()) if sub else "")


def generation_of(key: str, correlation_key: str) -> int | None:
    """The inverse of `correlation_key`: 1 for `key`, N for `key.N` (N >= 2), None for any other key (a
    search by prefix also finds `key2`, `key.x`, ...). Case-insensitive, as the targets compare keys."""
    k, c = key.lower(), correlation_key.lower()
    if c == k:
        return 1
    suffix = c[len(k) + 1:] if c.startswith(k + ".") else ""
    if suffix.isdigit() and suffix.isascii() and not suffix.startswith("0") and int(suffix) >= 2:
        return int(suffix)
    return None


# -- idempotent steps -----------------------------------------------------------------------------

STEP_MARKER_PREFIX = "azure-relay:"
STEP_MARKER_DIGITS = 16  # of the event's idempotency key (a SHA-256 hex digest)


def create_intent(correlation_key: str, *, since: float, event_key: str, owner: str) -> dict[str, Any]:
    """What the ticket record holds while a create is being sent (`data["pending"]`): when, for which key,
    by which delivery (the event) and which worker process (`owner`)."""
    return {"since": since, "correlation_key": correlation_key, "event": event_key, "owner": owner}


def dead_writers_intent(pending: Mapping[str, Any], *, event_key: str, owner: str) -> bool:
    """Whether an intent to create was written for this very event by another worker process. This one
    holds the event's lease now, so that writer's lease ended: it died (a crash mid-create) or lost the
    lease and stops. Whatever its create did is done or on its way; nothing live races this delivery."""
    return pending.get("event") == event_key and pending.get("owner") not in (None, owner)


def create_intent_wait(pending: Mapping[str, Any], *, now: float, event_key: str, owner: str,
                       call_timeout: float, adopt_after: float) -> float:
    """Seconds an intent to create must still be respected before its key is searched for and adopted.

    - Its writer saw the create go unanswered (`unanswered_at`): the target may still apply it, for up to
      `adopt_after` from then.
    - It was written for this very event by another worker process (`dead_writers_intent`): that writer's
      lease ended. Its create could not have waited for an answer longer than `call_timeout` after `since`;
      past that, search (a crash then costs one call timeout, not `adopt_after`). The worker searches once
      before waiting, too: a create that already landed is adopted at once.
    - Otherwise (another event of a shared key may be creating right now, or an intent from before owners
      were recorded): `adopt_after` from `since`.
    """
    since = float(pending.get("since", 0))
    if "unanswered_at" in pending:
        return float(pending["unanswered_at"]) + adopt_after - now
    if dead_writers_intent(pending, event_key=event_key, owner=owner):
        return since + min(call_timeout, adopt_after) - now
    return since + adopt_after - now


def step_marker(event_key: str) -> str:
    """The short marker every note the relay writes ends with, derived from the event's idempotency key,
    so that a retried note finds out whether its earlier attempt landed: `[azure-relay:0123456789abcdef]`."""
    if not event_key:
        raise ValueError("an event key is needed to derive a step marker")
    return f"[{STEP_MARKER_PREFIX}{event_key[:STEP_MARKER_DIGITS]}]"


def step_intent(action: Action, marker: str, since: float) -> dict[str, Any]:
    """What the ticket record holds while a note, resolve or reopen is being sent (`data["step"]`)."""
    return {"action": str(action), "marker": marker, "since": since}


def step_unsettled(data: Mapping[str, Any], action: Action, marker: str) -> bool:
    """Whether the record holds the intent of this very step: an earlier attempt sent it (or was about to)
    and its outcome is unknown (a crash, a lost answer, a failed read-back, a failed record write)."""
    step = data.get("step")
    return isinstance(step, Mapping) and step.get("action") == str(action) and step.get("marker") == marker


def step_done(action: Action, view: TicketView, marker: str) -> bool:
    """Whether the ticket, as read back, already shows the step: its status for resolve and reopen, its
    marker among the latest notes for a note."""
    if action is Action.RESOLVE:
        return view.resolved
    if action is Action.REOPEN:
        return not view.resolved
    if action is Action.NOTE:
        return any(marker in note for note in view.notes)
    raise ValueError(f"{action} is not a step on an existing ticket")


def closed_at(data: Mapping[str, Any], before: float | None, now: float) -> float | None:
    """When a record's ticket was resolved, for retention: None while the ticket is open or an intent is
    pending (a create or a step); the earlier time once it was closed already; else `now`. A record that
    never got a ticket (a Resolved that opened nothing) counts as closed from its first write."""
    if data.get("open") or "pending" in data or "step" in data:
        return None
    return before if before is not None else now


# -- a lost store: decide from what the target holds ----------------------------------------------

def recovered_state(event: EventFacts, key: str, found: Sequence[FoundTicket]) -> TicketState | None:
    """What the store would know of `key`, rebuilt from the tickets the target holds under it (its own key
    and `key.N`); None when it holds none. `generation` is the highest suffix found, so a new episode's
    incident continues after it. A Fired looks at the newest ticket; a Resolved or an update at the newest
    open one if any (that is the incident to resolve), else the newest."""
    ours = sorted(
        ((g, f) for f in found if (g := generation_of(key, f.correlation_key)) is not None),
        key=lambda pair: pair[0],
        reverse=True,
    )
    if not ours:
        return None
    newest = ours[0][1]
    if event.kind is not Kind.FIRED:
        newest = next((f for _, f in ours if not f.ticket.resolved), newest)
    return TicketState(
        ticket_id=newest.ticket.id,
        ticket_number=newest.ticket.number,
        open=not newest.ticket.resolved,
        generation=ours[0][0],
    )


def twin_keys(key: str, found: Sequence[FoundTicket]) -> list[str]:
    """Correlation keys (of `key`) that more than one open ticket carries: a person must settle those,
    as `find` refuses them; recovery never guesses between them."""
    seen: dict[int, int] = {}
    for f in found:
        g = generation_of(key, f.correlation_key)
        if g is not None and not f.ticket.resolved:
            seen[g] = seen.get(g, 0) + 1
    return [correlation_key(key, g) for g, n in sorted(seen.items()) if n > 1]


def decide_recovered(event: EventFacts, state: TicketState | None, policy: Policy) -> Decision:
    """`decide` for an event whose key the store holds no record of, given `recovered_state`.

    A Fired that finds an open ticket adopts it (no call: it is this alert's incident, created before the
    store was lost); a Fired that finds only resolved ones follows `on_refire`; a Resolved resolves the
    open one; a Resolved that finds nothing records only (an alert that never fired opens nothing).
    """
    if state is not None and event.kind is Kind.FIRED and state.open:
        marked = _with_mark(state, event.alert, Mark(event.fired_at, False, event.occurred_at))
        return Decision(Action.ADOPT, "fired, no record, the target holds an open ticket: adopted",
                        _touched(marked, event))
    return decide(event, state, policy)


def orphaned(event: EventFacts, decision: Decision) -> bool:
    """An event of a key the store held no record of, other than the ordinary first Fired (which creates):
    a Resolved or update with nothing on record, or a Fired the target already holds tickets for."""
    return event.kind is not Kind.FIRED or not decision.action.opens_incident or decision.state.generation > 1


# -- noise control (issue 15): maintenance windows and flap damping ------------------------------

@dataclass(frozen=True, slots=True)
class InWindow:
    """The maintenance window an event falls in (`relay.delivery.maintenance.active_window`): its name,
    the instant it ends, and its mode ("record": no call at all but a resolve of a ticket older than the
    window; "note": notes on existing tickets go on, nothing is opened)."""

    name: str
    until: str
    mode: str = "record"


def decide_with_noise(event: EventFacts, state: TicketState | None, policy: Policy, *,
                      window: InWindow | None = None, damping: Damping | None = None,
                      recovered: bool = False) -> Decision:
    """`decide` (or `decide_recovered`), then flap damping, then the maintenance window the event falls in.

    - Flapping (more than `transitions` state changes in `window_seconds`; the period lasts until a held
      resolve is delivered): a resolve that would close the ticket is *held* (the ticket stays open, a timer
      at its end); a re-fire cancels it; repeats are not noted; entering the period notes "flapping" once.
    - Inside a window: whatever would open an incident (create, new, reopen) is recorded instead and
      *deferred* to the window's end (a timer); notes go on only in mode "note"; a resolve still resolves
      (the ticket existed before the window: nothing is opened inside one).
    - After a window, an event that itself opens the incident or resolves the alert settles the deferral.
    """
    d = decide_recovered(event, state, policy) if recovered else decide(event, state, policy)
    if d.action is Action.REFUSE:
        return d
    st = state or TicketState()
    if damping is not None:
        d = _damp(event, st, d, damping)
    if window is not None:
        return _in_window(event, st, d, window)
    noise = d.state.noise.get(event.alert) or {}
    settles = d.action.opens_incident or (event.kind is Kind.RESOLVED and "deferred" in noise
                                          and event.fired_at >= str(noise["deferred"]["fired_at"]))
    if "deferred" in noise and settles:
        d = replace(d, state=_with_noise(d.state, event.alert, {k: v for k, v in noise.items() if k != "deferred"}))
    return d


def decide_due(alert: str, at: str, state: TicketState | None, policy: Policy, *,
               window: InWindow | None = None, absorbed: bool = False) -> Decision:
    """A timer of `alert` on this key fired at `at` (the scheduler's due event): a deferred create whose
    window has ended, or a held resolve whose hold has passed. Pure; a timer already settled, or not due
    yet, does nothing, so a due event delivered twice acts once. `absorbed`: the alert's storm group took
    it in at the window's end as a note on its parent (`grouping.release_deferred`): no incident of its own."""
    st = state or TicketState()
    noise = dict(st.noise.get(alert) or {})
    mark = st.alerts.get(alert)
    deferred = noise.get("deferred")
    if deferred and str(deferred["until"]) <= at:
        if window is not None and window.until > str(deferred["until"]):  # another window covers it now
            noise["deferred"] = {**deferred, "window": window.name, "until": window.until}
            return Decision(Action.RECORD, f"window ended, inside maintenance window {window.name} now",
                            _with_noise(st, alert, noise), timers=(window.until,))
        del noise["deferred"]
        base = _with_noise(st, alert, noise)
        if mark is None or mark.resolved:
            return Decision(Action.RECORD, f"maintenance window {deferred['window']} ended; the alert resolved "
                                           "inside it", base)
        if absorbed:
            return Decision(Action.RECORD, f"maintenance window {deferred['window']} ended, still firing: noted "
                                           "on its storm group's parent, no incident of its own", base)
        fired = EventFacts(alert, Kind.FIRED, mark.fired_at, max(mark.at, st.last_at))
        d = _fired(fired, base, policy)
        return replace(d, reason=f"maintenance window {deferred['window']} ended, still firing: {d.reason}")
    held = noise.get("held")
    if held and str(held["until"]) <= at:
        rest = {k: v for k, v in noise.items() if k not in ("held", "flips", "flapping")}
        base = _with_noise(st, alert, rest)
        if mark is None or not mark.resolved or mark.fired_at != held["fired_at"]:
            return Decision(Action.RECORD, "held resolve no longer applies", base)
        d = _resolved(EventFacts(alert, Kind.RESOLVED, mark.fired_at, str(held["at"])), base, policy)
        return replace(d, reason=f"held resolve delivered (no re-fire within the hold): {d.reason}")
    return Decision(Action.NOTHING, "no timer of this alert is due", st)


def noise_timers(state: TicketState, alert: str) -> tuple[str, ...]:
    """The instants the state still waits for (for `relay route` and the tests)."""
    noise = state.noise.get(alert) or {}
    return tuple(str(noise[k]["until"]) for k in ("deferred", "held") if k in noise)


def _damp(event: EventFacts, st: TicketState, d: Decision, damping: Damping) -> Decision:
    if event.kind is Kind.UPDATE:
        return d
    prev = st.alerts.get(event.alert)
    changed = prev is None or event.fired_at > prev.fired_at or (
        event.fired_at == prev.fired_at and event.kind is Kind.RESOLVED and not prev.resolved)
    if not changed:
        return d
    noise = dict(st.noise.get(event.alert) or {})
    flips = recent_flips(noise.get("flips") or (), event.occurred_at, damping)
    noise["flips"] = flips
    # A flapping period begins with an incident open (or opening now), and lasts until its held resolve is
    # delivered: within it, that one incident stays open.
    has_incident = (st.open and st.ticket_id is not None) or d.action.opens_incident or d.action is Action.REOPEN
    entering = "flapping" not in noise and is_flapping(flips, damping) and has_incident
    if not entering and "flapping" not in noise:
        return replace(d, state=_with_noise(d.state, event.alert, noise))
    if entering:
        noise["flapping"] = event.occurred_at
    note = flapping_note(flips, damping) if entering else None
    if event.kind is Kind.RESOLVED:
        if d.action is not Action.RESOLVE:
            return replace(d, state=_with_noise(d.state, event.alert, noise))
        until = shift(event.occurred_at, damping.hold_seconds)
        noise["held"] = {"at": event.occurred_at, "fired_at": event.fired_at, "until": until}
        held = _with_noise(replace(d.state, open=True), event.alert, noise)
        return Decision(Action.NOTE if note else Action.RECORD,
                        f"flapping: resolve held until {until}", held, timers=(until,), note=note)
    cancelled = "held" in noise
    noise.pop("held", None)
    state = _with_noise(d.state, event.alert, noise)
    if d.action.opens_incident or d.action is Action.REOPEN:  # the ticket was resolved: this one starts the period
        return replace(d, state=state)
    reason = "flapping: re-fire cancels the held resolve" if cancelled else "flapping: repeat not noted"
    if note and st.ticket_id is not None and st.open:
        return Decision(Action.NOTE, reason, state, note=note)
    return Decision(Action.RECORD, reason, state)


def _in_window(event: EventFacts, st: TicketState, d: Decision, window: InWindow) -> Decision:
    where = f"inside maintenance window {window.name}"
    if d.action.opens_incident or d.action is Action.REOPEN:
        # Keep what the decision learnt (the mark, the alert id, flap counts), not what opening would set.
        marked = replace(d.state, ticket_id=st.ticket_id, ticket_number=st.ticket_number, open=st.open,
                         generation=st.generation, last_at=st.last_at)
        noise = {**(marked.noise.get(event.alert) or {}),
                 "deferred": {"window": window.name, "until": window.until, "fired_at": event.fired_at}}
        return Decision(Action.RECORD, f"{where}: {d.action} deferred to its end ({window.until})",
                        _with_noise(marked, event.alert, noise), timers=(*d.timers, window.until))
    if d.action is Action.NOTE and window.mode != "note":
        return Decision(Action.RECORD, f"{where} (mode record): {d.reason}", d.state, timers=d.timers)
    return d


def _with_noise(st: TicketState, alert: str, noise: Mapping[str, Any]) -> TicketState:
    merged = {k: v for k, v in st.noise.items() if k != alert and k in st.alerts}
    if noise:
        merged[alert] = dict(noise)
    return replace(st, noise=merged)
