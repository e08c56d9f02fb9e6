"""Idempotent steps and store-loss recovery through the worker, per target, against the vendor fakes.

A note, resolve or reopen whose write lands but whose answer is lost (`reset_after`) is retried; the
retry reads the ticket first and changes it no more. A fresh store against a target that holds open
tickets resolves them on Resolved and adopts them on Fired instead of creating twins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from relay.delivery.lifecycle import Policy, step_marker
from relay.delivery.routing import Route
from relay.store.sqlite import SqliteStore
from relay.targets import bmc_helix, request_tracker, servicenow
from tests.fakes.bmc_helix import FakeBmcHelix
from tests.fakes.request_tracker import FakeRequestTracker
from tests.fakes.servicenow import FakeServiceNow
from tests.test_worker import GUID, T1, T2, accept, alert_body, drained, guid, make_config, metric, until

QUEUE = "Azure Alerts"
CUSTOMER = {"First_Name": "Allen", "Last_Name": "Allbrook", "Company": "Calbro Services"}
CORR = "Vendor Ticket Number"


@dataclass
class Vendor:
    """One fake ITSM and how to build its target, find the step calls, seed and inspect its tickets."""

    kind: str
    fake: Any
    build: Callable[[], Any]
    step_path: dict[str, tuple[str, str]]  # step -> (path fragment, method) of the call that applies it
    counted: dict[str, Callable[[], int]]  # step -> how many times the ticket changed by it
    seed: Callable[[str, bool], str]  # (correlation key, open) -> ticket id
    status_of: Callable[[str], bool]  # ticket id -> open?
    notes_of: Callable[[str], list[str]]  # ticket id -> note texts the relay wrote
    tickets_with: Callable[[str], list[str]]  # correlation key -> ticket ids

    def writes(self, step: str) -> int:
        """How many times the step changed a ticket: the writes the fake received, or its own count
        where a repeated write changes nothing (aiohttp itself resends an idempotent PUT once when a
        reused connection drops; Helix then sets the same values again)."""
        if step in self.counted:
            return self.counted[step]()
        path, method = self.step_path[step]
        return len(self.fake.calls_to(path, method))


def rt_vendor(fake: FakeRequestTracker) -> Vendor:
    def seed(key: str, open_: bool) -> str:
        return str(fake.add_ticket(QUEUE, "open" if open_ else "resolved", AzureAlertId=key)["id"])

    return Vendor(
        "request_tracker",
        fake,
        lambda: request_tracker.from_config("itsm", {
            "kind": "request_tracker", "base_url": fake.url, "auth": {"type": "token", "token_env": "T"},
            "queue": QUEUE, "ci_binding": "none", "timeout_seconds": 5}, env={"T": fake.token}),
        {step: ("/comment", "POST") for step in ("note", "resolve", "reopen")},
        {},
        seed,
        lambda tid: fake.tickets[int(tid)]["Status"] in ("new", "open", "stalled"),
        lambda tid: list(fake.comments.get(int(tid), [])),
        lambda key: [str(t["id"]) for t in fake.tickets.values() if t["CustomFields"].get("AzureAlertId") == key],
    )


def sn_vendor(fake: FakeServiceNow) -> Vendor:
    def seed(key: str, open_: bool) -> str:
        values = {"state": "2"} if open_ else {"state": "6", "close_code": "x", "close_notes": "y"}
        return fake.add_incident(correlation_id=key, short_description="seeded", **values)["sys_id"]

    def notes(sys_id: str) -> list[str]:
        record = fake.incidents[sys_id]
        return fake.notes(sys_id) + ([record["close_notes"]] if "azure-relay:" in record.get("close_notes", "") else [])

    return Vendor(
        "servicenow",
        fake,
        lambda: servicenow.from_config("itsm", {
            "kind": "servicenow", "base_url": fake.url, "ci_binding": "none", "timeout_seconds": 5,
            "auth": {"type": "basic", "username": fake.username, "password_env": "P"}}, env={"P": fake.password}),
        {step: ("/api/now/table/incident/", "PATCH") for step in ("note", "resolve", "reopen")},
        {},
        seed,
        lambda sys_id: fake.incidents[sys_id]["state"] not in ("6", "7", "8"),
        notes,
        lambda key: [r["sys_id"] for r in fake.incidents.values() if r.get("correlation_id") == key],
    )


def helix_vendor(fake: FakeBmcHelix) -> Vendor:
    def seed(key: str, open_: bool) -> str:
        return fake.add_incident(**{CORR: key, "Status": "Assigned" if open_ else "Resolved"})["Incident Number"]

    return Vendor(
        "bmc_helix",
        fake,
        lambda: bmc_helix.from_config("itsm", {
            "kind": "bmc_helix", "base_url": fake.url, "ci_binding": "none", "timeout_seconds": 5,
            "defaults": CUSTOMER, "auth": {"type": "ar_jwt", "username": fake.username, "password_env": "P"}},
            env={"P": fake.password}),
        {"note": ("HPD:WorkLog", "POST"), "resolve": ("HPD:IncidentInterface/", "PUT"),
         "reopen": ("HPD:IncidentInterface/", "PUT")},
        {step: (lambda: sum(len(v) for v in fake.status_changes.values())) for step in ("resolve", "reopen")},
        seed,
        lambda number: fake.incidents[number]["Status"] in bmc_helix.OPEN_STATUSES,
        lambda number: [t for t in fake.work_log_texts(number)]
        + [v for v in [fake.incidents[number].get("Resolution")] if v],
        lambda key: [n for n, r in fake.incidents.items() if r.get(CORR) == key],
    )


@pytest.fixture(params=["request_tracker", "servicenow", "bmc_helix"])
async def vendor(request) -> AsyncIterator[Vendor]:
    if request.param == "request_tracker":
        fake: Any = FakeRequestTracker()
        fake.add_queue(QUEUE, custom_fields=("AzureAlertId",))
        make = rt_vendor
    elif request.param == "servicenow":
        fake, make = FakeServiceNow(), sn_vendor
    else:
        fake, make = FakeBmcHelix(), helix_vendor
    await fake.start()
    yield make(fake)
    await fake.stop()


class RecordingStore:
    """The real store, keeping the last ticket record the worker wrote per key (the backends' own
    persistence of `closed_at` is the store contract suite's business)."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.written: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put_ticket(self, record):  # type: ignore[no-untyped-def]
        stored = await self.inner.put_ticket(record)
        self.written[record.key] = record
        return stored


@pytest.fixture
async def runner(tmp_path) -> AsyncIterator[Callable[..., Any]]:
    """Start a worker on a store under tmp_path (a second call with fresh=True: a new, empty store)."""
    from relay.delivery.metrics import DeliveryMetrics
    from relay.delivery.worker import Worker

    opened: list[tuple[Any, Worker]] = []

    async def start(vendor: Vendor, policy: Policy | None = None, name: str = "relay.db") -> tuple[Any, Worker]:
        inner = SqliteStore(tmp_path / name)
        await inner.open()
        store = RecordingStore(inner)
        config = make_config(Route(target="itsm", policy=policy or Policy()))
        worker = Worker(store, config, {"itsm": vendor.build()}, metrics=DeliveryMetrics())
        await worker.start()
        opened.append((store, worker))
        return store, worker

    yield start
    for store, worker in opened:
        await worker.stop(grace_seconds=1)
        await store.close()


def lose_answer(vendor: Vendor, step: str) -> None:
    """The step's next write lands but its answer is lost. aiohttp resends an idempotent method (PUT)
    once by itself when a reused connection drops, so there the resend loses its answer too."""
    path, method = vendor.step_path[step]
    vendor.fake.inject("reset_after", path=path, method=method, times=2 if method == "PUT" else 1)


def sent(worker: Any, step: str) -> float:
    """How many times the worker called the target's step (each call is timed once)."""
    return worker.metrics.registry.get_sample_value(
        "relay_target_call_seconds_count", {"target": "itsm", "call": step}) or 0.0


def the_ticket(vendor: Vendor, key: str = GUID) -> str:
    [tid] = vendor.tickets_with(key)
    return tid


# -- a step whose answer is lost is applied once ------------------------------------------------------

async def test_a_resolve_retried_after_a_lost_answer_changes_the_ticket_once(vendor, runner):
    store, worker = await runner(vendor)
    await accept(store, alert_body())
    await until(lambda: drained(store), "the incident is opened")
    lose_answer(vendor, "resolve")
    await accept(store, alert_body(condition="Resolved", resolved=T1))
    await until(lambda: drained(store), "the resolve is delivered after the lost answer")
    tid = the_ticket(vendor)
    assert not vendor.status_of(tid)
    assert vendor.writes("resolve") == 1, f"{vendor.kind}: the resolve was sent again after its answer was lost"
    assert sent(worker, "resolve") == 1 and sent(worker, "read") == 1, "the retry must read, not resend"
    assert sum("resolved at" in n for n in vendor.notes_of(tid)) == 1
    record = await store.get_ticket("itsm", GUID)
    assert "step" not in record.data and record.data["open"] is False
    assert store.written[GUID].closed_at is not None, "a resolved ticket's record carries closed_at"
    assert metric(worker, "relay_deliveries_total", target="itsm", outcome="resolve") == 1


async def test_a_note_retried_after_a_lost_answer_is_written_once_with_its_marker(vendor, runner):
    store, worker = await runner(vendor)
    await accept(store, alert_body())
    await until(lambda: drained(store), "the incident is opened")
    lose_answer(vendor, "note")
    again = await accept(store, alert_body(fired=T2))  # a new episode while open: on_repeat note
    await until(lambda: drained(store), "the note is delivered after the lost answer")
    notes = vendor.notes_of(the_ticket(vendor))
    assert vendor.writes("note") == 1, f"{vendor.kind}: the note was sent again after its answer was lost: {notes}"
    assert len(notes) == 1 and notes[0].endswith(step_marker(again.key)), notes
    assert sent(worker, "note") == 1 and sent(worker, "read") == 1, "the retry must read, not resend"
    assert store.written[GUID].closed_at is None, "an open ticket's record has no closed_at"


async def test_a_reopen_retried_after_a_lost_answer_changes_the_ticket_once(vendor, runner):
    store, worker = await runner(vendor, Policy(on_refire="reopen"))
    await accept(store, alert_body())
    await accept(store, alert_body(condition="Resolved", resolved=T1))
    await until(lambda: drained(store), "the incident is opened and resolved")
    before = vendor.writes("reopen")
    lose_answer(vendor, "reopen")
    await accept(store, alert_body(fired=T2))
    await until(lambda: drained(store), "the reopen is delivered after the lost answer")
    tid = the_ticket(vendor)
    assert vendor.status_of(tid)
    assert vendor.writes("reopen") - before == 1, f"{vendor.kind}: the reopen was sent again"
    assert sent(worker, "reopen") == 1 and sent(worker, "read") == 1, "the retry must read, not resend"
    record = await store.get_ticket("itsm", GUID)
    assert record.data["open"] is True and store.written[GUID].closed_at is None


# -- a lost store ------------------------------------------------------------------------------------

async def test_a_fresh_store_resolves_the_open_tickets_and_adopts_instead_of_creating_twins(vendor, runner):
    # The target holds what a lost store had created: alert 1 open, alert 2 in its second episode (the
    # first resolved), alert 3 open; alert 4 resolved long ago.
    one = vendor.seed(guid(1), True)
    vendor.seed(guid(2), False)
    two = vendor.seed(f"{guid(2)}.2", True)
    three = vendor.seed(guid(3), True)
    vendor.seed(guid(4), False)
    store, worker = await runner(vendor, name="fresh.db")
    await accept(store, alert_body(guid=guid(1), condition="Resolved", resolved=T1))
    await accept(store, alert_body(guid=guid(2), condition="Resolved", resolved=T1))
    await accept(store, alert_body(guid=guid(3), fired=T2))  # fired again: adopt, no twin
    await accept(store, alert_body(guid=guid(4), fired=T2))  # fired after resolve: a new one, suffix .2
    await accept(store, alert_body(guid=guid(5), condition="Resolved", resolved=T1))  # never fired
    await until(lambda: drained(store), "every event delivered")
    assert not vendor.status_of(one) and not vendor.status_of(two), "the open incidents were left open"
    assert vendor.status_of(three) and vendor.tickets_with(guid(3)) == [three], "a twin was created"
    assert len(vendor.tickets_with(f"{guid(4)}.2")) == 1, "the new episode must continue after the highest key"
    assert vendor.tickets_with(guid(5)) == [], "a Resolved for an alert that never fired opened something"
    assert (await store.get_ticket("itsm", guid(2))).data["generation"] == 2
    assert (await store.get_ticket("itsm", guid(3))).data["ticket_id"] == three
    for outcome, count in (("resolve", 2), ("adopt", 1), ("new", 1), ("record", 1)):
        got = metric(worker, "relay_orphan_events_total", target="itsm", outcome=outcome)
        assert got == count, f"relay_orphan_events_total{{outcome={outcome}}} is {got}, not {count}"


async def test_a_first_fired_with_nothing_in_the_target_creates_and_is_no_orphan(vendor, runner):
    store, worker = await runner(vendor)
    await accept(store, alert_body())
    await until(lambda: drained(store), "the incident is opened")
    assert len(vendor.tickets_with(GUID)) == 1
    assert worker.metrics.registry.get_sample_value(
        "relay_orphan_events_total", {"target": "itsm", "outcome": "create"}) is None




async def test_a_fresh_store_refuses_to_pick_between_two_open_tickets_of_one_key(vendor, runner):
    vendor.seed(guid(7), True)
    vendor.seed(guid(7), True)
    store, _ = await runner(vendor, name="fresh.db")
    await accept(store, alert_body(guid=guid(7), condition="Resolved", resolved=T1))
    await until(lambda: drained(store), "the event is settled")
    [dead] = await store.dead_letters()
    assert "more than one open ticket" in dead.error
    assert all(vendor.status_of(t) for t in vendor.tickets_with(guid(7))), "a guess resolved one of them"
