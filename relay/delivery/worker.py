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
import contextvars
import dataclasses
import itertools
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from relay.alerts import Alert, SchemaError, parse_alert_json
from relay.delivery.flapping import from_epoch, to_epoch
from relay.delivery.grouping import (
    GroupDecision,
    GroupKey,
    GroupState,
    Role,
    decide_group,
    group_key,
    joined_note,
    links_due,
    parent_summary,
    release_deferred,
    with_linked,
    with_member_ticket,
)
from relay.delivery.lifecycle import (
    Action,
    Decision,
    EventFacts,
    InWindow,
    Kind,
    TicketKey,
    TicketState,
    closed_at,
    correlation_key,
    create_intent,
    create_intent_wait,
    dead_writers_intent,
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
from relay.delivery.loop_share import LoopLag, capacity_now
from relay.delivery.maintenance import active_window
from relay.delivery.metrics import DeliveryMetrics
from relay.delivery.rate_limit import RateLimited, RateLimiter
from relay.delivery.rendering import note_text, render_incident, template_context
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
    TrailEntry,
    VersionConflict,
    idempotency_key,
)
from relay.targets import (
    Forwarder,
    Incident,
    Target,
    TargetError,
    Ticket,
    can_link,
    can_read,
    can_retitle,
    can_search,
    is_forwarder,
    ticket_link,
    truncate,
)
from relay.telemetry import Tracing

log = logging.getLogger("relay.delivery.worker")
_T = TypeVar("_T")

FORWARDED_KEYS_KEPT = 50  # event keys remembered per alert per forwarder, to skip re-forwarding on retry
RECORD_RETRIES = 8  # re-reads after a VersionConflict before giving the event back to the store
BUSY_RETRY_SECONDS = 1.0  # another worker is opening this incident: look again soon
BOUNCE_MIN_SECONDS = 1.0  # an event bounced off an open circuit comes back no sooner than this
RENEWALS_PER_LEASE = 3  # a running delivery renews its lease every third of it
RECORD_BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)  # between tries to record an outcome, then 5 s each
IN_FLIGHT_PER_SLOT = 2  # deliveries in flight per target call slot (`max_concurrency`)
MAX_IN_FLIGHT = 1024  # and at most this many in all


# The alert trail of the claim this task is delivering (each claim runs in its own task): decisions and
# target calls are appended as they happen, and `_record` hands them to the store with the outcome.
_TRAIL: contextvars.ContextVar[list[TrailEntry] | None] = contextvars.ContextVar("relay_trail", default=None)
# A recorded outcome as the trail names it (and the delivery's span, with tracing on).
_OUTCOMES = {"complete": "delivered", "retry_later": "retry", "dead_letter": "dead_letter"}

# Storm grouping: every replica writes one group record per window, so conflicts are expected there.
GROUP_RECORD_RETRIES = 32  # re-reads of a group record after a conflict before giving the event back
GROUP_CONFLICT_PAUSE_SECONDS = 0.02  # up to this (random) between them
GROUP_INTENT_POLL_SECONDS = 0.05  # how often a delivery looks whether another's parent create has settled

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
        intake_in_flight: Callable[[], int] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.store = store
        # With tracing on (relay/telemetry.py), each claimed event's delivery is a span in the trace intake
        # stored with it, and each target call a client span under it; None: no span is made.
        self.tracing = tracing
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
        # Deliveries in flight: twice the targets' call slots, bounded, so that while some wait on the
        # store (claim, ticket record, intent, complete) others keep every slot busy with a call.
        self.capacity = max(1, min(MAX_IN_FLIGHT, IN_FLIGHT_PER_SLOT * sum(
            cfg.max_concurrency for cfg in config.targets.values())))
        # Requests in flight at intake (same process): while it is busy and the loop lags, fewer
        # deliveries run (relay/delivery/loop_share.py).
        self._intake_in_flight = intake_in_flight
        self.loop_lag = LoopLag()
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
        if self._intake_in_flight is not None:
            self.loop_lag.start()
        self._loop_task = asyncio.create_task(self._run(), name="delivery-worker")
        self._scheduler_task = asyncio.create_task(self.scheduler.run(self._stopping), name="scheduler")

    def capacity_now(self) -> int:
        """Deliveries that may be in flight now: all of `capacity`, or a share while intake is busy."""
        if self._intake_in_flight is None:
            return self.capacity
        return capacity_now(self.capacity, intake_in_flight=self._intake_in_flight(),
                            lag_seconds=self.loop_lag.seconds)

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
        await self.loop_lag.stop()
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
            free = self.capacity_now() - len(self._inflight)
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
                handle = self._handle(claim) if self.tracing is None else self._handle_traced(claim, self.tracing)
                task = asyncio.create_task(handle, name=f"deliver-{claim.handle}")
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
        _TRAIL.set([])
        lost = asyncio.Event()
        # The renewer is a timer until the first renewal is due: most deliveries end well within a third of
        # the lease, and a task each (created, cancelled, awaited) cost every one of them two turns of the loop.
        renewer: list[asyncio.Task[None]] = []
        delivery = asyncio.current_task()

        def start_renewing() -> None:
            renewer.append(asyncio.create_task(self._keep_leased(claim, delivery, lost), name=f"renew-{claim.handle}"))

        first_renewal = asyncio.get_running_loop().call_later(
            self.settings.lease_seconds / RENEWALS_PER_LEASE, start_renewing)
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
            first_renewal.cancel()
            for task in renewer:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _handle_traced(self, claim: Claim, tracing: Tracing) -> None:
        """`_handle` as a span of the trace stored with the event (a new trace when it was stored untraced)."""
        event = claim.event
        with tracing.span(f"deliver {event.condition}", "consumer", {
            "relay.alert.id": event.alert_id, "relay.alert.condition": event.condition, "relay.event.key": event.key,
            "relay.delivery.attempt": claim.attempts + 1,
        }, parent=event.trace_context or None):
            await self._handle(claim)

    async def _keep_leased(self, claim: Claim, delivery: asyncio.Task[Any] | None, lost: asyncio.Event) -> None:
        """Renew the claim's lease now (a third of it has gone) and every third of it after, while its
        delivery runs. Should the lease be lost (it ran out during a store outage and another worker
        claimed the event), stop the delivery: one event is never delivered by two workers at once."""
        lease = self.settings.lease_seconds
        while True:
            try:
                await self.store.renew(claim, lease)
            except LeaseLost:
                lost.set()
                if delivery is not None:
                    delivery.cancel()
                return
            except Exception as exc:  # a store blip: try again at the next beat, while the lease lasts
                log.warning("could not renew the lease on %s: %s", claim.event.key[:12], exc)
            await asyncio.sleep(lease / RENEWALS_PER_LEASE)

    async def _record(self, op: Callable[..., Awaitable[None]], claim: Claim, *args: Any, **kwargs: Any) -> None:
        """Record an outcome (complete, retry_later, dead_letter), retried through a store blip for up to
        `record_retry_seconds`; past that StoreUnavailable, and the lease decides."""
        give_up = self._clock() + self.settings.record_retry_seconds
        trail = _TRAIL.get()
        if trail:  # the attempt's trail goes in the outcome's own write
            claim = dataclasses.replace(claim, trail=tuple(trail))
        if self.tracing is not None:
            outcome = _OUTCOMES.get(getattr(op, "__name__", ""), "")
            self.tracing.annotate({"relay.delivery.outcome": outcome},
                                  error=None if outcome == "delivered" else str(args[-1] if args else outcome))
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
            self._trail_note("decision", what="dead_letter", detail=f"leased {claim.attempts} times without an outcome")
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
        self._trail_note("decision", what="route",
                         detail=", ".join(r.target for r in routes) if routes else "matched no route")
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
            await self._give_up(claim, failures, "non_retryable", _describe(failures),
                                alert=alert.correlation_key)

    async def _retry(self, claim: Claim, failures: list[_Failure]) -> None:
        error = _describe(failures)
        # A bounce off open circuits sent nothing: it does not use up an attempt.
        bounced = all(f.bounced for f in failures)
        attempts = claim.attempts if bounced else claim.attempts + 1
        age = self.wall_clock() - claim.received_at if claim.received_at else 0.0
        if age >= self.settings.max_age_seconds:
            await self._give_up(claim, failures, "too_old",
                                f"not delivered within max_age_seconds ({self.settings.max_age_seconds:g}s) "
                                f"after {attempts} attempts: {error}")
            return
        if attempts >= self.settings.max_attempts:
            await self._give_up(claim, failures, "attempts_exhausted", f"gave up after {attempts} attempts: {error}")
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
            log.warning("retrying %s in %.1fs (attempt %d): %s", claim.handle, delay, attempts, error,
                        extra={"event_key": claim.event.key, "condition": claim.event.condition,
                               "target": ",".join(f.target for f in failures), "outcome": "retry"})
        await self._record(self.store.retry_later, claim, delay, error, count_attempt=not bounced)

    async def _give_up(self, claim: Claim, failures: list[_Failure], reason: str, error: str, *,
                       alert: str | None = None) -> None:
        """Make the claim a dead letter: counted per target and by reason, logged, and recorded."""
        for f in failures:
            self.metrics.deliveries.labels(f.target, "dead_letter").inc()
        self.metrics.dead_letters.labels(reason).inc()
        about = f" (alert {alert})" if alert else ""
        extra = {"event_key": claim.event.key, "condition": claim.event.condition,
                 "target": ",".join(f.target for f in failures), "outcome": "dead_letter", "reason": reason}
        if alert:
            extra["alert_key"] = alert
        log.error("dead letter %s%s, %s: %s", claim.handle, about, reason, error, extra=extra)
        await self._record(self.store.dead_letter, claim, error)

    async def _deliver_to(self, route: Route, alert: Alert, event: Event) -> _Failure | None:
        """Deliver to one route's target; None on success, else what went wrong."""
        name = route.target
        target = self.targets[name]
        # A backstop over the target's own per-call timeouts (a delivery may make several calls).
        deadline = min(self.config.targets[name].timeout_seconds * 6, self.settings.deadline_seconds)
        try:
            async with asyncio.timeout(deadline):
                due = event.condition == DUE_CONDITION
                if is_forwarder(target):
                    if not due:  # a receiver that owns the lifecycle has no timers of ours
                        await self._forward(target, alert, event)  # type: ignore[arg-type]
                else:
                    facts = event_facts(alert)
                    keys = ticket_keys(alert, route.incident_per, self.settings.max_configuration_items)
                    group = group_key(alert, route.group, route.index, facts.fired_at) if route.group else None
                    if group is not None and due:
                        await self._grouped_due(route, target, alert, event, facts, keys, group)  # type: ignore[arg-type]
                    elif group is not None:
                        await self._grouped(route, target, alert, event, facts, keys, group)  # type: ignore[arg-type]
                    else:
                        for key in keys:
                            await self._apply(route, target, alert, event, facts, key)  # type: ignore[arg-type]
            return None
        except (CircuitOpen, RateLimited) as exc:  # nothing was sent: not an attempt
            outcome = "circuit_open" if isinstance(exc, CircuitOpen) else "rate_limited"
            self.metrics.deliveries.labels(name, outcome).inc()
            self._trail_note("call", target=name, what="not sent", status=outcome, detail=str(exc))
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
                     key: TicketKey, *, read_first: bool = False, absorbed: bool = False) -> None:
        # Alerts sharing a ticket key (one incident per CI, Service Health threads) take turns here;
        # across processes the record's version does the same job.
        async with self._key_locks.hold((target.name, key.key)):
            for _ in range(RECORD_RETRIES):
                if await self._apply_once(route, target, alert, event, facts, key, read_first=read_first,
                                          absorbed=absorbed):
                    return
            raise _Busy(f"{target.name}: ticket record {key.key} kept changing under this delivery",
                         BUSY_RETRY_SECONDS)

    async def _apply_once(self, route: Route, target: Target, alert: Alert, event: Event, facts: EventFacts,
                          key: TicketKey, *, read_first: bool = False, absorbed: bool = False) -> bool:
        """One read-decide-call-record round; False when the record changed meanwhile (decide again)."""
        started = time.perf_counter()
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
                                  window=self._window(alert, event.occurred_at), absorbed=absorbed)
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
        known = (state.ticket_number or state.ticket_id) if state is not None else None
        self._trail_note("decision", target=target.name, what=str(action),
                         detail=f"{facts.kind} {key.key}: {decision.reason}", ticket=known or "",
                         link=_ticket_link(target, state.ticket_id, state.ticket_number) if state and known else "")
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
                                                  retrying=step_unsettled(data, action, marker) or read_first)
            if version is None:
                return False
            new_state, outcome = decision.state, str(action)
        if await self._put(target.name, key.key, new_state.to_data(), version, closed) is None:
            log.warning("%s: ticket record %s changed during a %s call; deciding again", target.name, key.key,
                        action)
            return False
        ticket = new_state.ticket_number or new_state.ticket_id
        if log.isEnabledFor(logging.INFO):  # its fields (a ticket link, ...) only when it is written
            log.info("%s: %s %s for %s (%s)", target.name, outcome, ticket, incident.correlation_key, decision.reason,
                     extra={"alert_key": alert.correlation_key, "event_key": event.key, "condition": event.condition,
                            "target": target.name, "ticket": ticket, "ticket_key": key.key, "outcome": outcome,
                            "subject": incident.summary, "link": ticket_link(target, Ticket(
                                new_state.ticket_id or "", new_state.ticket_number)),
                            "latency_ms": round((time.perf_counter() - started) * 1000, 3)})
        self.metrics.deliveries.labels(target.name, outcome).inc()
        return True

    # -- storm grouping (relay.delivery.grouping; docs/lifecycle.md "Storm grouping") -----------------

    async def _grouped(self, route: Route, target: Target, alert: Alert, event: Event, facts: EventFacts,
                       keys: list[TicketKey], group: GroupKey) -> None:
        """An event of a grouped route: the group's record says what the alert is in its window (its own
        incident, a linked child, or a note on the parent) and what the parent does.

        A Fired is decided in the group first (it may open the parent), then opens its own incident if it
        has one, then links what can be linked. A Resolved resolves its own incident first, then the group:
        the parent resolves after its children, so a target that resolves children with their parent
        (ServiceNow) has nothing left to do, and a child it already resolved is read first, not resolved
        again.
        """
        if facts.kind is Kind.RESOLVED:
            record = await self.store.get_ticket(target.name, group.key)
            member = GroupState.from_data(record.data).members.get(facts.alert) if record else None
            if member is None or member.role.own_key:  # unknown here: its own record decides
                for key in keys:
                    await self._apply(route, target, alert, event, facts, key,
                                      read_first=member is not None and member.linked)
            held = await self._noise_of(target, keys, facts.alert, "held", facts.fired_at)
            await self._group_step(route, target, alert, event, facts, group, held=held)
            return
        # Inside a maintenance window the alert is not counted (it joins at the window's end); a flapping
        # member's re-fire does not note the parent (it counts once).
        decision = await self._group_step(route, target, alert, event, facts, group,
                                          window=self._window(alert, facts.occurred_at),
                                          flapping=await self._noise_of(target, keys, facts.alert, "flapping"))
        if decision.role.own_key:
            for key in keys:
                await self._apply(route, target, alert, event, facts, key)
        if facts.kind is Kind.FIRED and can_link(target):
            own = None
            if decision.role.has_ticket:
                mine = await self.store.get_ticket(target.name, keys[0].key)
                own = mine.data.get("ticket_id") if mine else None
            await self._link_members(target, group, facts.alert, own)

    async def _grouped_due(self, route: Route, target: Target, alert: Alert, event: Event, facts: EventFacts,
                           keys: list[TicketKey], group: GroupKey) -> None:
        """A timer of a grouped alert. A held resolve's (the source event is its Resolved): its own incident
        first, then the group hears the resolve. A maintenance window's end (the source is the Fired it
        deferred): the group releases the alert first (it may open the parent, or take the alert in as a
        note: then its own key opens nothing), then its own key decides."""
        if facts.kind is Kind.RESOLVED:
            for key in keys:
                await self._apply(route, target, alert, event, facts, key)
            if not await self._noise_of(target, keys, facts.alert, "held", facts.fired_at):
                await self._group_step(route, target, alert, event, facts, group)
            return
        decision = await self._group_step(route, target, alert, event, facts, group,
                                          window=self._window(alert, event.occurred_at), release=True)
        for key in keys:
            await self._apply(route, target, alert, event, facts, key, absorbed=decision.role is Role.NOTE)
        if decision.role.has_ticket and can_link(target):
            mine = await self.store.get_ticket(target.name, keys[0].key)
            await self._link_members(target, group, facts.alert, mine.data.get("ticket_id") if mine else None)

    async def _noise_of(self, target: Target, keys: list[TicketKey], alert: str, what: str,
                        fired_at: str | None = None) -> bool:
        """Whether the alert's own ticket record holds flap state `what` ("flapping", or a "held" resolve of
        the episode fired at `fired_at`) on any of its keys."""
        for key in keys:
            record = await self.store.get_ticket(target.name, key.key)
            noise = (TicketState.from_data(record.data).noise.get(alert) or {}) if record else {}
            if what in noise and (fired_at is None or str(noise[what].get("fired_at", ""))[:19] == fired_at[:19]):
                return True
        return False

    async def _group_step(self, route: Route, target: Target, alert: Alert, event: Event, facts: EventFacts,
                          group: GroupKey, *, window: InWindow | None = None, flapping: bool = False,
                          held: bool = False, release: bool = False) -> GroupDecision:
        """Read the group's record, decide, carry out the parent's action, record; decided again on a conflict.
        `release`: a maintenance window's end for this alert (`release_deferred`), else the event itself."""
        assert route.group is not None
        key = TicketKey(group.key, ())
        marker = step_marker(event.key)
        async with self._key_locks.hold((target.name, group.key)):
            for _ in range(GROUP_RECORD_RETRIES):
                record = await self.store.get_ticket(target.name, group.key)
                data = record.data if record else {}
                state = GroupState.from_data(data) if record else None
                version = record.version if record else None
                closed = record.closed_at if record else None
                if release:
                    decision = release_deferred(facts.alert, state, route.group, window=window)
                else:
                    decision = decide_group(facts, state, route.group, route.policy.on_resolve, window=window,
                                            flapping=flapping, held=held)
                action = decision.parent
                step = data.get("step")
                mine = isinstance(step, Mapping) and step.get("marker") == marker
                if action is Action.NOTHING and mine and state is not None and state.parent.ticket_id:
                    action = Action(step["action"])  # an earlier attempt's step on the parent, outcome unknown
                log.debug("%s group %s %s: %s, parent %s (%s)", target.name, group.key, facts.kind, decision.role,
                          action, decision.reason)
                if action is Action.NOTHING:
                    if (record is None and not release) or (record is not None and decision.state != state):
                        keep = {k: data[k] for k in ("pending", "step") if k in data}
                        if await self._put(target.name, group.key, {**decision.state.to_data(), **keep}, version,
                                           closed) is None:
                            await self._conflict_pause()
                            continue
                    return decision
                incident = self._parent_incident(route, target, alert, event, group, decision.state)
                if action is Action.CREATE:
                    pending = {"pending": data["pending"]} if "pending" in data else {}
                    try:
                        opened = await self._open_incident(target, action, key, incident,
                                                           {**decision.state.to_data(), **pending}, version,
                                                           event.key)
                    except _Busy:
                        # Another delivery (another replica, in a storm) is opening the parent: it takes one
                        # call, so wait here for its outcome rather than put the event off for adopt_after.
                        if not await self._intent_settles(target, group.key, data["pending"]):
                            raise
                        continue
                    if opened is None:
                        await self._conflict_pause()
                        continue
                    ticket, version, outcome = opened
                    new = replace(decision.state, parent=decision.state.parent.with_ticket(ticket.id, ticket.number))
                    if not await self._record_parent(target, group, new, version, event.key):
                        continue
                    log.info("%s: parent %s %s for %s (%s)", target.name, outcome, ticket.number or ticket.id,
                             group.key, decision.reason,
                             extra={"alert_key": alert.correlation_key, "event_key": event.key,
                                    "condition": event.condition, "target": target.name,
                                    "ticket": ticket.number or ticket.id, "ticket_key": group.key,
                                    "outcome": outcome, "subject": incident.summary,
                                    "link": ticket_link(target, ticket)})
                    self.metrics.deliveries.labels(target.name, f"parent_{outcome}").inc()
                    return replace(decision, state=new)
                else:
                    assert state is not None and state.parent.ticket_id is not None
                    text = self._parent_note(target, action, facts, alert, decision, marker)
                    version = await self._update_incident(
                        target, action, key, state.parent, incident, decision.state.to_data(), version, closed, text,
                        marker, retrying=(mine and step.get("action") == str(action)) or action is Action.RESOLVE)
                    if version is None:
                        await self._conflict_pause()
                        continue
                    if action is not Action.RESOLVE and can_retitle(target):
                        # The parent's summary counts the storm: keep it current.
                        await self._call(target, "retitle", target.retitle,  # type: ignore[attr-defined]
                                         Ticket(id=state.parent.ticket_id, number=state.parent.ticket_number),
                                         incident.summary)
                    new, outcome = decision.state, str(action)
                if await self._put(target.name, group.key, new.to_data(), version, closed) is None:
                    log.info("%s: group record %s changed during a %s call; deciding again", target.name,
                             group.key, action)
                    await self._conflict_pause()
                    continue
                log.info("%s: parent %s %s for %s (%s)", target.name, outcome,
                         new.parent.ticket_number or new.parent.ticket_id, group.key, decision.reason)
                self.metrics.deliveries.labels(target.name, f"parent_{outcome}").inc()
                return replace(decision, state=new)
        raise _Busy(f"{target.name}: group record {group.key} kept changing under this delivery", BUSY_RETRY_SECONDS)

    async def _conflict_pause(self) -> None:
        """A short random pause after a group record conflict: replicas in a storm write one record."""
        await asyncio.sleep(GROUP_CONFLICT_PAUSE_SECONDS * self.rng())

    async def _intent_settles(self, target: Target, key: str, pending: Mapping[str, Any]) -> bool:
        """Whether another delivery's intent to open a group's parent is settled (recorded or dropped) within
        the target's call timeout: True, decide again; False, it hangs (leave it to adopt_after)."""
        give_up = self._clock() + self.config.targets[target.name].timeout_seconds
        while self._clock() < give_up:
            await asyncio.sleep(GROUP_INTENT_POLL_SECONDS)
            record = await self.store.get_ticket(target.name, key)
            now = record.data.get("pending") if record else None
            if now != pending:
                return True
        return False

    async def _record_parent(self, target: Target, group: GroupKey, new: GroupState, version: str,
                             event_key: str) -> bool:
        """Record the parent just opened. Should the record have changed meanwhile (another replica recorded a
        member's ticket) while it still holds this delivery's intent, the parent goes into what it holds now:
        a ticket opened is never forgotten for a conflict. False: the intent is no longer ours (decide again)."""
        data = new.to_data()
        parent = new.parent
        for _ in range(RECORD_RETRIES):
            if await self._put(target.name, group.key, data, version, None) is not None:
                return True
            record = await self.store.get_ticket(target.name, group.key)
            pending = record.data.get("pending") if record else None
            if record is None or not isinstance(pending, Mapping) or pending.get("event") != event_key \
                    or pending.get("owner") != self.owner:
                return False
            latest = GroupState.from_data(record.data)
            merged = replace(latest, parent=replace(latest.parent, ticket_id=parent.ticket_id,
                                                    ticket_number=parent.ticket_number, open=True,
                                                    generation=max(1, latest.parent.generation)))
            data = {**merged.to_data(), **({"step": record.data["step"]} if "step" in record.data else {})}
            version = record.version  # type: ignore[assignment]
        return False

    async def _link_members(self, target: Target, group: GroupKey, alert: str, ticket_id: str | None) -> None:
        async with self._key_locks.hold((target.name, group.key)):
            await self._link_members_once(target, group, alert, ticket_id)

    async def _link_members_once(self, target: Target, group: GroupKey, alert: str, ticket_id: str | None) -> None:
        """Record this alert's own incident in its group, and link every member's incident not yet linked
        to the parent. Whichever of a member's delivery and the parent's opening writes the record last
        sees both tickets (the record's version orders them), so each member is linked once both exist."""
        for _ in range(GROUP_RECORD_RETRIES):
            record = await self.store.get_ticket(target.name, group.key)
            if record is None:
                return
            state = GroupState.from_data(record.data)
            known = with_member_ticket(state, alert, ticket_id)
            due = links_due(known)
            if not due and known == state:
                return
            assert known.parent.ticket_id is not None or not due
            parent = Ticket(id=str(known.parent.ticket_id), number=known.parent.ticket_number)
            for member in due:
                child = Ticket(id=str(known.members[member].ticket_id))
                await self._call(target, "link", target.link, child, parent)  # type: ignore[attr-defined]
                self.metrics.deliveries.labels(target.name, "link").inc()
            keep = {k: record.data[k] for k in ("pending", "step") if k in record.data}
            if await self._put(target.name, group.key, {**with_linked(known, due).to_data(), **keep},
                               record.version, record.closed_at) is not None:
                if due:
                    log.info("%s: linked %d incident(s) to parent %s of %s", target.name, len(due),
                             parent.number or parent.id, group.key)
                return
            await self._conflict_pause()
        raise _Busy(f"{target.name}: group record {group.key} kept changing while linking", BUSY_RETRY_SECONDS)

    def _parent_incident(self, route: Route, target: Target, alert: Alert, event: Event, group: GroupKey,
                         state: GroupState) -> Incident:
        """The parent incident: the route's fields and the alert's severity, a summary counting the storm."""
        cfg = self.config.targets[target.name]
        rendered = render_incident(alert, target=target, correlation_key=group.key, configuration_items=(),
                                   fields=route.fields, severity_fields=cfg.severity)
        spec = route.group
        assert spec is not None
        later = ("linked child incidents, at most "
                 f"{spec.max_children} per window, then work notes here") if spec.children == "link" else \
            "work notes here, with no ticket of their own"
        by = ", ".join(f"{k} {v or '(none)'}" for k, v in group.values.items())
        description = (
            f"Storm: {state.count} Azure Monitor alerts with {by} fired in the window from {group.window_start} "
            f"({spec.window_seconds:g} s). The first {spec.open_parent_after} have incidents of their own, linked "
            f"to this one where the target can link; later alerts are {later}. This incident resolves when "
            "every alert of the window has resolved.\n\n"
            f"The alert that opened it:\n{rendered.description}"
        )
        limits = target.limits
        return replace(rendered, summary=truncate(parent_summary(group, state), limits.summary),
                       description=truncate(description, limits.description), configuration_items=(),
                       resource_ids=())

    def _parent_note(self, target: Target, action: Action, facts: EventFacts, alert: Alert,
                     decision: GroupDecision, marker: str) -> str:
        st = decision.state
        if action is Action.RESOLVE:
            text = f"Resolved automatically: every one of the {st.count} alerts of this storm has resolved."
        else:
            title = str(template_context(alert)["title"])
            again = "fired again" in decision.reason
            text = joined_note(st.count, title, alert.essentials.fired_at, alert.essentials.alert_id,
                               decision.role, again=again)
            if action is Action.REOPEN:
                text = "Reopened: " + text
        limit = target.limits.note
        return f"{truncate(text, max(0, limit - len(marker) - 1))}\n{marker}"

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
        by its worker's death, for that worker's call timeout, and is looked for at once). None: the record
        changed meanwhile (decide again). `searched`: the key had no record and a search of the target by it
        just found nothing, so no earlier attempt can have created it and the find is skipped.
        """
        pending = data.get("pending")
        if pending:
            cfg = self.config.targets[target.name]
            left = create_intent_wait(pending, now=self.wall_clock(), event_key=event_key, owner=self.owner,
                                      call_timeout=cfg.timeout_seconds, adopt_after=self.settings.adopt_after(cfg))
            if left > 0:
                if dead_writers_intent(pending, event_key=event_key, owner=self.owner):
                    # A crash mid-create: what the dead writer sent has usually landed by the time its
                    # event comes back, so look before waiting out the writer's call timeout.
                    found = await self._find_open(target, incident)
                    if found is not None:
                        return found, version, "adopt"
                raise _Busy(f"{target.name}: another delivery is opening the incident for {key.key}", left)
        base = {k: v for k, v in data.items() if k != "pending"}
        intent = {**base, "pending": create_intent(incident.correlation_key, since=self.wall_clock(),
                                                   event_key=event_key, owner=self.owner)}
        intent_version = await self._put(target.name, key.key, intent, version, None)
        if intent_version is None:
            return None
        creating = False
        try:
            found = None if searched else await self._find_open(target, incident)
            if found is not None:
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

    async def _find_open(self, target: Target, incident: Incident) -> Ticket | None:
        """The open incident a crashed delivery created with this correlation key, to adopt (None: none)."""
        found = await self._call(target, "find", target.find, incident)
        if found is None or found.resolved:
            return None
        log.info("%s: adopted %s for %s (created before a crash, not recorded)", target.name,
                 found.number or found.id, incident.correlation_key)
        return found

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
        # A slot is held for the call only, not for the store reads and writes around it: with more
        # deliveries in flight than slots (`capacity`), the target's slots never idle on the store.
        async with self._slots[target.name]:
            if self.tracing is None:
                return await self._call_in_slot(target, call, fn, *args)
            with self.tracing.span(f"{target.name} {call}", "client", {
                "relay.target.name": target.name, "relay.target.kind": getattr(target, "kind", ""),
                "relay.target.call": call,
            }):
                return await self._call_in_slot(target, call, fn, *args)

    async def _call_in_slot(self, target: Target | Forwarder, call: str, fn: Callable[..., Awaitable[_T]],
                            *args: Any) -> _T:
        breaker = self.breakers[target.name]
        await self.rate_limits[target.name].acquire()
        breaker.before_call()
        started = time.perf_counter()
        try:
            result = await fn(*args)
        except TargetError as exc:
            self._trail_call(target, call, args, started, error=exc)
            if exc.status == 429:
                self.rate_limits[target.name].throttled(exc.retry_after)
            if exc.retryable:
                breaker.failed()
            else:
                breaker.succeeded()  # the target answered: it is healthy, the request was wrong
            raise
        except TimeoutError as exc:  # a target's own deadline; targets raise no other transport errors
            self._trail_call(target, call, args, started, error=exc)
            breaker.failed()
            raise TargetError(f"{target.name}: {call} failed: {type(exc).__name__}: {exc}", retryable=True,
                              unanswered=True) from exc
        except BaseException as exc:
            self._trail_call(target, call, args, started, error=exc)
            breaker.released()
            raise
        finally:
            self.metrics.call_seconds.labels(target.name, call).observe(time.perf_counter() - started)
        self._trail_call(target, call, args, started, result=result)
        breaker.succeeded()
        return result

    def circuit_states(self) -> dict[str, str]:
        """Each target's circuit: closed, open or half-open (the status page shows them)."""
        return {name: b.state.name.lower().replace("_", "-") for name, b in self.breakers.items()}

    # -- the alert trail -------------------------------------------------------------------------------

    def _trail_note(self, kind: str, **fields: Any) -> None:
        trail = _TRAIL.get()
        if trail is not None:
            trail.append(TrailEntry(at=self.wall_clock(), kind=kind, **fields))

    def _trail_call(self, target: Target | Forwarder, call: str, args: tuple[Any, ...], started: float, *,
                    result: Any = None, error: BaseException | None = None) -> None:
        """One target call in the trail: its status, latency and the ticket it returned or acted on (and on
        its client span, with tracing on)."""
        if _TRAIL.get() is None and self.tracing is None:
            return
        ticket = result if isinstance(result, Ticket) else next((a for a in args if isinstance(a, Ticket)), None)
        if error is None:
            status, detail = "ok", ""
        elif isinstance(error, TargetError):
            status, detail = (str(error.status) if error.status else "error"), str(error)
        elif isinstance(error, asyncio.CancelledError):
            status, detail = "cancelled", "the call was cut off (deadline, shutdown or a lost lease)"
        else:
            status, detail = "error", f"{type(error).__name__}: {error}"
        if self.tracing is not None:
            self.tracing.annotate({"relay.target.call.status": status,
                                   "relay.ticket.id": (ticket.id or "") if ticket else "",
                                   "relay.ticket.number": (ticket.number or "") if ticket else ""},
                                  error=None if status == "ok" else detail)
        self._trail_note("call", target=target.name, what=call, status=status, detail=detail,
                         latency_ms=(time.perf_counter() - started) * 1000,
                         ticket=(ticket.number or ticket.id) if ticket else "",
                         link=_ticket_link(target, ticket.id, ticket.number) if ticket else "")

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
                    condition=DUE_CONDITION, occurred_at=at, body=source.body, priority=PRIORITY_URGENT,
                    trace_context=source.trace_context)  # its delivery joins the trace of the event that set it
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


def _ticket_link(target: Target | Forwarder, ticket_id: str | None, number: str | None) -> str:
    """The ticket's web address, when its target module knows how to build one (`ticket_link`)."""
    build = getattr(target, "ticket_link", None)
    if build is None or not ticket_id:
        return ""
    try:
        return str(build(Ticket(id=ticket_id, number=number)) or "")
    except Exception:  # a link is a convenience: never fail a delivery over it
        return ""


def _unanswered(exc: BaseException) -> bool:
    """A call that ended without the target's answer (timed out, connection dropped, cancelled): the target
    may have applied it, or may still. Refused connections sent nothing; any answer means it is done."""
    if isinstance(exc, TargetError):
        return exc.unanswered
    return isinstance(exc, TimeoutError | asyncio.CancelledError)


def _describe(failures: list[_Failure]) -> str:
    return "; ".join(f.error or f"{f.target}: failed" for f in failures)[:3900]
