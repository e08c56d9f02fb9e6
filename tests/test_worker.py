"""The delivery worker on a real SQLite store with an in-memory target: lifecycle calls, retries, circuit
breaking, dead letters, replay, crash recovery, ordering, bounded parallelism and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, ClassVar

import pytest

from relay.alerts import parse_alert_json
from relay.delivery.lifecycle import Policy
from relay.delivery.metrics import DeliveryMetrics
from relay.delivery.retry_policy import CircuitState
from relay.delivery.routing import DeliverySettings, RelayConfig, Route, TargetConfig
from relay.delivery.worker import RENEWALS_PER_LEASE, Worker
from relay.store import Event, LeaseLost, StoreUnavailable, TicketRecord
from relay.store.sqlite import SqliteStore
from relay.targets import Incident, TargetError, TextLimits, Ticket
from tests.conftest import load_sample

SUB = "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"
GUID = "11111111-0000-4000-8000-000000000001"
T0 = "2024-05-01T10:00:00Z"
T1 = "2024-05-01T10:05:00Z"
T2 = "2024-05-01T10:20:00Z"


def alert_body(guid: str = GUID, condition: str = "Fired", fired: str = T0, resolved: str | None = None,
               cis: list[str] | None = None) -> bytes:
    doc = load_sample("testaction-metric-static-fired.json")
    e = doc["data"]["essentials"]
    e["alertId"] = f"/subscriptions/{SUB}/providers/Microsoft.AlertsManagement/alerts/{guid}"
    e["monitorCondition"] = condition
    e["firedDateTime"] = fired
    if resolved is not None:
        e["resolvedDateTime"] = resolved
    if cis is not None:
        e["configurationItems"] = cis
    return json.dumps(doc).encode()


def guid(n: int) -> str:
    return f"11111111-0000-4000-8000-{n:012d}"


async def accept(store: SqliteStore, body: bytes) -> Event:
    event = Event.from_alert(parse_alert_json(body), body)
    assert await store.accept(event), "the test accepted the same event twice"
    return event


class FakeTarget:
    """An ITSM in memory: tickets by id, every call recorded, failures and pauses on demand."""

    kind: ClassVar[str] = "fake"
    limits: ClassVar[TextLimits] = TextLimits(summary=160, description=4000, note=4000)
    severity_fields: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, name: str = "itsm") -> None:
        self.name = name
        self.tickets: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []  # (call, correlation key)
        self.fail: dict[str, list[BaseException]] = {}  # call -> exceptions to raise, in turn
        self.gate: asyncio.Event | None = None  # when set up, create waits for it
        self.active = 0
        self.max_active = 0
        self.entered = asyncio.Event()
        self.closed = False

    async def _enter(self, call: str, key: str) -> None:
        self.calls.append((call, key))
        if self.fail.get(call):
            raise self.fail[call].pop(0)
        if call == "create" and self.gate is not None:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.entered.set()
            try:
                await self.gate.wait()
            finally:
                self.active -= 1

    async def find(self, incident: Incident) -> Ticket | None:
        await self._enter("find", incident.correlation_key)
        found = [(tid, t) for tid, t in self.tickets.items() if t["key"] == incident.correlation_key]
        if len(found) > 1:
            raise TargetError("many tickets", retryable=False)
        return Ticket(found[0][0], found[0][0].upper(), found[0][1]["resolved"]) if found else None

    async def create(self, incident: Incident) -> Ticket:
        await self._enter("create", incident.correlation_key)
        tid = f"t{len(self.tickets) + 1}"
        self.tickets[tid] = {"key": incident.correlation_key, "resolved": False, "notes": [],
                             "cis": incident.configuration_items, "summary": incident.summary}
        return Ticket(tid, tid.upper())

    async def note(self, ticket: Ticket, incident: Incident, text: str) -> None:
        await self._enter("note", incident.correlation_key)
        self.tickets[ticket.id]["notes"].append(text)

    async def resolve(self, ticket: Ticket, incident: Incident, text: str) -> None:
        await self._enter("resolve", incident.correlation_key)
        self.tickets[ticket.id]["resolved"] = True
        self.tickets[ticket.id]["notes"].append(text)

    async def reopen(self, ticket: Ticket, incident: Incident, text: str) -> None:
        await self._enter("reopen", incident.correlation_key)
        self.tickets[ticket.id]["resolved"] = False

    async def close(self) -> None:
        self.closed = True

    def count(self, call: str) -> int:
        return sum(1 for c, _ in self.calls if c == call)


class FakeForwarder:
    kind: ClassVar[str] = "forward"

    def __init__(self, name: str = "fwd") -> None:
        self.name = name
        self.bodies: list[bytes] = []

    async def forward(self, body: bytes) -> None:
        self.bodies.append(body)

    async def close(self) -> None:
        pass


class SpyStore:
    """The real store, with every retry delay recorded and then shortened so tests need not wait."""

    def __init__(self, inner: SqliteStore, fail_puts: int = 0) -> None:
        self.inner = inner
        self.delays: list[float] = []
        self.errors: list[str] = []
        self.counted: list[bool] = []
        self.fail_final_puts = fail_puts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def retry_later(self, claim, delay_seconds, error, *, count_attempt=True):  # type: ignore[no-untyped-def]
        self.delays.append(delay_seconds)
        self.errors.append(error)
        self.counted.append(count_attempt)
        await self.inner.retry_later(claim, min(delay_seconds, 0.01), error, count_attempt=count_attempt)

    async def put_ticket(self, record):  # type: ignore[no-untyped-def]
        if self.fail_final_puts and record.data.get("ticket_id"):
            self.fail_final_puts -= 1
            raise StoreUnavailable("simulated crash before the outcome was recorded")
        return await self.inner.put_ticket(record)


def make_config(*routes: Route, targets: dict[str, int] | None = None, **delivery: Any) -> RelayConfig:
    targets = targets or {"itsm": 8}
    settings = DeliverySettings(poll_seconds=0.01, backoff_base_seconds=0.01, backoff_max_seconds=0.05,
                                lease_seconds=30, shutdown_grace_seconds=5)
    return RelayConfig(
        targets={n: TargetConfig(name=n, kind="fake", block={}, timeout_seconds=5, max_concurrency=c)
                 for n, c in targets.items()},
        routes=routes or (Route(target="itsm"),),
        delivery=replace(settings, **delivery),
    )


@pytest.fixture
async def store(tmp_path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "relay.db")
    await s.open()
    yield s
    await s.close()


async def until(predicate: Callable[[], Any], what: str, limit: float = 15.0) -> None:
    """Wait until `predicate()` is true (async predicates allowed). `limit` only guards against a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            pytest.fail(f"gave up waiting: {what}")
        await asyncio.sleep(0.005)


async def drained(store: SqliteStore) -> bool:
    return await store.pending() == 0


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., Any]]:
    workers: list[Worker] = []

    async def start(store: Any, config: RelayConfig, targets: dict[str, Any], **kw: Any) -> Worker:
        worker = Worker(store, config, targets, metrics=DeliveryMetrics(), **kw)
        workers.append(worker)
        await worker.start()
        return worker

    yield start
    for w in workers:
        await w.stop(grace_seconds=1)


def metric(worker: Worker, name: str, **labels: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# -- lifecycle through the worker ----------------------------------------------------------------------

async def test_fired_creates_one_incident_and_resolved_resolves_it(store, running):
    target = FakeTarget()
    await accept(store, alert_body())
    await accept(store, alert_body(condition="Resolved", resolved=T1))
    worker = await running(store, make_config(), {"itsm": target})
    await until(lambda: drained(store), "both events delivered")
    assert [c for c, _ in target.calls] == ["find", "create", "resolve"]
    [ticket] = target.tickets.values()
    assert ticket["resolved"] and ticket["key"] == GUID
    assert T1 in ticket["notes"][-1], "the resolve note must carry resolvedDateTime"
    record = await store.get_ticket("itsm", GUID)
    assert record.data["ticket_id"] == "t1" and record.data["open"] is False
    assert metric(worker, "relay_deliveries_total", target="itsm", outcome="create") == 1
    assert metric(worker, "relay_deliveries_total", target="itsm", outcome="resolve") == 1


async def test_resolved_accepted_before_fired_opens_no_incident(store, running):
    target = FakeTarget()
    await accept(store, alert_body(condition="Resolved", resolved=T1))
    await accept(store, alert_body())
    await running(store, make_config(), {"itsm": target})
    await until(lambda: drained(store), "both events handled")
    assert target.calls == [] and target.tickets == {}


async def test_refire_after_resolve_opens_a_new_incident_with_its_own_key(store, running):
    target = FakeTarget()
    await accept(store, alert_body())
    await accept(store, alert_body(condition="Resolved", resolved=T1))
    await accept(store, alert_body(fired=T2))
    await running(store, make_config(), {"itsm": target})
    await until(lambda: drained(store), "three events delivered")
    assert [t["key"] for t in target.tickets.values()] == [GUID, f"{GUID}.2"]
    assert [t["resolved"] for t in target.tickets.values()] == [True, False]


async def test_one_incident_per_configuration_item(store, running):
    target = FakeTarget()
    await accept(store, alert_body(cis=["vm-1", "vm-2"]))
    await running(store, make_config(Route(target="itsm", incident_per="configuration_item")), {"itsm": target})
    await until(lambda: drained(store), "event delivered")
    assert sorted(t["cis"] for t in target.tickets.values()) == [("vm-1",), ("vm-2",)]


async def test_unrouted_alert_is_completed_and_counted(store, running):
    from relay.delivery.routing import Match

    target = FakeTarget()
    await accept(store, alert_body())
    worker = await running(store, make_config(Route(target="itsm", match=Match(severity=("Sev0",)))),
                           {"itsm": target})
    await until(lambda: drained(store), "event completed")
    assert target.calls == []
    assert metric(worker, "relay_unrouted_alerts_total") == 1


# -- retries, backoff, circuit breaker, dead letters -------------------------------------------------

async def test_retry_honours_retry_after_and_then_delivers(store, running):
    target = FakeTarget()
    target.fail["create"] = [TargetError("429 too many", retryable=True, retry_after=7.5, status=429)]
    spy = SpyStore(store)
    await accept(store, alert_body())
    await running(spy, make_config(), {"itsm": target})
    await until(lambda: drained(store), "event delivered after the retry")
    assert spy.delays and spy.delays[0] >= 7.5, f"Retry-After 7.5 not honoured: {spy.delays}"
    assert target.count("create") == 2 and len(target.tickets) == 1


async def test_backoff_is_exponential_with_full_jitter_up_to_the_cap(store, running):
    target = FakeTarget()
    target.fail["find"] = [TargetError("503", retryable=True, status=503) for _ in range(5)]
    spy = SpyStore(store)
    await accept(store, alert_body())
    config = make_config(backoff_base_seconds=0.5, backoff_max_seconds=3, circuit_failures=100)
    await running(spy, config, {"itsm": target}, rng=lambda: 1.0)  # the jitter's top: the ceiling itself
    await until(lambda: drained(store), "event delivered after five failures")
    assert spy.delays == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_jitter_draws_below_the_ceiling(store, running):
    target = FakeTarget()
    target.fail["find"] = [TargetError("503", retryable=True, status=503)]
    spy = SpyStore(store)
    await accept(store, alert_body())
    await running(spy, make_config(backoff_base_seconds=4, backoff_max_seconds=60), {"itsm": target},
                  rng=lambda: 0.25)
    await until(lambda: drained(store), "event delivered")
    assert spy.delays == [1.0]


async def test_events_past_the_attempt_limit_become_dead_letters_with_the_last_error(store, running):
    target = FakeTarget()
    target.fail["find"] = [TargetError(f"HTTP 503 number {i}", retryable=True, status=503) for i in range(10)]
    await accept(store, alert_body())
    worker = await running(store, make_config(max_attempts=3, circuit_failures=100), {"itsm": target})
    await until(lambda: drained(store), "event given up")
    [dead] = await store.dead_letters()
    assert dead.attempts == 3
    assert "HTTP 503 number 2" in dead.error and "after 3 attempts" in dead.error
    assert metric(worker, "relay_dead_letters_total", reason="attempts_exhausted") == 1


async def test_event_whose_leases_keep_ending_without_an_outcome_is_dead_lettered(store, running):
    # Three leases that expired unanswered (as if the relay died delivering it each time).
    await accept(store, alert_body())
    for _ in range(3):
        assert len(await store.claim(10, lease_seconds=0.0)) == 1
    target = FakeTarget()
    worker = await running(store, make_config(max_attempts=3), {"itsm": target})
    await until(lambda: drained(store), "event given up")
    [dead] = await store.dead_letters()
    assert "without an outcome" in dead.error
    assert target.calls == [], "an event that keeps killing deliveries must not be tried again"
    assert metric(worker, "relay_dead_letters_total", reason="attempts_exhausted") == 1


async def test_non_retryable_failure_is_dead_lettered_at_once_and_the_alert_moves_on(store, running):
    target = FakeTarget()
    target.fail["create"] = [TargetError("HTTP 400: invalid assignment group", retryable=False, status=400)]
    await accept(store, alert_body())
    await accept(store, alert_body(condition="Resolved", resolved=T1))
    worker = await running(store, make_config(), {"itsm": target})
    await until(lambda: drained(store), "both events handled")
    [dead] = await store.dead_letters()
    assert dead.attempts == 1 and "invalid assignment group" in dead.error
    assert dead.event.condition == "Fired"
    assert target.tickets == {}
    assert metric(worker, "relay_dead_letters_total", reason="non_retryable") == 1


async def test_replayed_dead_letter_is_delivered(store, running):
    target = FakeTarget()
    target.fail["create"] = [TargetError("HTTP 403: missing role", retryable=False, status=403)]
    await accept(store, alert_body())
    await running(store, make_config(), {"itsm": target})
    await until(lambda: drained(store), "event dead-lettered")
    assert len(await store.dead_letters()) == 1 and target.tickets == {}
    assert await store.replay(None) == 1  # the role was granted; an operator replays
    await until(lambda: drained(store), "replayed event delivered")
    assert len(target.tickets) == 1 and await store.dead_letters() == []


async def test_circuit_opens_after_repeated_failures_and_a_probe_closes_it(store, running):
    now = [1000.0]
    target = FakeTarget()
    target.fail["find"] = [TargetError("HTTP 502", retryable=True, status=502) for _ in range(2)]
    for n in range(3):
        await accept(store, alert_body(guid=guid(n)))
    config = make_config(circuit_failures=2, circuit_open_seconds=60, max_attempts=1000)
    spy = SpyStore(store)
    worker = await running(spy, config, {"itsm": target}, clock=lambda: now[0])
    breaker = worker.breakers["itsm"]
    await until(lambda: breaker.state is CircuitState.OPEN, "circuit open")
    await until(lambda: metric(worker, "relay_deliveries_total", target="itsm", outcome="circuit_open") >= 5,
                "deliveries refused while open")
    assert max(spy.delays) >= 59, "a refused delivery comes back when the circuit may probe again"
    assert target.count("find") == 2, "an open circuit must not call the target"
    assert metric(worker, "relay_circuit_state", target="itsm") == 1
    now[0] += 61  # the open period is over: one probe goes through, succeeds, and closes the circuit
    await until(lambda: drained(store), "all events delivered after the circuit closed")
    assert breaker.state is CircuitState.CLOSED
    assert metric(worker, "relay_circuit_state", target="itsm") == 0
    assert len(target.tickets) == 3


async def test_failure_of_one_fanout_target_retries_without_repeating_the_other(store, running):
    good, bad = FakeTarget("good"), FakeTarget("bad")
    bad.fail["create"] = [TargetError("HTTP 503", retryable=True, status=503)]
    fwd = FakeForwarder()
    routes = (Route(target="good", continue_=True), Route(target="bad", continue_=True), Route(target="fwd"))
    config = make_config(*routes, targets={"good": 4, "bad": 4, "fwd": 4})
    body = alert_body()
    await accept(store, body)
    await running(store, config, {"good": good, "bad": bad, "fwd": fwd})
    await until(lambda: drained(store), "event delivered to every target")
    assert good.count("create") == 1 and bad.count("create") == 2
    assert fwd.bodies == [body], "the forwarder must get the body once, byte for byte"


# -- exactly one incident ------------------------------------------------------------------------------

async def test_ticket_created_before_a_crash_is_found_and_adopted(store, running):
    target = FakeTarget()
    target.tickets["t9"] = {"key": GUID, "resolved": False, "notes": [], "cis": (), "summary": "before crash"}
    await accept(store, alert_body())
    worker = await running(store, make_config(), {"itsm": target})
    await until(lambda: drained(store), "event delivered")
    assert target.count("create") == 0 and len(target.tickets) == 1
    assert (await store.get_ticket("itsm", GUID)).data["ticket_id"] == "t9"
    assert metric(worker, "relay_deliveries_total", target="itsm", outcome="adopt") == 1


async def test_crash_between_create_and_record_still_gives_exactly_one_incident(store, running):
    target = FakeTarget()
    await accept(store, alert_body())
    await accept(store, alert_body(condition="Resolved", resolved=T1))
    crashing = SpyStore(store, fail_puts=1)
    first = await running(crashing, make_config(lease_seconds=0.3), {"itsm": target})
    await until(lambda: target.count("create") == 1, "the first process created the incident")
    await until(lambda: crashing.fail_final_puts == 0, "the first process failed to record it")
    await first.stop(grace_seconds=0)  # the process dies; its lease on the event runs out
    later = [0.0]
    await running(store, make_config(lease_seconds=0.3), {"itsm": target},
                  wall_clock=lambda: 10_000_000_000.0 + later[0])  # long after the crashed intent
    await until(lambda: drained(store), "both events delivered by the restarted worker")
    assert target.count("create") == 1, f"duplicate incident: {target.calls}"
    [ticket] = target.tickets.values()
    assert ticket["resolved"]


class HungCreateTarget(FakeTarget):
    """Its first create gets no answer in time (the relay sees a timeout) but lands a moment later."""

    def __init__(self, lands_after: float) -> None:
        super().__init__()
        self.lands_after = lands_after
        self.landed: asyncio.Task[None] | None = None

    async def create(self, incident: Incident) -> Ticket:
        if self.landed is not None:
            return await super().create(incident)
        self.calls.append(("create", incident.correlation_key))

        async def land() -> None:
            await asyncio.sleep(self.lands_after)
            self.tickets["hung"] = {"key": incident.correlation_key, "resolved": False, "notes": [], "cis": (),
                                    "summary": incident.summary}

        self.landed = asyncio.create_task(land())
        raise TargetError("itsm: POST /incident timed out after 5s", retryable=True, unanswered=True)


async def test_create_without_an_answer_is_searched_for_after_the_adopt_wait_not_created_again(store, running):
    target = HungCreateTarget(lands_after=0.2)
    await accept(store, alert_body())
    await running(store, make_config(adopt_after_seconds=0.6), {"itsm": target})
    await until(lambda: drained(store), "event delivered")
    await until(lambda: target.landed is not None and target.landed.done(), "the hung create landed")
    assert len(target.tickets) == 1, f"a create that timed out and then landed was sent again: {target.calls}"
    assert (await store.get_ticket("itsm", GUID)).data["ticket_id"] == "hung"


async def test_a_create_that_reached_no_target_drops_the_intent_and_is_retried_without_waiting(store, running):
    target = FakeTarget()  # e.g. a refused connection: nothing was sent, so nothing can land later
    target.fail["create"] = [TargetError("itsm: POST /incident failed: ClientConnectorError", retryable=True)]
    spy = SpyStore(store)
    await accept(store, alert_body())
    await running(spy, make_config(lease_seconds=30), {"itsm": target})
    await until(lambda: drained(store), "event delivered by the next attempt, not after the 30 s lease")
    assert target.count("create") == 2 and len(target.tickets) == 1
    assert max(spy.delays) < 1, f"the retry waited out the lease: {spy.delays}"


async def test_a_bare_timeout_from_a_create_counts_as_unanswered_and_keeps_the_intent(store, running):
    target = FakeTarget()
    target.fail["create"] = [TimeoutError()]
    spy = SpyStore(store)
    await accept(store, alert_body())
    # The defaults: no adopt_after_seconds, so the wait is 6 x the target's timeout_seconds (5 here),
    # whatever the lease.
    await running(spy, make_config(lease_seconds=300), {"itsm": target})
    await until(lambda: len(spy.delays) >= 2, "the event retried twice")
    assert "pending" in (await store.get_ticket("itsm", GUID)).data, "the intent was dropped"
    assert 25 < spy.delays[1] <= 30, f"the retry did not wait 6 x timeout_seconds (30 s) to adopt: {spy.delays}"
    assert target.count("create") == 1


async def test_the_adopt_wait_is_its_own_setting_not_the_lease(store, running):
    target = FakeTarget()
    target.fail["create"] = [TimeoutError()]
    spy = SpyStore(store)
    await accept(store, alert_body())
    await running(spy, make_config(lease_seconds=300, adopt_after_seconds=90), {"itsm": target})
    await until(lambda: len(spy.delays) >= 2, "the event retried twice")
    assert 85 < spy.delays[1] <= 90, f"the retry did not wait adopt_after_seconds (90 s): {spy.delays}"


async def test_two_workers_on_one_store_open_one_incident_for_a_shared_key(store, running):
    target = FakeTarget()
    target.gate = asyncio.Event()
    route = Route(target="itsm", incident_per="configuration_item", policy=Policy(on_repeat="note"))
    await accept(store, alert_body(guid=guid(1), cis=["vm-1"]))
    spy = SpyStore(store)
    config = make_config(route, targets={"itsm": 1})
    first = await running(spy, config, {"itsm": target})
    await until(lambda: target.entered.is_set(), "one worker is creating")
    first.begin_shutdown()  # it claims nothing more, so the second alert goes to the other worker
    await accept(store, alert_body(guid=guid(2), cis=["vm-1"], fired=T1))
    await running(spy, config, {"itsm": target})
    await until(lambda: any("opening the incident" in e for e in spy.errors), "the other one waits")
    target.gate.set()
    await until(lambda: drained(store), "both alerts delivered")
    assert target.count("create") == 1
    [ticket] = target.tickets.values()
    assert len(ticket["notes"]) == 1, "the second alert on the CI must be a note, not an incident"


# -- order, parallelism, shutdown -------------------------------------------------------------------------

async def test_events_of_one_alert_are_applied_in_order_while_alerts_run_in_parallel(store, running):
    target = FakeTarget()
    for n in range(4):
        await accept(store, alert_body(guid=guid(n)))
        await accept(store, alert_body(guid=guid(n), condition="Resolved", resolved=T1))
        await accept(store, alert_body(guid=guid(n), fired=T2))
    await running(store, make_config(), {"itsm": target})
    await until(lambda: drained(store), "all events delivered")
    for n in range(4):
        key = guid(n)
        calls = [c for c, k in target.calls if k.split(".")[0] == key]
        assert calls == ["find", "create", "resolve", "find", "create"], f"{key}: {calls}"


async def test_parallel_deliveries_are_bounded_per_target(store, running):
    target = FakeTarget()
    target.gate = asyncio.Event()
    for n in range(6):
        await accept(store, alert_body(guid=guid(n)))
    # The worker could claim 16 at once (twice the slots, the other target's count too); this target
    # takes 2 calls at a time.
    config = make_config(targets={"itsm": 2, "other": 6})
    await running(store, config, {"itsm": target, "other": FakeTarget("other")})
    await until(lambda: target.active == 2, "two deliveries in flight")
    for _ in range(20):  # let the loop run: a third must not get in
        await asyncio.sleep(0)
    assert target.active == 2
    target.gate.set()
    await until(lambda: drained(store), "all delivered")
    assert target.max_active == 2 and len(target.tickets) == 6


async def test_a_call_slot_is_held_for_the_call_only_so_store_work_goes_on_beside_it(store, running):
    """max_concurrency bounds calls, not deliveries: with one slot busy on a hung create, the worker has
    claimed a second alert (twice the slots are in flight) and done its store work up to its own call."""
    target = FakeTarget()
    target.gate = asyncio.Event()
    for n in range(3):
        await accept(store, alert_body(guid=guid(n)))
    reads: list[str] = []
    spy = SpyStore(store)

    async def get_ticket(target_name, key):  # type: ignore[no-untyped-def]
        reads.append(key)
        return await store.get_ticket(target_name, key)

    spy.get_ticket = get_ticket  # type: ignore[method-assign]
    worker = await running(spy, make_config(targets={"itsm": 1}), {"itsm": target})
    assert worker.capacity == 2
    await until(lambda: target.entered.is_set() and len(reads) == 2, "a second delivery reads its record")
    for _ in range(20):
        await asyncio.sleep(0)
    assert target.active == 1 and len(reads) == 2, "one call at a time; a third alert waits for a claim"
    target.gate.set()
    await until(lambda: drained(store), "all delivered")
    assert target.max_active == 1 and len(target.tickets) == 3


async def test_the_worker_yields_to_a_busy_intake_without_stopping(store, running):
    """While intake has many requests in flight and the loop runs late, the worker keeps only an
    eighth of its deliveries in flight; once intake is quiet it goes back to all of them."""
    target = FakeTarget()
    target.gate = asyncio.Event()
    for n in range(12):
        await accept(store, alert_body(guid=guid(n)))
    intake = {"in_flight": 40}

    class Lagging:
        seconds = 1.0

        def start(self) -> None: ...

        async def stop(self) -> None: ...

    worker = Worker(store, make_config(targets={"itsm": 8}), {"itsm": target}, metrics=DeliveryMetrics(),
                    intake_in_flight=lambda: intake["in_flight"])
    worker.loop_lag = Lagging()  # type: ignore[assignment]
    assert worker.capacity == 16
    await worker.start()
    try:
        await until(lambda: target.active == 2, "two deliveries in flight (16 / 8)")
        for _ in range(50):
            await asyncio.sleep(0)
        assert target.active == 2 and len(worker._inflight) == 2
        intake["in_flight"] = 0
        await until(lambda: target.active == 8, "all eight slots busy once intake is quiet")
        target.gate.set()
        await until(lambda: drained(store), "all delivered")
    finally:
        await worker.stop(grace_seconds=1)
    assert len(target.tickets) == 12


async def test_shutdown_releases_work_that_outlives_the_grace_period(store, running):
    target = FakeTarget()
    target.gate = asyncio.Event()  # never set: the call hangs
    await accept(store, alert_body())
    worker = await running(store, make_config(), {"itsm": target})
    await until(lambda: target.entered.is_set(), "delivery in flight")
    await worker.stop(grace_seconds=0.05)
    assert target.closed, "targets are closed at shutdown"
    assert await store.pending() == 1
    claims = await store.claim(10, 30)
    assert len(claims) == 1, "the released event must be claimable at once by the next process"


async def test_shutdown_lets_in_flight_work_finish_within_the_grace_period(store, running):
    target = FakeTarget()
    target.gate = asyncio.Event()
    await accept(store, alert_body())
    worker = await running(store, make_config(), {"itsm": target})
    await until(lambda: target.entered.is_set(), "delivery in flight")
    worker.begin_shutdown()
    await accept(store, alert_body(guid=guid(7)))  # arrives during shutdown: left for the next process
    target.gate.set()
    await worker.stop(grace_seconds=5)
    assert len(target.tickets) == 1
    assert await store.pending() == 1, "no new claims after shutdown began"


async def test_unexpected_error_in_a_target_is_retried_then_dead_lettered(store, running):
    target = FakeTarget()
    target.fail["find"] = [KeyError("a bug in the target") for _ in range(5)]
    await accept(store, alert_body())
    await running(store, make_config(max_attempts=2), {"itsm": target})
    await until(lambda: drained(store), "event given up")
    [dead] = await store.dead_letters()
    assert dead.attempts == 2 and "unexpected KeyError" in dead.error


# -- short leases, outcomes recorded through store blips, bounces and age ---------------------------------


class SlowTarget(FakeTarget):
    """Its creates take `seconds`: longer than a short lease."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def create(self, incident: Incident) -> Ticket:
        await asyncio.sleep(self.seconds)
        return await super().create(incident)


class RenewSpy(SpyStore):
    def __init__(self, inner: SqliteStore) -> None:
        super().__init__(inner)
        self.renewals = 0
        self.lose_lease = False

    async def renew(self, claim, lease_seconds):  # type: ignore[no-untyped-def]
        self.renewals += 1
        if self.lose_lease:
            raise LeaseLost("taken over")
        await self.inner.renew(claim, lease_seconds)


async def test_a_delivery_longer_than_its_lease_renews_it_and_no_other_worker_takes_the_event(store, running):
    target = SlowTarget(seconds=1.5)
    await accept(store, alert_body())
    spy = RenewSpy(store)
    await running(spy, make_config(lease_seconds=0.6), {"itsm": target})
    other = FakeTarget("itsm")
    await until(lambda: target.count("find") == 1, "the first worker started delivering")
    await running(store, make_config(lease_seconds=0.6), {"itsm": other})  # a second replica, polling
    await until(lambda: drained(store), "event delivered")
    assert spy.renewals >= 3, f"a 1.5 s delivery under a 0.6 s lease must renew it (renewed {spy.renewals}x)"
    assert other.calls == [], "another worker claimed an event whose delivery was still running"
    assert len(target.tickets) == 1


async def test_a_lost_lease_stops_the_delivery_and_records_nothing(store, running):
    target = SlowTarget(seconds=5)
    await accept(store, alert_body())
    spy = RenewSpy(store)
    spy.lose_lease = True
    # A near-zero adopt_after_seconds: a re-claim of the event searches at once rather than recording a wait
    # for the create intent the cut-off delivery left (that wait is a later delivery's outcome, not this one's).
    await running(spy, make_config(lease_seconds=0.3, adopt_after_seconds=0.001), {"itsm": target})
    await until(lambda: spy.renewals >= 1, "the worker tried to renew")
    await asyncio.sleep(0.3)
    assert target.tickets == {}, "the delivery went on after its lease was lost"
    assert spy.delays == [], "a worker that lost its lease must not record an outcome"


def test_the_default_lease_is_short_and_renewed_every_third_of_it():
    defaults = DeliverySettings()
    assert defaults.lease_seconds == 30, "after a crash, events wait at most about one lease"
    assert RENEWALS_PER_LEASE == 3
    assert defaults.deadline_seconds > defaults.lease_seconds, "the deadline is its own setting, not the lease's"


class FlakyOutcomeStore(SpyStore):
    """complete() fails `n` times with StoreUnavailable (a storage blip), then works."""

    def __init__(self, inner: SqliteStore, n: int) -> None:
        super().__init__(inner)
        self.failures_left = n
        self.completes = 0

    async def complete(self, claim):  # type: ignore[no-untyped-def]
        self.completes += 1
        if self.failures_left:
            self.failures_left -= 1
            raise StoreUnavailable("simulated storage blip")
        await self.inner.complete(claim)


async def test_an_outcome_write_that_fails_in_a_store_blip_is_retried_not_left_to_the_lease(store, running):
    target = FakeTarget()
    await accept(store, alert_body())
    spy = FlakyOutcomeStore(store, n=2)
    await running(spy, make_config(lease_seconds=30), {"itsm": target})
    await until(lambda: drained(store), "the event completed after the blip, not after the 30 s lease", limit=10)
    assert spy.completes == 3 and target.count("create") == 1


async def test_circuit_open_bounces_do_not_use_up_attempts(store, running):
    now = [1000.0]
    target = FakeTarget()
    target.fail["find"] = [TargetError("HTTP 503", retryable=True, status=503)]
    for n in range(4):
        await accept(store, alert_body(guid=guid(n)))
    # Three attempts only: before, every bounce off the open circuit used one up and these were dead-lettered.
    config = make_config(circuit_failures=1, circuit_open_seconds=60, max_attempts=3)
    spy = SpyStore(store)
    worker = await running(spy, config, {"itsm": target}, clock=lambda: now[0])
    await until(lambda: spy.counted.count(False) >= 9, "events bounced off the open circuit many times")
    assert await store.dead_letters() == []
    now[0] += 61
    await until(lambda: drained(store), "all delivered once the circuit closed")
    assert await store.dead_letters() == [] and len(target.tickets) == 4
    assert metric(worker, "relay_deliveries_total", target="itsm", outcome="circuit_open") >= 9


async def test_an_event_failing_past_max_age_becomes_a_dead_letter_whatever_its_attempts(store, running):
    target = FakeTarget()
    target.fail["find"] = [TargetError("HTTP 503", retryable=True, status=503) for _ in range(3)]
    await accept(store, alert_body())
    later = [0.0]
    worker = await running(store, make_config(max_attempts=1000, circuit_failures=100), {"itsm": target},
                           wall_clock=lambda: time.time() + later[0])
    await until(lambda: target.count("find") >= 1, "first attempt")
    later[0] = DeliverySettings().max_age_seconds + 60  # a day passes with the target down
    await until(lambda: store.dead_letters(), "dead-lettered by age")
    [dead] = await store.dead_letters()
    assert "max_age_seconds" in dead.error and dead.attempts < 5
    assert metric(worker, "relay_dead_letters_total", reason="too_old") == 1


async def test_a_create_cut_off_by_its_workers_death_is_adopted_after_one_call_timeout_not_adopt_after(
        store, running):
    # A process died mid-create (SIGKILL): its intent names the event and its owner; the create landed.
    target = FakeTarget()
    target.tickets["t9"] = {"key": GUID, "resolved": False, "notes": [], "cis": (), "summary": "s"}
    event = await accept(store, alert_body())
    since = time.time() - 6  # the call timeout (5 s here) has passed, adopt_after (6 x 5 s) has not
    await store.put_ticket(TicketRecord("itsm", GUID, {"pending": {
        "since": since, "correlation_key": GUID, "event": event.key, "owner": "a-dead-process"}}))
    spy = SpyStore(store)
    worker = await running(spy, make_config(), {"itsm": target})
    await until(lambda: drained(store), "the restarted worker adopted the crashed create", limit=10)
    assert spy.delays == [], f"the restarted worker waited for the dead writer's intent: {spy.delays}"
    assert target.count("create") == 0
    assert metric(worker, "relay_deliveries_total", target="itsm", outcome="adopt") == 1


def at_default_call_timeout(config: RelayConfig) -> RelayConfig:
    """`config` with every target at the default `timeout_seconds` (30 s), as a user gets it."""
    return replace(config, targets={n: replace(t, timeout_seconds=TargetConfig("x", "fake", {}).timeout_seconds)
                                    for n, t in config.targets.items()})


async def crashed_mid_create(store: SqliteStore) -> None:
    """The store as a SIGKILL just after the create intent's commit leaves it: the intent, written a moment
    ago for the alert's event by a process that is gone."""
    [event] = await store.events()
    await store.put_ticket(TicketRecord("itsm", GUID, {"pending": {
        "since": time.time(), "correlation_key": GUID, "event": event.key, "owner": "a-dead-process"}}))


async def test_a_create_that_landed_before_its_workers_death_is_adopted_at_once_not_after_the_call_timeout(
        store, running):
    # bench/recovery.py: a SIGKILL mid-create left the intent; the create reached the target. The restart
    # must not leave the acknowledged alert waiting out the dead writer's call timeout (30 s).
    target = FakeTarget()
    target.tickets["t9"] = {"key": GUID, "resolved": False, "notes": [], "cis": (), "summary": "s"}
    await accept(store, alert_body())
    await crashed_mid_create(store)
    spy = SpyStore(store)
    worker = await running(spy, at_default_call_timeout(make_config()), {"itsm": target})
    await until(lambda: drained(store), "the restarted worker adopted the crashed create", limit=10)
    assert spy.delays == [], f"the restarted worker put the event off instead of adopting at once: {spy.delays}"
    assert target.count("create") == 0, f"a create that had landed was sent again: {target.calls}"
    assert (await store.get_ticket("itsm", GUID)).data["ticket_id"] == "t9"
    assert metric(worker, "relay_deliveries_total", target="itsm", outcome="adopt") == 1


async def test_a_crashed_create_not_found_at_the_restart_still_waits_the_default_call_timeout(store, running):
    # Nothing under the key yet: the dead writer's create may be on its way (sent, not yet applied), so the
    # restart looks once and then respects the intent for the writer's call timeout (30 s by default).
    target = FakeTarget()
    await accept(store, alert_body())
    await crashed_mid_create(store)
    spy = SpyStore(store)
    await running(spy, at_default_call_timeout(make_config()), {"itsm": target})
    await until(lambda: spy.delays, "the event was put back to wait")
    assert 25 < spy.delays[0] <= 30, f"the dead writer's intent was not held for the call timeout: {spy.delays}"
    assert target.count("find") >= 1 and target.count("create") == 0, target.calls


async def test_a_live_intent_of_another_event_on_a_shared_key_still_waits_adopt_after(store, running):
    target = FakeTarget()
    await accept(store, alert_body())
    since = time.time() - 6
    await store.put_ticket(TicketRecord("itsm", GUID, {"pending": {
        "since": since, "correlation_key": GUID, "event": "another-event", "owner": "a-live-replica"}}))
    spy = SpyStore(store)
    await running(spy, make_config(), {"itsm": target})
    await until(lambda: spy.delays, "the event was put back to wait")
    assert spy.delays[0] > 20, f"an intent another delivery may still be acting on was not respected: {spy.delays}"
    assert target.calls == []
