"""The delivery worker: claims stored events, decides with `lifecycle.decide`, calls targets, records outcomes.

Events of one alert go in order (the store leases one per alert at a time); different alerts run in
parallel, at most `max_concurrency` per target. Failures a retry can fix go back to the store with a
backoff delay (`retry_later`, so nothing sleeps holding a slot); the rest, and events past the attempt
limit, become dead letters. Before opening an incident the worker writes its intent to the ticket
record and asks the target for a ticket with the correlation key, so a crash between the ITSM call and
recording its result still yields exactly one incident. A note, resolve or reopen writes its intent too,
and a retry of it reads the ticket first; a key the store has no record of is searched for in the target
(docs/lifecycle.md: "Each step once", "A lost or replaced store").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from relay.alerts import Alert, SchemaError, parse_alert_json
from relay.delivery.flapping import from_epoch, to_epoch
from relay.delivery.lifecycle import (
    Action,
    Decision,
    EventFacts,
    InWindow,
    TicketKey,
    TicketState,
    closed_at,
    correlation_key,
    create_intent,
    create_intent_wait,
    decide_due,
    decide_with_noise,
    event_facts,
    orphaned,
    recovered_state,
    step_done,
    step_intent,
    step_marker,
    step_unsettled,
    ticket_keys,
    twin_keys,
)
from relay.delivery.maintenance import active_window
from relay.delivery.metrics import DeliveryMetrics
from relay.delivery.rate_limit import RateLimited, RateLimiter
from relay.delivery.rendering import note_text, render_incident
from relay.delivery.retry_policy import CircuitBreaker, CircuitOpen, backoff_delay
from relay.delivery.routing import RelayConfig, Route
from relay.delivery.scheduler import Scheduler
from relay.store.base import (
    PRIORITY_URGENT,
    Claim,
    Event,
    LeaseLost,
    Store,
    StoreUnavailable,
    TicketRecord,
    VersionConflict,
    idempotency_key,
)
from relay.targets import (
    Forwarder,
    Incident,
    Target,
    TargetError,
    Ticket,
    can_read,
    can_search,
    is_forwarder,
    truncate,
)

log = logging.getLogger("relay.delivery.worker")
_T = TypeVar("_T")

FORWARDED_KEYS_KEPT = 50  # event keys remembered per alert per forwarder, to skip re-forwarding on retry
RECORD_RETRIES = 8  # re-reads after a VersionConflict before giving the event back to the store
BUSY_RETRY_SECONDS = 1.0  # another worker is opening this incident: look again soon
BOUNCE_MIN_SECONDS = 1.0  # an event bounced off an open circuit comes back no sooner than this
RENEWALS_PER_LEASE = 3  # a running delivery renews its lease every third of it
RECORD_BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)  # between tries to record an outcome, then 5 s each
# Issue 15: a timer of an alert (a window's end, a held resolve's expiry) comes back as a *due event* of
# that alert: the body of the event that set it, this condition, and the due instant as its time. It
# queues behind the alert's earlier events like any other, so a held resolve never blocks them.
DUE_CONDITION = "Due"
DUE_KIND = "alert"  # the scheduler's entry kind for alert timers


class _Busy(Exception):
    """Another delivery holds this ticket: try the event again in `after` seconds (not the target's fault)."""

    def __init__(self, message: str, after: float) -> None:
        super().__init__(message)
        self.after = after


class _KeyLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]


@dataclass
class _Failure:
    """Why a delivery to one target failed, and whether (and when) trying again can help."""

    target: str
    error: str | None = None
    retryable: bool = True
    retry_after: float | None = None
    bounced: bool = False  # never sent: the target's circuit was open (not a delivery attempt)


class Worker:
    def __init__(
        self,
        store: Store,
        config: RelayConfig,
        targets: Mapping[str, Target | Forwarder],
        *,
        metrics: DeliveryMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.config = config
        self.targets = dict(targets)
        self.metrics = metrics or DeliveryMetrics()
        self.settings = config.delivery
        self.wall_clock = wall_clock
        self.rng = rng
        self._slots = {name: asyncio.Semaphore(cfg.max_concurrency) for name, cfg in config.targets.items()}
        self.rate_limits = {name: RateLimiter(name, cfg.rate_limit_per_second, max_wait=cfg.timeout_seconds,
                                              clock=clock) for name, cfg in config.targets.items()}
        self.breakers = {
            name: CircuitBreaker(
                name,
                failures=self.settings.circuit_failures,
                open_seconds=self.settings.circuit_open_seconds,
                clock=clock,
                on_change=lambda state, n=name: self.metrics.circuit_state.labels(n).set(int(state)),
            )
            for name in config.targets
        }
        for name in config.targets:
            self.metrics.circuit_state.labels(name).set(0)
        # Claims in flight: enough to keep every target's slots busy, bounded.
        self.capacity = max(1, min(512, sum(cfg.max_concurrency for cfg in config.targets.values())))
        self._key_locks = _KeyLocks()
        # This worker process, in the create intents it writes: another process finding one for an event
        # it now holds knows the writer's lease on it ended.
        self.owner = uuid.uuid4().hex
        self._inflight: set[asyncio.Task[None]] = set()
        self._clock = clock
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._shutdown_started: float | None = None
        # Time-triggered work, run by whichever replica holds the scheduler's lease (relay.delivery.scheduler).
        self.scheduler = Scheduler(store, owner=self.owner, wall_clock=wall_clock)
        self.scheduler.register(DUE_KIND, self._due_event)
        self._scheduler_task: asyncio.Task[None] | None = None

    # -- running -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="delivery-worker")
        self._scheduler_task = asyncio.create_task(self.scheduler.run(self._stopping), name="scheduler")

    def notify(self) -> None:
        """Something new may be claimable (intake accepted an event): look now rather than at the next poll."""
        self._wake.set()

    def begin_shutdown(self) -> None:
        """Stop claiming; in-flight deliveries go on (call `stop` to wait for them)."""
        if self._shutdown_started is None:
            self._shutdown_started = self._clock()
        self._stopping.set()
        self._wake.set()

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Stop claiming, let in-flight work finish within the grace period (counted from
        `begin_shutdown`), give the rest back to the store, close the targets."""
        self.begin_shutdown()
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        assert self._shutdown_started is not None
        grace = max(0.0, grace - (self._clock() - self._shutdown_started))
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        if self._scheduler_task is not None:
            await self._scheduler_task
            self._scheduler_task = None
        if self._inflight:
            _done, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            if pending:
                log.warning("shutdown: releasing %d deliveries still in flight after %gs", len(pending), grace)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        for target in self.targets.values():
            try:
                await target.close()
            except Exception:  # closing must not stop the others from closing
                log.exception("closing target %s", target.name)

    async def _run(self) -> None:
        lease = self.settings.lease_seconds
        while not self._stopping.is_set():
            free = self.capacity - len(self._inflight)
            if free <= 0:
                await self._wait(self.settings.poll_seconds)
                continue
            try:
                claims = await self.store.claim(free, lease)
            except StoreUnavailable as exc:
                log.warning("store unavailable while claiming: %s", exc)
                await self._wait(self.settings.poll_seconds)
                continue
            except Exception:  # the loop must outlive any one failure, or delivery stops for good
                log.exception("claiming from the store failed")
                await self._wait(self.settings.poll_seconds)
                continue
            if not claims:
                await self._wait(self.settings.poll_seconds)
                continue
            for claim in claims:
                task = asyncio.create_task(self._handle(claim), name=f"deliver-{claim.handle}")
                self._inflight.add(task)
                self.metrics.in_flight.set(len(self._inflight))
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self.metrics.in_flight.set(len(self._inflight))
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    async def _wait(self, seconds: float) -> None:
        self._wake.clear()
        if self._stopping.is_set():
            return
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    # -- one claimed event ---------------------------------------------------------------------------

    async def _handle(self, claim: Claim) -> None:
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._keep_leased(claim, asyncio.current_task(), lost),
                                      name=f"renew-{claim.handle}")
        try:
            async with asyncio.timeout(self.settings.deadline_seconds):
                await self._deliver(claim)
        except asyncio.CancelledError:
            if lost.is_set():
                # Another worker holds the event now; whatever this one did is in the ticket record.
                log.warning("lease on %s was lost mid-delivery; another worker carries on", claim.event.key[:12])
                return
            # Shutdown: give the event back at once, for the next process to deliver.
            await asyncio.shield(self._settle(self.store.retry_later(claim, 0, "released at shutdown")))
            raise
        except TimeoutError:
            await self._retry(claim, [_Failure(
                "*", f"delivery did not finish within deadline_seconds ({self.settings.deadline_seconds:g}s)")])
        except StoreUnavailable as exc:
            # Reading or writing a ticket record failed: give the event back for a prompt retry; if even
            # that cannot be recorded, the lease runs out and the event is delivered again.
            log.error("store unavailable while delivering %s: %s", claim.event.key[:12], exc)
            try:
                await self._record(self.store.retry_later, claim, self.settings.backoff_base_seconds,
                                   f"store unavailable: {exc}")
            except StoreUnavailable as again:
                log.error("could not give %s back to the store; its lease will expire: %s",
                          claim.event.key[:12], again)
        except Exception as exc:
            log.exception("unexpected error delivering %s", claim.event.key[:12])
            try:
                await self._retry(claim, [_Failure("*", f"unexpected {type(exc).__name__}: {exc}")])
            except Exception:
                log.exception("could not give %s back to the store; its lease will expire", claim.event.key[:12])
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _keep_leased(self, claim: Claim, delivery: asyncio.Task[Any] | None, lost: asyncio.Event) -> None:
        """Renew the claim's lease every third of it while its delivery runs. Should the lease be lost
        (it ran out during a store outage and another worker claimed the event), stop the delivery:
        one event is never delivered by two workers at once."""
        lease = self.settings.lease_seconds
        while True:
            await asyncio.sleep(lease / RENEWALS_PER_LEASE)
            try:
                await self.store.renew(claim, lease)
            except LeaseLost:
                lost.set()
                if delivery is not None:
                    delivery.cancel()
                return
            except Exception as exc:  # a store blip: try again at the next beat, while the lease lasts
                log.warning("could not renew the lease on %s: %s", claim.event.key[:12], exc)

    async def _record(self, op: Callable[..., Awaitable[None]], claim: Claim, *args: Any, **kwargs: Any) -> None:
        """Record an outcome (complete, retry_later, dead_letter), retried through a store blip for up to
        `record_retry_seconds`; past that StoreUnavailable, and the lease decides."""
        give_up = self._clock() + self.settings.record_retry_seconds
        for tries in itertools.count():
            try:
                await op(claim, *args, **kwargs)
                return
            except StoreUnavailable as exc:
                pause = RECORD_BACKOFF_SECONDS[min(tries, len(RECORD_BACKOFF_SECONDS) - 1)]
                if self._clock() + pause > give_up:
                    raise
                log.warning("could not record the outcome of %s (try %d): %s", claim.event.key[:12], tries + 1, exc)
                await asyncio.sleep(pause)

    async def _deliver(self, claim: Claim) -> None:
        event = claim.event
        if claim.attempts >= self.settings.max_attempts:
            # Earlier leases ended with no outcome recorded: a delivery that kills the process (or
            # outlives every lease) would otherwise come back forever.
            self.metrics.dead_letters.labels("attempts_exhausted").inc()
            log.error("dead letter %s: leased %d times without an outcome", claim.handle, claim.attempts)
            await self._record(
                self.store.dead_letter,
                claim, f"gave up after {claim.attempts} attempts that ended without an outcome "
                "(the relay stopped or the lease ran out while delivering it)",
            )
            return
        try:
            alert = parse_alert_json(event.body)
        except (ValueError, SchemaError) as exc:
            self.metrics.dead_letters.labels("unparseable").inc()
            await self._record(self.store.dead_letter, claim, f"the stored body is not a common-schema alert: {exc}")
            return
        routes = self.config.routes_for(alert)
        if not routes:
            log.warning("alert %s (%s) matched no route; not delivered", alert.correlation_key,
                        alert.essentials.alert_rule)
            self.metrics.unrouted.inc()
            await self._record(self.store.complete, claim)
            return
        failures = []
        for route in routes:
            outcome = await self._deliver_to(route, alert, event)
            if outcome is not None:
                failures.append(outcome)
        if not failures:
            await self._record(self.store.complete, claim)
        elif all(f.retryable for f in failures):
            await self._retry(claim, failures)
        else:
            for f in failures:
                self.metrics.deliveries.labels(f.target, "dead_letter").inc()
            self.metrics.dead_letters.labels("non_retryable").inc()
            error = _describe(failures)
            log.error("dead letter %s (alert %s): %s", claim.handle, alert.correlation_key, error)
            await self._record(self.store.dead_letter, claim, error)

    async def _retry(self, claim: Claim, failures: list[_Failure]) -> None:
        error = _describe(failures)
        # A bounce off open circuits sent nothing: it does not use up an attempt.
        bounced = all(f.bounced for f in failures)
        attempts = claim.attempts if bounced else claim.attempts + 1
        age = self.wall_clock() - claim.received_at if claim.received_at else 0.0
        if age >= self.settings.max_age_seconds:
            for f in failures:
                self.metrics.deliveries.labels(f.target, "dead_letter").inc()
            self.metrics.dead_letters.labels("too_old").inc()
            log.error("dead letter %s: not delivered %.0fs after it was accepted (max_age_seconds %g): %s",
                      claim.handle, age, self.settings.max_age_seconds, error)
            await self._record(self.store.dead_letter, claim,
                               f"not delivered within max_age_seconds ({self.settings.max_age_seconds:g}s) "
                               f"after {attempts} attempts: {error}")
            return
        if attempts >= self.settings.max_attempts:
            for f in failures:
                self.metrics.deliveries.labels(f.target, "dead_letter").inc()
            self.metrics.dead_letters.labels("attempts_exhausted").inc()
            log.error("dead letter %s after %d attempts: %s", claim.handle, attempts, error)
            await self._record(self.store.dead_letter, claim, f"gave up after {attempts} attempts: {error}")
            return
        retry_after = max((f.retry_after for f in failures if f.retry_after is not None), default=None)
        if bounced:
            # Not before the circuit's next probe, and spread out: the probe is one call, not all of them.
            wait = retry_after if retry_after is not None else self.settings.circuit_open_seconds
            delay = max(wait, BOUNCE_MIN_SECONDS) * (1 + 0.25 * self.rng())
            log.info("%s waits %.1fs for its target's circuit: %s", claim.handle, delay, error)
        else:
            delay = backoff_delay(attempts, base=self.settings.backoff_base_seconds,
                                  cap=self.settings.backoff_max_seconds, retry_after=retry_after, rng=self.rng)
            log.warning("retrying %s in %.1fs (attempt %d): %s", claim.handle, delay, attempts, error)
        await self._record(self.store.retry_later, claim, delay, error, count_attempt=not bounced)

    async def _deliver_to(self, route: Route, alert: Alert, event: Event) -> _Failure | None:
        """Deliver to one route's target; None on success, else what went wrong."""
        name = route.target
        target = self.targets[name]
        # A backstop over the target's own per-call timeouts (a delivery may make several calls).
        deadline = min(self.config.targets[name].timeout_seconds * 6, self.settings.deadline_seconds)
        try:
            async with self._slots[name]:
                async with asyncio.timeout(deadline):
                    due = event.condition == DUE_CONDITION
                    if is_forwarder(target):
                        if not due:  # a receiver that owns the lifecycle has no timers of ours
                            await self._forward(target, alert, event)  # type: ignore[arg-type]
                    else:
                        facts = event_facts(alert)
                        for key in ticket_keys(alert, route.incident_per, self.settings.max_configuration_items):
                            await self._apply(route, target, alert, event, facts, key)  # type: ignore[arg-type]
            return None
        except (CircuitOpen, RateLimited) as exc:  # nothing was sent: not an attempt
            outcome = "circuit_open" if isinstance(exc, CircuitOpen) else "rate_limited"
            self.metrics.deliveries.labels(name, outcome).inc()
            return _Failure(name, str(exc), retryable=True, retry_after=exc.retry_in, bounced=True)
        except _Busy as exc:
            self.metrics.deliveries.labels(name, "retry").inc()
            return _Failure(name, str(exc), retryable=True, retry_after=exc.after)
        except TargetError as exc:
            if exc.retryable:
                self.metrics.deliveries.labels(name, "retry").inc()
            return _Failure(name, str(exc), retryable=exc.retryable, retry_after=exc.retry_after)
        except TimeoutError:
            self.metrics.deliveries.labels(name, "retry").inc()
            return _Failure(name, f"{name}: delivery did not finish in {deadline:g}s", retryable=True)
        except StoreUnavailable:
            raise
        except Exception as exc:  # a bug in a target or here: retried, and dead-lettered past the limit
            log.exception("%s: unexpected error delivering alert %s", name, alert.correlation_key)
            self.metrics.deliveries.labels(name, "retry").inc()
            return _Failure(name, f"{name}: unexpected {type(exc).__name__}: {exc}", retryable=True)

    # -- lifecycle targets ---------------------------------------------------------------------------

    async def _apply(self, route: Route, target: Target, alert: Alert, event: Event, facts: EventFacts,
                     key: TicketKey) -> None:
        # Alerts sharing a ticket key (one incident per CI, Service Health threads) take turns here;
        # across processes the record's version does the same job.
        async with self._key_locks.hold((target.name, key.key)):
            for _ in range(RECORD_RETRIES):
                if await self._apply_once(route, target, alert, event, facts, key):
                    return
            raise _Busy(f"{target.name}: ticket record {key.key} kept changing under this delivery",
                         BUSY_RETRY_SECONDS)

    async def _apply_once(self, route: Route, target: Target, alert: Alert, event: Event, facts: EventFacts,
                          key: TicketKey) -> bool:
        """One read-decide-call-record round; False when the record changed meanwhile (decide again)."""
        record = await self.store.get_ticket(target.name, key.key)
        data = record.data if record else {}
        state = TicketState.from_data(data) if record else None
        version = record.version if record else None
        closed = record.closed_at if record else None
        searched = False
        if event.condition == DUE_CONDITION:
            if record is None:  # nothing was deferred or held under this key
                return True
            decision = decide_due(facts.alert, event.occurred_at, state, route.policy,
                                  window=self._window(alert, event.occurred_at))
        elif record is None:
            # No record: the first event of this key, or a lost or replaced store. The target's tickets
            # under the key (and its `.N` successors) decide, so nothing stays open and no twin is created.
            if can_search(target):
                found = await self._call(target, "search", target.search, key.key)  # type: ignore[attr-defined]
                twins = twin_keys(key.key, found)
                if twins:
                    raise TargetError(f"{target.name}: more than one open ticket carries {', '.join(twins)}; "
                                      "resolve or merge the duplicates, then replay", retryable=False)
                state = recovered_state(facts, key.key, found)
                searched = True
            decision = self._decide(route, alert, facts, state, recovered=True)
            if orphaned(facts, decision):
                self.metrics.orphan_events.labels(target.name, str(decision.action)).inc()
                if state is not None:
                    held = f"the target holds {state.ticket_number or state.ticket_id} (up to .{state.generation})"
                else:
                    held = "the target holds none" if searched else "this target cannot be searched"
                log.warning("%s: no ticket record for %s (a %s event; a lost or replaced store?): %s; %s",
                            target.name, key.key, facts.kind, held, decision.action)
        else:
            decision = self._decide(route, alert, facts, state)
        # Timers first: a crash after this and before the record leaves a timer that finds nothing to do.
        await self._schedule_timers(decision, event)
        action = decision.action
        log.debug("%s %s %s: %s (%s)", target.name, key.key, facts.kind, action, decision.reason)
        if action is Action.REFUSE:  # issue 12: another source's alert with this GUID; recorded in the state
            log.warning("%s: refused %s for ticket key %s: %s", target.name, facts.alert_id, key.key, decision.reason)
        if not action.calls_target:
            return await self._record_only(target, key, decision, state, data, version, closed, record is None)

        incident = self._render(route, target, alert, event, key, decision, state)
        if action.opens_incident:
            opened = await self._open_incident(target, action, key, incident, data, version, event.key,
                                               searched=searched and state is None)
            if opened is None:
                return False
            ticket, version, outcome = opened
            new_state = decision.state.with_ticket(ticket.id, ticket.number)
        else:
            assert state is not None  # decide() only notes, resolves or reopens known tickets
            base = {k: v for k, v in data.items() if k != "step"} if record else state.to_data()
            marker = step_marker(event.key)
            version = await self._update_incident(target, action, key, state, incident, base, version, closed,
                                                  self._note(target, action, facts, alert, marker, decision.note),
                                                  marker,
                                                  retrying=step_unsettled(data, action, marker))
            if version is None:
                return False
            new_state, outcome = decision.state, str(action)
        if await self._put(target.name, key.key, new_state.to_data(), version, closed) is None:
            log.warning("%s: ticket record %s changed during a %s call; deciding again", target.name, key.key,
                        action)
            return False
        log.info("%s: %s %s for %s (%s)", target.name, outcome, new_state.ticket_number or new_state.ticket_id,
                 incident.correlation_key, decision.reason)
        self.metrics.deliveries.labels(target.name, outcome).inc()
        return True

    async def _record_only(self, target: Target, key: TicketKey, decision: Decision, state: TicketState | None,
                           data: Mapping[str, Any], version: str | None, closed: float | None,
                           unrecorded: bool) -> bool:
        """An action that calls no target: remember the event (keeping an open intent); False on a conflict."""
        if unrecorded or state is None or decision.state != state:
            keep = {k: data[k] for k in ("pending", "step") if k in data}
            if await self._put(target.name, key.key, {**decision.state.to_data(), **keep}, version, closed) is None:
                return False
        self.metrics.deliveries.labels(target.name, str(decision.action)).inc()
        return True

    def _render(self, route: Route, target: Target, alert: Alert, event: Event, key: TicketKey,
                decision: Decision, state: TicketState | None = None) -> Incident:
        cfg = self.config.targets[target.name]
        # A re-fire's new ticket names the resolved one it follows (the record still holds its number).
        previous = (state.ticket_number or state.ticket_id) if state and decision.action is Action.NEW else None
        return render_incident(
            alert,
            target=target,
            correlation_key=correlation_key(key.key, decision.state.generation),
            configuration_items=key.configuration_items,
            unbound_configuration_items=key.unbound,
            summary=route.summary,
            description=route.description,
            fields=route.fields,
            severity_fields=cfg.severity,
            body=event.body,
            previous_ticket=previous,
        )

    def _note(self, target: Target, action: Action, facts: EventFacts, alert: Alert, marker: str,
              own: str | None = None) -> str:
        """The note text (the decision's `own` text, else the event's), ending with the event's step marker
        (kept whole when the text is cut)."""
        limit = target.limits.note
        text = truncate(own or note_text(action, facts.kind, alert, target), max(0, limit - len(marker) - 1))
        return f"{text}\n{marker}" if text else marker

    async def _open_incident(self, target: Target, action: Action, key: TicketKey, incident: Incident,
                             data: Mapping[str, Any], version: str | None, event_key: str, *,
                             searched: bool = False) -> tuple[Ticket, str, str] | None:
        """Create the incident, or adopt the one a crashed delivery created: (ticket, record version, outcome).

        Before the call the intent is written to the ticket record, guarded by its version: of two workers,
        only one gets to create. It outlives a crash; the next delivery finds and adopts once it may
        (`create_intent_wait`: a create that got no answer may land for `adopt_after_seconds`; one cut off
        by its worker's death, for that worker's call timeout). None: the record
        changed meanwhile (decide again). `searched`: the key had no record and a search of the target by it
        just found nothing, so no earlier attempt can have created it and the find is skipped.
        """
        pending = data.get("pending")
        if pending:
            cfg = self.config.targets[target.name]
            left = create_intent_wait(pending, now=self.wall_clock(), event_key=event_key, owner=self.owner,
                                      call_timeout=cfg.timeout_seconds, adopt_after=self.settings.adopt_after(cfg))
            if left > 0:
                raise _Busy(f"{target.name}: another delivery is opening the incident for {key.key}", left)
        base = {k: v for k, v in data.items() if k != "pending"}
        intent = {**base, "pending": create_intent(incident.correlation_key, since=self.wall_clock(),
                                                   event_key=event_key, owner=self.owner)}
        intent_version = await self._put(target.name, key.key, intent, version, None)
        if intent_version is None:
            return None
        creating = False
        try:
            found = None if searched else await self._call(target, "find", target.find, incident)
            if found is not None and not found.resolved:
                log.info("%s: adopted %s for %s (created before a crash, not recorded)", target.name,
                         found.number or found.id, incident.correlation_key)
                return found, intent_version, "adopt"
            creating = True
            ticket = await self._call(target, "create", target.create, incident)
            return ticket, intent_version, str(action)
        except BaseException as exc:
            if creating and _unanswered(exc):
                # The create may still land (a hung call the target finishes after we gave up): keep the
                # intent, so the retry waits `adopt_after_seconds`, then finds and adopts instead of
                # creating twice.
                log.warning("%s: create for %s got no answer; searching for it once adopt_after_seconds "
                            "has passed", target.name, incident.correlation_key)
                unanswered = {**intent, "pending": {**intent["pending"], "unanswered_at": self.wall_clock()}}
                with contextlib.suppress(Exception):  # unmarked, the intent still waits adopt_after from since
                    await asyncio.shield(self._put(target.name, key.key, unanswered, intent_version, None))
                raise
            # Nothing was opened, or what was is already findable: drop the intent so the retry need not wait.
            await asyncio.shield(self._put(target.name, key.key, base, intent_version, None))
            raise

    async def _update_incident(self, target: Target, action: Action, key: TicketKey, state: TicketState,
                               incident: Incident, base: Mapping[str, Any], version: str | None,
                               closed: float | None, text: str, marker: str, *, retrying: bool) -> str | None:
        """A note, resolve or reopen on the ticket the record names, sent at most once per event.

        The step's intent goes into the record first. When the record already holds it (an earlier attempt's
        outcome is unknown: `retrying`), a target that can be read is read first and what is already there is skipped; a
        target that cannot be read gets the step again and relies on its own deduplication. The intent stays
        until the outcome is recorded. Returns the record's version, None on a conflict (decide again).
        """
        assert state.ticket_id is not None
        ticket = Ticket(id=state.ticket_id, number=state.ticket_number, resolved=not state.open)
        intent_version = await self._put(target.name, key.key,
                                         {**base, "step": step_intent(action, marker, self.wall_clock())},
                                         version, closed)
        if intent_version is None:
            return None
        if retrying and can_read(target):
            view = await self._call(target, "read", target.read, ticket)  # type: ignore[attr-defined]
            if step_done(action, view, marker):
                log.info("%s: %s of %s for %s was already applied by an earlier attempt; not sent again",
                         target.name, action, ticket.number or ticket.id, incident.correlation_key)
                return intent_version
        call = {Action.NOTE: target.note, Action.RESOLVE: target.resolve, Action.REOPEN: target.reopen}[action]
        await self._call(target, str(action), call, ticket, incident, text)
        return intent_version

    async def _put(self, target: str, key: str, data: dict[str, Any], version: str | None,
                   closed_before: float | None = None) -> str | None:
        """Write a ticket record if unchanged since read: its new version, or None on a conflict.
        `closed_before`: the record's `closed_at` as read (kept while the ticket stays closed)."""
        record = TicketRecord(target=target, key=key, data=data, version=version,
                              closed_at=closed_at(data, closed_before, self.wall_clock()))
        try:
            stored = await self.store.put_ticket(record)
        except VersionConflict:
            return None
        return stored.version

    async def _call(self, target: Target | Forwarder, call: str, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """One call to a target, through its circuit breaker and timed."""
        breaker = self.breakers[target.name]
        await self.rate_limits[target.name].acquire()
        breaker.before_call()
        started = time.perf_counter()
        try:
            result = await fn(*args)
        except TargetError as exc:
            if exc.status == 429:
                self.rate_limits[target.name].throttled(exc.retry_after)
            if exc.retryable:
                breaker.failed()
            else:
                breaker.succeeded()  # the target answered: it is healthy, the request was wrong
            raise
        except TimeoutError as exc:  # a target's own deadline; targets raise no other transport errors
            breaker.failed()
            raise TargetError(f"{target.name}: {call} failed: {type(exc).__name__}: {exc}", retryable=True,
                              unanswered=True) from exc
        except BaseException:
            breaker.released()
            raise
        finally:
            self.metrics.call_seconds.labels(target.name, call).observe(time.perf_counter() - started)
        breaker.succeeded()
        return result

    # -- noise control (issue 15) -------------------------------------------------------------------

    def _window(self, alert: Alert, at: str) -> InWindow | None:
        return active_window(self.config.maintenance, alert, at) if self.config.maintenance else None

    def _decide(self, route: Route, alert: Alert, facts: EventFacts, state: TicketState | None, *,
                recovered: bool = False) -> Decision:
        return decide_with_noise(facts, state, route.policy, window=self._window(alert, facts.occurred_at),
                                 damping=route.damping, recovered=recovered)

    async def _schedule_timers(self, decision: Decision, event: Event) -> None:
        for at in decision.timers:
            await self.scheduler.schedule(DUE_KIND, to_epoch(at), event.alert_id.lower(),
                                          alert_id=event.alert_id, event=event.key)

    async def _due_event(self, entry: Mapping[str, Any]) -> None:
        """A timer of an alert is due: queue a due event of the alert with the body of the event that set it."""
        source = await self.store.event(str(entry["alert_id"]), str(entry["event"]))
        if source is None:
            self.metrics.dead_letters.labels("timer_source_gone").inc()
            log.error("timer of alert %s at %s: its event %s is no longer stored (retention); nothing to decide "
                      "from", entry["alert_id"], from_epoch(float(entry["at"])), str(entry["event"])[:12])
            return
        at = from_epoch(float(entry["at"]))
        due = Event(key=idempotency_key(source.alert_id, DUE_CONDITION, at), alert_id=source.alert_id,
                    condition=DUE_CONDITION, occurred_at=at, body=source.body, priority=PRIORITY_URGENT)
        await self.store.accept(due)
        self.notify()

    # -- forwarders ----------------------------------------------------------------------------------

    async def _forward(self, target: Forwarder, alert: Alert, event: Event) -> None:
        """Pass the body on once per event (a retry of the event for another target skips this one)."""
        key = "fwd-" + alert.correlation_key.lower()
        record = await self.store.get_ticket(target.name, key)
        sent = list(record.data.get("forwarded", [])) if record else []
        if event.key in sent:
            self.metrics.deliveries.labels(target.name, "nothing").inc()
            return
        await self._call(target, "forward", target.forward, event.body)
        self.metrics.deliveries.labels(target.name, "forward").inc()
        for _ in range(RECORD_RETRIES):
            sent = ([*sent, event.key])[-FORWARDED_KEYS_KEPT:]
            version = record.version if record else None
            if await self._put(target.name, key, {"forwarded": sent}, version) is not None:
                return
            record = await self.store.get_ticket(target.name, key)
            sent = list(record.data.get("forwarded", [])) if record else []

    async def _settle(self, op: Any) -> None:
        try:
            await op
        except StoreUnavailable as exc:
            log.error("could not release a claim at shutdown (its lease will expire): %s", exc)


def _unanswered(exc: BaseException) -> bool:
    """A call that ended without the target's answer (timed out, connection dropped, cancelled): the target
    may have applied it, or may still. Refused connections sent nothing; any answer means it is done."""
    if isinstance(exc, TargetError):
        return exc.unanswered
    return isinstance(exc, TimeoutError | asyncio.CancelledError)


def _describe(failures: list[_Failure]) -> str:
    return "; ".join(f.error or f"{f.target}: failed" for f in failures)[:3900]
