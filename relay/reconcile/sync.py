"""Two-way sync's shell: a ticket a person resolved (or took) in the target moves its Azure alert.

`TicketSync.apply(target, change)` takes one `TicketChange` (from the poll below, or from the inbound
`POST /itsm-events/{target}`), finds the alert through the store (correlation key -> ticket record -> the
alert's full ARM id, kept in the record's `alert_ids`), reads the alert by id from Alerts Management, lets
`sync_decision.decide_sync` choose, and carries it out with change-state (a comment names the ticket).
A person's resolve or close is recorded in the ticket record (`closed_by`), so later events of the episode
leave the ticket alone (relay.delivery.lifecycle).

`TicketSync.poll(target, lease)` is one poll of a syncing target: `changed_since` from the cursor kept with
the job's lease in the store (`sync-<target>`, both backends, version-checked), paging on from the last
change's time with CHANGES_LIMIT, dropping what it saw at the cursor's instant. The first poll only sets the
cursor to now: no historical sync. 429 and 5xx from Azure are retried by the SDK client's retry policy (as
reconciliation's); a poll that still fails keeps its cursor where it got to and tries again at the next beat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from relay.alerts import SchemaError, parse_alert_json
from relay.delivery.lifecycle import TicketState, closed_at, closed_by_person
from relay.delivery.routing import RelayConfig, RouteSync
from relay.reconcile.job import AlertsClient, SubscriptionClients
from relay.reconcile.sync_decision import (
    ALERT_GONE,
    AlertFacts,
    SyncAction,
    SyncDecision,
    TicketFacts,
    decide_sync,
)
from relay.store.base import Store, TicketRecord, TrailEntry, VersionConflict
from relay.store.leases import JobLease
from relay.targets import CHANGES_LIMIT, TicketChange

log = logging.getLogger("relay.sync")

JOB_PREFIX = "sync-"  # the lease of target T is "sync-T" (relay/store/leases.py)
MAX_PAGES = 20  # changed_since calls per target and poll: 2,000 changes; the rest waits for the next poll
RECORD_WRITE_TRIES = 5  # a ticket record the worker rewrote meanwhile is read again and decided again
# Key prefixes of tickets that stand for more than one alert, and why they are not synced.
SHARED_KEYS = {
    "ci-": "an incident per configuration item gathers several alerts",
    "grp-": "a storm group's parent ticket stands for several alerts",
    "sh-": "a Service Health incident is not an alert two-way sync can close",
}
ACTIONS = ("close", "acknowledge", "nothing", "skipped", "failed")
_NEVER: dict[str, Any] = {"last_success": None, "last_error": None, "last_poll": None, "polls": 0}
NEW_STATE = {SyncAction.CLOSE: "Closed", SyncAction.ACKNOWLEDGE: "Acknowledged"}
SYNC_OUTCOME = "sync"  # the outcome of the trail attempt a sync decision adds to the alert's latest event


def job_name(target: str) -> str:
    return f"{JOB_PREFIX}{target}"


def store_key(correlation_key: str) -> str:
    """The ticket record's key of a correlation key: without the `.N` of the N-th incident of one key."""
    head, dot, tail = correlation_key.rpartition(".")
    return head if dot and tail.isdigit() and not tail.startswith("0") and int(tail) >= 2 else correlation_key


def alert_parts(alert_id: str) -> tuple[str, str] | None:
    """(subscription, alert GUID) of an Alerts Management ARM id, None for any other id."""
    parts = alert_id.strip("/").split("/")
    if len(parts) >= 6 and parts[0].lower() == "subscriptions" and parts[-2].lower() == "alerts":
        return parts[1], parts[-1]
    return None


def seen_id(change: TicketChange) -> str:
    """What the cursor remembers of a change at its instant: the ticket and the state it went to."""
    return f"{change.ticket.id}:{change.state}"


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class PollResult:
    changes: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    cursor: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"changes": self.changes, "actions": dict(self.actions), "cursor": self.cursor}


class TicketSync:
    def __init__(self, store: Store, config: RelayConfig, targets: Mapping[str, Any],
                 client_for: Callable[[str], AlertsClient], *, registry: CollectorRegistry | None = None,
                 wall_clock: Callable[[], float] = time.time, max_pages: int = MAX_PAGES) -> None:
        self.store = store
        self.config = config
        self.targets = targets
        self._client = SubscriptionClients(client_for)
        self.wall_clock = wall_clock
        self.max_pages = max_pages
        self.actions = Counter("relay_sync_actions_total",
                               "Two-way sync's decisions on tickets that changed, per target and action",
                               ["target", "action"], registry=registry)
        for name in config.syncing_targets():
            for action in ACTIONS:
                self.actions.labels(name, action)
        self.last: dict[str, dict[str, Any]] = {}

    def status(self) -> dict[str, Any]:
        """For /readyz details: per syncing target, the last poll's success (UTC), failure and result."""
        return {name: dict(self.last.get(name) or _NEVER) for name in self.config.syncing_targets()}

    async def close(self) -> None:
        await self._client.close()

    # -- one change ------------------------------------------------------------------------------

    async def apply(self, target: str, change: TicketChange) -> str:
        """Decide and carry out one ticket change; answers what was done and why (`<action>: <reason>`).
        Raises when Azure or the store fail in a way worth trying again (after the client's retries).
        Every decision on a ticket of one alert but "the ticket is open" goes to that alert's trail too
        (`relay alerts show`), as an attempt "sync" of its latest stored event."""
        action, reason, alert_id = await self._apply(target, change)
        self.actions.labels(target, action).inc()
        if alert_id is not None and change.state != "open":
            await self._trail(target, alert_id, change, action, reason)
        log_at = log.info if action in ("close", "acknowledge") or change.state != "open" else log.debug
        log_at("sync %s ticket %s (%s, %s by %s): %s: %s", target, change.ticket.number or change.ticket.id,
               change.correlation_key, change.state, change.changed_by or "?", action, reason)
        return f"{action}: {reason}"

    async def _apply(self, target: str, change: TicketChange) -> tuple[str, str, str | None]:
        """(action, reason, the alert's id when the ticket is one alert's)."""
        if target not in self.targets:
            return "skipped", f"no target named {target!r}", None
        key = store_key(change.correlation_key)
        for prefix, why in SHARED_KEYS.items():
            if key.startswith(prefix):
                return "skipped", why, None
        record = await self.store.get_ticket(target, key)
        if record is None:
            return "skipped", "the store holds no record of this ticket (not the relay's, or expired)", None
        state = TicketState.from_data(record.data)
        if len(state.alert_ids) != 1:
            return "skipped", ("the ticket record names no alert id (written before alert ids were kept)"
                               if not state.alert_ids else "the ticket stands for several alerts"), None
        alert_id = next(iter(state.alert_ids.values()))
        parts = alert_parts(alert_id)
        if parts is None:
            return "skipped", f"{alert_id[:120]} is not an Alerts Management alert id", None
        settings = await self._route_sync(target, alert_id)
        if not settings.enabled:
            return "nothing", "two-way sync is off on the alert's route", None
        action, reason = await self._decide_and_act(target, key, state, parts, settings, change)
        return action, reason, alert_id

    async def _decide_and_act(self, target: str, key: str, state: TicketState, parts: tuple[str, str],
                              settings: RouteSync, change: TicketChange) -> tuple[str, str]:
        facts = TicketFacts(ticket_id=state.ticket_id, relay_resolved=not state.open and not state.closed_by,
                            person_closed=bool(state.closed_by), relay_account=getattr(self.targets[target],
                                                                                         "account", None))
        now = datetime.fromtimestamp(self.wall_clock(), UTC)
        decision = decide_sync(change, facts, None, settings, now)
        if decision.reason == ALERT_GONE:  # the rules before need the alert's state: read it
            decision = decide_sync(change, facts, await self._read_alert(*parts), settings, now)
        if decision.record_person_close:
            await self._record_person_close(target, key, change)
        if decision.action is SyncAction.NOTHING:
            return "nothing", decision.reason
        try:
            await self._change_state(parts, decision, target, change)
        except Exception as exc:
            if not _permanent(exc):
                raise
            return "failed", f"Azure refused change-state ({_status(exc)}): {str(exc)[:200]}"
        return str(decision.action), decision.reason

    async def _trail(self, target: str, alert_id: str, change: TicketChange, action: str, reason: str) -> None:
        trails = await self.store.alert_trail(alert_id)
        if not trails:
            return
        entry = TrailEntry(at=self.wall_clock(), kind="decision", target=target, what=f"sync {action}",
                           detail=f"ticket {change.state} by {change.changed_by or '?'} at {iso(change.changed_at)}: "
                                  f"{reason}", ticket=change.ticket.number or change.ticket.id)
        await self.store.add_trail(trails[-1].alert_id, trails[-1].key, SYNC_OUTCOME, (entry,))

    async def _route_sync(self, target: str, alert_id: str) -> RouteSync:
        """The `sync:` of the route that sent this alert to `target`: the one every route to the target
        agrees on, else the route the alert's latest stored event matches (off when none is stored)."""
        kinds = {r.sync for r in self.config.routes if r.target == target}
        if len(kinds) == 1:
            return next(iter(kinds))
        for trail in reversed(await self.store.alert_trail(alert_id)):
            event = await self.store.event(trail.alert_id, trail.key)
            if event is None:
                continue
            try:
                alert = parse_alert_json(event.body)
            except (ValueError, SchemaError):
                continue
            return next((r.sync for r in self.config.routes_for(alert) if r.target == target), RouteSync())
        return RouteSync()

    async def _read_alert(self, subscription: str, guid: str) -> AlertFacts | None:
        try:
            item = await self._client(subscription).alerts.get_by_id(alert_id=guid)
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise
        e = item.properties.essentials
        modified = e.last_modified_date_time or e.start_date_time
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        return AlertFacts(alert_state=str(e.alert_state), monitor_condition=str(e.monitor_condition),
                          last_modified=modified)

    async def _change_state(self, parts: tuple[str, str], decision: SyncDecision, target: str,
                            change: TicketChange) -> None:
        from azure.mgmt.alertsmanagement.models import Comments

        subscription, guid = parts
        ticket = change.ticket.number or change.ticket.id
        comment = (f"Set by secure-export's relay (two-way sync): {target} ticket {ticket} was {change.state} by "
                   f"{change.changed_by or 'a person'} at {iso(change.changed_at)}.")
        await self._client(subscription).alerts.change_state(alert_id=guid, new_state=NEW_STATE[decision.action],
                                                             comment=Comments(comments=comment))

    async def _record_person_close(self, target: str, key: str, change: TicketChange) -> None:
        """Mark the ticket record closed by a person (version-checked; a record rewritten meanwhile is read
        and marked again)."""
        for _ in range(RECORD_WRITE_TRIES):
            record = await self.store.get_ticket(target, key)
            if record is None:
                return
            state = TicketState.from_data(record.data)
            closed = closed_by_person(state, ticket_id=change.ticket.id, by=change.changed_by,
                                      at=iso(change.changed_at))
            if closed is None:
                return
            data = {**record.data, **closed.to_data()}
            try:
                await self.store.put_ticket(TicketRecord(target, key, data, record.version,
                                                         closed_at(data, record.closed_at, self.wall_clock())))
                return
            except VersionConflict:
                continue
        log.warning("sync %s: could not record that a person closed %s (the record kept changing)", target, key)

    # -- the poll ---------------------------------------------------------------------------------

    async def poll(self, target: str, lease: JobLease) -> PollResult:
        """One poll of `target` from the cursor kept with `lease` (which this replica holds)."""
        result = PollResult()
        entry = self.last.setdefault(target, dict(_NEVER))
        try:
            await self._poll(target, lease, result)
        except Exception as exc:
            entry["last_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            raise
        entry.update(last_success=iso(datetime.fromtimestamp(self.wall_clock(), UTC)), last_error=None,
                     last_poll=result.as_dict(), polls=int(entry["polls"]) + 1)
        return result

    async def _poll(self, target: str, lease: JobLease, result: PollResult) -> None:
        cursor = await lease.get("cursor")
        if cursor is None:  # the first poll: from now on, never the tickets' history
            now = iso(datetime.fromtimestamp(self.wall_clock(), UTC))
            await lease.put(cursor=now, seen=[])
            result.cursor = now
            log.info("sync %s: first poll, following ticket changes from %s on", target, now)
            return
        since = from_iso(str(cursor))
        seen = set(await lease.get("seen", []) or [])
        source = self.targets[target]
        try:
            for _ in range(self.max_pages):
                changes = await source.changed_since(since, CHANGES_LIMIT)
                result.changes += len(changes)
                fresh = [c for c in changes if not (c.changed_at <= since and seen_id(c) in seen)]
                for change in fresh:
                    outcome = await self.apply(target, change)
                    action = outcome.split(":", 1)[0]
                    result.actions[action] = result.actions.get(action, 0) + 1
                    if change.changed_at > since:
                        since, seen = change.changed_at, set()
                    seen.add(seen_id(change))
                if len(changes) < CHANGES_LIMIT:
                    break
                if not fresh:  # a whole page of changes at one instant, all seen: step past it
                    log.warning("sync %s: more than %d tickets changed at %s; moving on to the next second",
                                target, CHANGES_LIMIT, iso(since))
                    since, seen = since + timedelta(seconds=1), set()
        finally:
            result.cursor = iso(since)
            if not await lease.put(cursor=iso(since), seen=sorted(seen)):
                log.warning("sync %s: lost the lease before keeping the cursor %s", target, iso(since))


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _permanent(exc: BaseException) -> bool:
    """An Azure answer no retry can fix (403 without Monitoring Contributor, 400, 404): counted as failed
    and passed over, so that one alert does not hold the poll back. 408, 429 and 5xx are raised."""
    status = _status(exc)
    return status is not None and 400 <= status < 500 and status not in (408, 409, 429)
