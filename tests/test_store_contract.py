"""The store contract, written once and run on every backend: SQLite, and Azure Storage on Azurite.

The `backend` fixture hands out replicas: store instances sharing one backend, as relay processes
would. A few Azure-only tests at the end pin what only that backend can get wrong (the window
between its table write and its queue send, unreadable queue messages, URL parsing).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from azure.core.exceptions import ServiceRequestError

from relay.store import (
    Claim,
    Event,
    LeaseLost,
    Retention,
    Store,
    StoreUnavailable,
    TicketRecord,
    VersionConflict,
    idempotency_key,
    open_store,
)
from relay.store.azure import INLINE_BODY_LIMIT, AzureStorageStore
from relay.store.base import TRAIL_DETAIL_LIMIT, TRAIL_ENTRIES_LIMIT, TicketLink, TrailEntry
from relay.store.sqlite import SqliteStore
from tests.azurite import Azurite, StorageCut, unique_names

pytest_plugins = ["tests.azurite"]

ALERT = "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.AlertsManagement/alerts/{}"
T0 = "2025-01-01T00:00:00Z"
# Long enough that nothing in a test outlives it: "not claimable now" must not depend on timing.
LONG = 120.0
WAIT_SECONDS = 60


def event(alert: str | int, condition: str = "Fired", at: str = T0, body: bytes | None = None) -> Event:
    alert_id = ALERT.format(alert)
    if body is None:
        body = json.dumps({"alertId": alert_id, "monitorCondition": condition, "at": at}).encode()
    return Event(idempotency_key(alert_id, condition, at), alert_id, condition, at, body)


# -- backends --------------------------------------------------------------------------------------


class SqliteWriteLock:
    """A SQLite outage: another connection holds the write lock, so nothing can commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def cut(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def restore(self) -> None:
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


class Backend:
    name = ""

    def __init__(self) -> None:
        self.stores: list[Store] = []

    def make(self) -> Store:
        raise NotImplementedError

    async def replica(self) -> Store:
        store = self.make()
        await store.open()
        self.stores.append(store)
        return store

    async def breakable_replica(self) -> tuple[Store, SqliteWriteLock | StorageCut]:
        raise NotImplementedError

    async def close(self) -> None:
        for s in self.stores:
            await s.close()


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def make(self) -> Store:
        return SqliteStore(self.path)

    async def breakable_replica(self) -> tuple[Store, SqliteWriteLock | StorageCut]:
        store = await self.replica()
        # Under a held lock each write waits busy_timeout (5 s in production) before failing.
        await store._run(lambda: store._db().execute("PRAGMA busy_timeout=200"))  # type: ignore[attr-defined]
        return store, SqliteWriteLock(self.path)


class AzureBackend(Backend):
    name = "azure-storage"

    def __init__(self, azurite: Azurite) -> None:
        super().__init__()
        self.azurite = azurite
        self.names = unique_names()
        self.cuts: list[StorageCut] = []

    def make(self, connection_string: str | None = None) -> Store:
        return AzureStorageStore(connection_string=connection_string or self.azurite.connection_string,
                                 names=self.names)

    async def breakable_replica(self) -> tuple[Store, SqliteWriteLock | StorageCut]:
        cut = StorageCut(self.azurite)
        self.cuts.append(cut)
        store = self.make(cut.connection_string)
        await store.open()
        self.stores.append(store)
        return store, cut

    async def close(self) -> None:
        await super().close()
        for c in self.cuts:
            c.close()


@pytest.fixture(params=["sqlite", "azure-storage"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        b: Backend = SqliteBackend(tmp_path / "relay.db")
    else:
        b = AzureBackend(request.getfixturevalue("azurite"))
    yield b
    await b.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.replica()


async def claim_eventually(store: Store, limit: int = 10, lease: float = LONG) -> list[Claim]:
    """Claim until something comes back: for what becomes due after a lease or a delay ends."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        got = await store.claim(limit, lease)
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"nothing became claimable within {WAIT_SECONDS}s")
        await asyncio.sleep(0.1)


async def drain(*replicas: Store) -> list[Claim]:
    """Claim and complete everything, round-robin over the replicas; returns the claims in order."""
    done: list[Claim] = []
    deadline = time.monotonic() + WAIT_SECONDS
    while await replicas[0].pending():
        for r in replicas:
            for c in await r.claim(10, LONG):
                done.append(c)
                await r.complete(c)
        if time.monotonic() > deadline:
            pytest.fail(f"{await replicas[0].pending()} events still pending after {WAIT_SECONDS}s")
    return done


def keys(claims: list[Claim]) -> list[str]:
    return [c.event.key for c in claims]


# -- accept and deduplication ------------------------------------------------------------------------


async def test_accept_records_a_new_event_and_refuses_its_duplicate(store):
    e = event(1)
    assert await store.accept(e) is True
    assert await store.accept(e) is False, "the same idempotency key must be reported as a duplicate"
    assert await store.pending() == 1
    [c] = await store.claim(10, LONG)
    assert c.event == e and c.event.body == e.body
    assert c.attempts == 0


async def test_idempotency_key_ignores_alert_id_case_but_separates_condition_and_time(store):
    assert await store.accept(event("Mixed-Case"))
    assert not await store.accept(event("mixed-case")), "ARM ids are case-insensitive: same alert, same key"
    assert await store.accept(event("Mixed-Case", "Resolved", "2025-01-01T00:05:00Z"))
    assert await store.accept(event("Mixed-Case", at="2025-01-01T00:10:00Z")), "a re-fire is a new event"
    assert await store.pending() == 3


async def test_concurrent_duplicates_on_two_replicas_are_recorded_once(backend):
    r1, r2 = await backend.replica(), await backend.replica()
    e = event(1)
    results = await asyncio.gather(*((r1 if i % 2 else r2).accept(e) for i in range(10)))
    assert sorted(results) == [False] * 9 + [True]
    assert await r1.pending() == 1 and await r2.pending() == 1


# -- claim: leases and per-alert order ----------------------------------------------------------------


async def test_claim_leases_only_the_oldest_event_of_each_alert_across_replicas(backend):
    r1, r2 = await backend.replica(), await backend.replica()
    a1, a2, a3 = event("a", at="t1"), event("a", "Resolved", at="t2"), event("a", at="t3")
    b1 = event("b")
    for e in (a1, a2, a3, b1):
        assert await (r1 if e is a2 else r2).accept(e)
    first = await r1.claim(10, LONG)
    assert sorted(keys(first)) == sorted([a1.key, b1.key]), "only each alert's oldest event may be leased"
    assert await r2.claim(10, LONG) == [], "a leased alert must not hand its next event to another replica"
    assert await r1.pending() == 4, "leased events are still pending"
    for c in first:
        await r1.complete(c)
    [second] = await claim_eventually(r2)
    assert second.event.key == a2.key
    await r2.complete(second)
    [third] = await claim_eventually(r1)
    assert third.event.key == a3.key
    await r1.complete(third)
    assert await r1.pending() == 0
    assert await r2.claim(10, LONG) == []


async def test_claim_hands_out_at_most_limit_events(store):
    for i in range(5):
        await store.accept(event(i))
    assert len(await store.claim(2, LONG)) == 2
    rest = await claim_eventually(store, limit=10)
    assert len(rest) == 3


async def test_alert_id_case_variants_share_one_queue(store):
    fired, resolved = event("Case-Alert"), event("case-alert", "Resolved", "2025-01-01T00:05:00Z")
    await store.accept(fired)
    await store.accept(resolved)
    [c] = await store.claim(10, LONG)
    assert c.event.key == fired.key, "the Resolved of the same alert (other case) must wait for its Fired"
    await store.complete(c)
    [c] = await claim_eventually(store)
    assert c.event.key == resolved.key


async def test_expired_lease_is_reclaimed_by_another_replica_and_the_old_claim_goes_stale(backend):
    r1, r2 = await backend.replica(), await backend.replica()
    e = event(1)
    await r1.accept(e)
    [lost] = await r1.claim(10, lease_seconds=1)  # this replica "dies" holding the lease
    [again] = await claim_eventually(r2)
    assert again.event.key == e.key
    assert again.attempts == 1, "an expired lease counts as an attempt (it may be a poison event)"
    assert again.receipt != lost.receipt
    await r1.complete(lost)
    assert await r1.pending() == 1, "a claim whose lease was taken over must not complete the event"
    await r1.retry_later(lost, 0, "late")
    await r1.dead_letter(lost, "late")
    assert await r1.dead_letters() == [], "a stale claim must not dead-letter the event"
    await r2.complete(again)
    assert await r2.pending() == 0


async def test_completed_event_is_never_handed_out_again(store):
    await store.accept(event(1))
    [c] = await store.claim(10, lease_seconds=1)
    await store.complete(c)
    assert await store.pending() == 0
    assert not await store.accept(event(1)), "a completed event's key must still deduplicate"
    assert await store.claim(10, LONG) == []


# -- short leases: renewal, loss, circuit-open bounces ---------------------------------------------------


async def test_renewed_lease_keeps_the_event_from_other_replicas_past_its_first_term(backend):
    r1, r2 = await backend.replica(), await backend.replica()
    await r1.accept(event(1))
    [c] = await r1.claim(10, lease_seconds=1)
    await r1.renew(c, LONG)
    await asyncio.sleep(1.5)
    assert await r2.claim(10, LONG) == [], "a renewed lease must outlive its first term"
    await r1.renew(c, LONG)  # renewing again keeps working
    await r1.complete(c)
    assert await r1.pending() == 0, "the claim must stay valid for complete after renewals"


async def test_renew_after_the_lease_was_taken_over_raises_lease_lost(backend):
    r1, r2 = await backend.replica(), await backend.replica()
    await r1.accept(event(1))
    [lost] = await r1.claim(10, lease_seconds=1)
    [again] = await claim_eventually(r2)
    with pytest.raises(LeaseLost):
        await r1.renew(lost, LONG)
    await r2.renew(again, LONG)
    await r2.complete(again)
    with pytest.raises(LeaseLost):
        await r2.renew(again, LONG)  # settled: nothing left to renew


async def test_retry_later_without_counting_gives_the_attempt_back(store):
    await store.accept(event(1))
    [c] = await store.claim(10, LONG)
    await store.retry_later(c, 0, "circuit open", count_attempt=False)
    [again] = await claim_eventually(store)
    assert again.attempts == 0, "a circuit-open bounce is not a delivery attempt"
    await store.retry_later(again, 0, "ServiceNow answered 503")
    [third] = await claim_eventually(store)
    assert third.attempts == 1


async def test_claim_carries_the_time_intake_accepted_the_event(store):
    before = time.time()
    await store.accept(event(1))
    [c] = await store.claim(10, LONG)
    assert before - 1 <= c.received_at <= time.time() + 1


# -- retention ----------------------------------------------------------------------------------------

DAY = 86400.0
RETAIN = Retention(delivered_seconds=14 * DAY, dead_letter_seconds=90 * DAY, ticket_seconds=30 * DAY)


async def test_expire_deletes_delivered_events_past_their_age_and_never_pending_ones(store):
    for alert in (1, 2, 3):
        await store.accept(event(alert))
    claims = {c.event.alert_id: c for c in await store.claim(10, LONG)}
    for alert in (1, 2):
        await store.complete(claims[ALERT.format(alert)])
    await store.retry_later(claims[ALERT.format(3)], 0, "ServiceNow answered 503")
    now = time.time()
    kept = await store.expire(now + 13 * DAY, RETAIN)
    assert kept.events == 0, "nothing is younger than its age limit yet"
    assert not await store.accept(event(1)), "a delivered event within retention still deduplicates"
    gone = await store.expire(now + 15 * DAY, RETAIN)
    assert gone.events == 2
    assert await store.pending() == 1, "a pending event is never expired, however old"
    [c] = await claim_eventually(store)
    assert c.event.key == event(3).key and c.event.body == event(3).body
    assert await store.accept(event(1)), "past retention, a key is new again"


async def test_expire_deletes_dead_letters_past_their_own_age(store):
    await store.accept(event(1))
    [c] = await store.claim(10, LONG)
    await store.dead_letter(c, "ServiceNow answered 400")
    now = time.time()
    assert (await store.expire(now + 30 * DAY, RETAIN)).dead_letters == 0
    assert len(await store.dead_letters()) == 1, "a dead letter outlives the delivered-event age"
    assert (await store.expire(now + 91 * DAY, RETAIN)).dead_letters == 1
    assert await store.dead_letters() == []


async def test_expire_deletes_ticket_records_only_a_while_after_they_closed(store):
    now = time.time()
    await store.put_ticket(TicketRecord("rt", "open", {"ticket_id": "1"}))
    await store.put_ticket(TicketRecord("rt", "closed", {"ticket_id": "2"}, closed_at=now))
    got = await store.get_ticket("rt", "closed")
    assert got is not None and got.closed_at == pytest.approx(now)
    assert (await store.expire(now + 29 * DAY, RETAIN)).tickets == 0
    assert (await store.expire(now + 31 * DAY, RETAIN)).tickets == 1
    assert await store.get_ticket("rt", "closed") is None
    assert await store.get_ticket("rt", "open") is not None, "an open ticket's record never expires"
    assert (await store.expire(now + 3650 * DAY, RETAIN)).tickets == 0


# -- retries and dead letters ---------------------------------------------------------------------------


async def test_retry_later_holds_the_event_and_the_rest_of_its_alert_until_the_delay(backend):
    r1, r2 = await backend.replica(), await backend.replica()
    a1, a2 = event("a"), event("a", "Resolved", "t2")
    await r1.accept(a1)
    await r1.accept(a2)
    [c] = await r1.claim(10, LONG)
    await r1.retry_later(c, LONG, "ServiceNow answered 503")
    assert await r2.claim(10, LONG) == [], "a backing-off event must hold its alert's later events"
    assert await r2.pending() == 2


async def test_retry_later_hands_the_event_out_again_after_the_delay(backend):
    r1, r2 = await backend.replica(), await backend.replica()
    await r1.accept(event(1))
    [c] = await r1.claim(10, LONG)
    await r1.retry_later(c, 1, "ServiceNow answered 503")
    [again] = await claim_eventually(r2)
    assert again.event.key == c.event.key
    assert again.attempts == 1


async def test_dead_letter_is_listed_with_its_error_and_releases_the_alert(store):
    a1, a2 = event("a"), event("a", "Resolved", "t2")
    await store.accept(a1)
    await store.accept(a2)
    [c] = await store.claim(10, LONG)
    await store.dead_letter(c, "ServiceNow answered 400: invalid category")
    [dl] = await store.dead_letters()
    assert dl.event == a1 and dl.event.body == a1.body
    assert dl.error == "ServiceNow answered 400: invalid category"
    assert dl.attempts == 1
    assert await store.pending() == 1, "a dead letter is no longer pending"
    [nxt] = await claim_eventually(store)
    assert nxt.event.key == a2.key, "dead-lettering the head must let the alert's next event go"


async def test_replay_requeues_the_named_dead_letters_and_rejects_unknown_ids(store):
    for i in (1, 2):
        await store.accept(event(i))
    for c in await store.claim(10, LONG):
        await store.dead_letter(c, "boom")
    dls = await store.dead_letters()
    assert len(dls) == 2
    with pytest.raises(KeyError):
        await store.replay([dls[0].id, "no-such-dead-letter"])
    assert len(await store.dead_letters()) == 2, "a replay naming an unknown id must move nothing"
    assert await store.replay([dls[0].id]) == 1
    assert [d.id for d in await store.dead_letters()] == [dls[1].id]
    [c] = await claim_eventually(store)
    assert c.event == dls[0].event
    assert c.attempts == 0, "a replayed event starts with a fresh attempt count"
    assert await store.replay(None) == 1
    assert await store.dead_letters() == []
    [c] = await claim_eventually(store)
    assert c.event == dls[1].event


async def test_replayed_event_waits_while_another_event_of_its_alert_is_leased(backend):
    r1, r2 = await backend.replica(), await backend.replica()
    a1, a2 = event("a"), event("a", "Resolved", "t2")
    await r1.accept(a1)
    await r1.accept(a2)
    [c1] = await r1.claim(10, LONG)
    await r1.dead_letter(c1, "boom")
    [c2] = await claim_eventually(r1)
    assert c2.event.key == a2.key
    assert await r1.replay(None) == 1
    assert await r2.claim(10, LONG) == [], "never two events of one alert leased at once, replays included"
    await r1.complete(c2)
    [c] = await claim_eventually(r2)
    assert c.event.key == a1.key


# -- ticket records -----------------------------------------------------------------------------------


async def test_ticket_record_is_created_once_and_updated_only_from_its_current_version(store):
    assert await store.get_ticket("servicenow", "alert-1") is None
    data = {"sys_id": "abc", "state": "open", "nested": {"n": [1, 2]}}
    v1 = await store.put_ticket(TicketRecord("servicenow", "alert-1", data))
    assert v1.version is not None
    with pytest.raises(VersionConflict):
        await store.put_ticket(TicketRecord("servicenow", "alert-1", {"sys_id": "other"}))
    got = await store.get_ticket("servicenow", "alert-1")
    assert got == v1 and got.data == data
    resolved = {**data, "state": "resolved"}
    v2 = await store.put_ticket(TicketRecord("servicenow", "alert-1", resolved, v1.version))
    assert v2.version != v1.version
    with pytest.raises(VersionConflict):
        await store.put_ticket(TicketRecord("servicenow", "alert-1", {"state": "stale"}, v1.version))
    assert (await store.get_ticket("servicenow", "alert-1")).data["state"] == "resolved"
    assert await store.get_ticket("bmc_helix", "alert-1") is None, "records are per target"


async def test_two_replicas_racing_on_one_ticket_record_only_one_wins(backend):
    r1, r2 = await backend.replica(), await backend.replica()

    async def put(r: Store, rec: TicketRecord) -> bool:
        try:
            await r.put_ticket(rec)
            return True
        except VersionConflict:
            return False

    created = await asyncio.gather(put(r1, TicketRecord("servicenow", "k", {"by": "r1"})),
                                   put(r2, TicketRecord("servicenow", "k", {"by": "r2"})))
    assert sorted(created) == [False, True], "exactly one replica may create the incident record"
    current = await r1.get_ticket("servicenow", "k")
    updated = await asyncio.gather(put(r1, TicketRecord("servicenow", "k", {"by": "r1"}, current.version)),
                                   put(r2, TicketRecord("servicenow", "k", {"by": "r2"}, current.version)))
    assert sorted(updated) == [False, True], "exactly one replica may update from one version"


# -- replicas, sizes, outages ----------------------------------------------------------------------------


async def test_two_replicas_deliver_every_event_once_in_order_per_alert(backend):
    r1, r2 = await backend.replica(), await backend.replica()
    alerts, per_alert = 8, 4
    accepted: dict[str, list[str]] = {}

    async def feed(a: int) -> None:  # one alert's events in order, alternating replicas
        for n in range(per_alert):
            e = event(f"order-{a}", ("Fired", "Resolved")[n % 2], f"2025-01-01T00:0{n}:00Z")
            assert await (r1, r2)[n % 2].accept(e)
            accepted.setdefault(e.alert_id.lower(), []).append(e.key)

    await asyncio.gather(*(feed(a) for a in range(alerts)))
    delivered: dict[str, list[str]] = {}
    in_flight: set[str] = set()
    total = alerts * per_alert

    async def work(r: Store) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while sum(map(len, delivered.values())) < total:
            if time.monotonic() > deadline:
                pytest.fail(f"only {sum(map(len, delivered.values()))} of {total} delivered")
            claims = await r.claim(3, LONG)
            for c in claims:
                alert = c.event.alert_id.lower()
                assert alert not in in_flight, f"two events of {alert} were leased at once"
                in_flight.add(alert)
            await asyncio.sleep(0)  # let the other replica claim while these are held
            for c in claims:
                delivered.setdefault(c.event.alert_id.lower(), []).append(c.event.key)
                in_flight.discard(c.event.alert_id.lower())
                await r.complete(c)
            if not claims:
                await asyncio.sleep(0.05)

    await asyncio.gather(work(r1), work(r2))
    assert delivered == accepted, "every event once, each alert's in acceptance order"
    assert await r1.pending() == 0


@pytest.mark.parametrize("size", [1, INLINE_BODY_LIMIT, INLINE_BODY_LIMIT + 1, 70_000, 200_000, 256 * 1024])
async def test_bodies_come_back_byte_identical_whatever_their_size(store, size):
    body = os.urandom(size)
    e = event(f"size-{size}", body=body)
    assert await store.accept(e)
    assert not await store.accept(e)
    [c] = await store.claim(10, LONG)
    assert c.event.body == body, f"a {size}-byte body changed on its way through the store"
    await store.dead_letter(c, "keep it")
    [dl] = await store.dead_letters()
    assert dl.event.body == body
    await store.replay(None)
    [c] = await claim_eventually(store)
    assert c.event.body == body


async def test_backend_outage_raises_store_unavailable_and_loses_nothing_acknowledged(backend):
    store, outage = await backend.breakable_replica()
    before, during = event("before"), event("during")
    assert await store.accept(before)
    outage.cut()
    try:
        with pytest.raises(StoreUnavailable):
            await store.accept(during)
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.claim(10, LONG)
        with pytest.raises(StoreUnavailable):
            await store.put_ticket(TicketRecord("servicenow", "k", {}))
    finally:
        outage.restore()
    await store.ping()
    await store.accept(during)  # Azure retries what got a 503
    delivered = await drain(store)
    assert sorted(keys(delivered)) == sorted([before.key, during.key])


async def test_closed_store_refuses_with_store_unavailable(backend):
    store = await backend.replica()
    backend.stores.remove(store)
    await store.close()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.accept(event(1)), 10)  # wait_for: a hang is a failure too
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.ping(), 10)


# -- Azure Storage only ----------------------------------------------------------------------------------


@pytest.fixture
async def azure(azurite: Azurite) -> AsyncIterator[AzureStorageStore]:
    s = AzureStorageStore(connection_string=azurite.connection_string, names=unique_names())
    await s.open()
    yield s
    await s.close()


async def test_azure_accept_cut_off_before_its_queue_send_is_queued_by_azures_retry(azure, monkeypatch):
    e = event(1)
    send = azure._q.send_message

    async def storage_dies(*args, **kwargs):
        raise ServiceRequestError("connection reset")

    monkeypatch.setattr(azure._q, "send_message", storage_dies)
    with pytest.raises(StoreUnavailable):
        await azure.accept(e)  # recorded in the table, never queued, never acknowledged
    monkeypatch.setattr(azure._q, "send_message", send)
    assert await azure.accept(e) is False, "the retry is a duplicate of the recorded event"
    [c] = await claim_eventually(azure)
    assert c.event.key == e.key, "the retry must queue the event the first attempt recorded"


async def test_azure_sweep_wakes_an_event_whose_accept_died_and_was_never_retried(azure, monkeypatch):
    e, fresh = event("stranded"), event("fresh")
    send = azure._q.send_message

    async def storage_dies(*args, **kwargs):
        raise ServiceRequestError("connection reset")

    monkeypatch.setattr(azure._q, "send_message", storage_dies)
    with pytest.raises(StoreUnavailable):
        await azure.accept(e)  # recorded, never queued; this time Azure gives up
    monkeypatch.setattr(azure._q, "send_message", send)
    await azure.accept(fresh)
    assert await azure.sweep() == 0, "nothing has been due long enough to count as stranded"
    [c] = await azure.claim(10, LONG)
    assert c.event.key == fresh.key, "without a wake-up the stranded event is invisible to claims"
    assert await azure.sweep(stranded_after=0) == 1, "only the stranded alert needs waking (fresh is leased)"
    [c] = await claim_eventually(azure)
    assert c.event.key == e.key


async def test_azure_unreadable_queue_message_goes_to_the_poison_queue(azure):
    await azure._q.send_message("not a token")
    await azure.accept(event(1))
    [c] = await claim_eventually(azure)
    assert c.event.key == event(1).key
    poisoned = [m.content for m in await azure._poison.peek_messages(max_messages=32)]
    assert poisoned == ["not a token"]


async def test_azure_redundant_wakeups_are_dropped_from_the_queue(azure):
    e1, e2, e3 = event("a"), event("a", "Resolved", "t2"), event("a", at="t3")
    for e in (e1, e2, e3):
        await azure.accept(e)
    [c] = await azure.claim(10, LONG)
    assert c.event.key == e1.key
    props = await azure._q.get_queue_properties()
    assert props.approximate_message_count == 1, "only the leased event's token should remain"
    await azure.complete(c)
    [c] = await claim_eventually(azure)
    assert c.event.key == e2.key


def test_open_store_picks_the_backend_from_the_url():
    s = open_store("azure-storage://relaydemo01")
    assert isinstance(s, AzureStorageStore) and s.account == "relaydemo01"
    s = open_store("UseDevelopmentStorage=true")
    assert isinstance(s, AzureStorageStore) and s.account == "devstoreaccount1"
    s = open_store("DefaultEndpointsProtocol=https;AccountName=acct1;AccountKey=c2VjcmV0;EndpointSuffix=x")
    assert s.account == "acct1" and "c2VjcmV0" not in repr(s)
    assert isinstance(open_store("sqlite:///relay.db"), SqliteStore)
    with pytest.raises(ValueError, match="3-24 lowercase"):
        open_store("azure-storage://Not_An_Account")
    with pytest.raises(ValueError) as err:
        open_store("defaultendpointsprotocol=https;AccountKey=c2VjcmV0")
    assert "c2VjcmV0" not in str(err.value), "an unsupported store URL holding a key must not be echoed"


async def test_azure_renew_keeps_the_claim_valid_when_an_earlier_write_lost_its_answer(azure, azurite):
    # A second store instance renews the claim: to the first, that is its own write whose answer never
    # came (the q-row's ETag moved on under the same receipt). The first must still settle the claim.
    other = AzureStorageStore(connection_string=azurite.connection_string, names=azure.names)
    await other.open()
    try:
        await azure.accept(event(1))
        [c] = await azure.claim(10, LONG)
        await other.renew(c, LONG)
        await azure.renew(c, LONG)
        await other.renew(c, LONG)
        await azure.complete(c)
        assert await azure.pending() == 0, "a claim whose ETag moved under its own receipt must still complete"
    finally:
        await other.close()


async def test_azure_expire_deletes_payload_blobs_and_counts_them(azure):
    big, small = event("big", body=os.urandom(INLINE_BODY_LIMIT + 1)), event("small")
    await azure.accept(big)
    await azure.accept(small)
    for c in await azure.claim(10, LONG):
        await azure.complete(c)
    assert [b.name async for b in azure._container.list_blobs()] != [], "the large body went to a blob"
    gone = await azure.expire(time.time() + 15 * DAY, RETAIN)
    assert (gone.events, gone.blobs) == (2, 1), f"two events, one of them with a payload blob: {gone}"
    assert [b.name async for b in azure._container.list_blobs()] == [], "the payload blob must be deleted"
    rows = [r["RowKey"] async for r in azure._t.list_entities()]
    assert rows == [], f"an alert whose events all expired keeps nothing, its counter row included: {rows}"


async def test_azure_expire_pass_is_bounded_and_the_next_pass_goes_on(azure, monkeypatch):
    monkeypatch.setattr("relay.store.azure.EXPIRE_PAGES_PER_PASS", 1)
    monkeypatch.setattr("relay.store.azure.EXPIRE_PAGE_ROWS", 2)
    for i in range(5):
        await azure.accept(event(i))
    for c in await azure.claim(10, LONG):
        await azure.complete(c)
    later = time.time() + 15 * DAY
    per_pass = []
    for _ in range(6):
        before = azure.operations.total()
        per_pass.append(deleted := (await azure.expire(later, RETAIN)).events)
        # one page read per scan (events, tickets); per event (each its alert's only one): delete it,
        # read its partition's first rows, delete the alert's counter row
        assert azure.operations.total() - before <= 2 + 3 * deleted, "a pass must read one page per scan"
    assert max(per_pass) <= 2, f"a pass deletes at most one page of rows: {per_pass}"
    assert sum(per_pass) == 5, f"successive passes must reach every expired event: {per_pass}"


async def test_azure_expire_on_two_replicas_at_once_deletes_each_row_once(azure, azurite):
    other = AzureStorageStore(connection_string=azurite.connection_string, names=azure.names)
    await other.open()
    try:
        for i in range(6):
            await azure.accept(event(i, body=os.urandom(INLINE_BODY_LIMIT + 1) if i % 2 else None))
        for c in await azure.claim(10, LONG):
            await azure.dead_letter(c, "boom") if c.event.alert_id.endswith("5") else await azure.complete(c)
        later = time.time() + 91 * DAY
        a, b = await asyncio.gather(azure.expire(later, RETAIN), other.expire(later, RETAIN))
        assert (a.events + b.events, a.dead_letters + b.dead_letters, a.blobs + b.blobs) == (5, 1, 3), (a, b)
        assert await azure.dead_letters() == []
        assert [r async for r in azure._t.list_entities()] == []
    finally:
        await other.close()


async def test_azure_storage_operations_per_fired_and_resolved_event(azure):
    """Issue 11: what one event costs in Azure Storage operations (billed, and counted against the
    account's and the queue's scalability targets). A change here must be a deliberate one."""
    azure._next_sweep = float("inf")  # the 5-minute sweep is a background cost of its own
    last = azure.operations.snapshot()

    def step() -> dict[str, int]:
        nonlocal last
        now = azure.operations.snapshot()
        diff, last = now - last, now
        return {f"{service} {op}": n for (service, op), n in sorted(diff.items())}

    fired, resolved = event("ops"), event("ops", "Resolved", "t2")
    claim_one = {"queue get messages": 1, "table query entities": 1, "table merge entity": 1}
    complete_last = {"table entity group transaction": 1, "table query entities": 1, "queue delete message": 1}
    await azure.accept(fired)
    assert step() == {"table entity group transaction": 1, "queue put message": 1}, "accept of a Fired"
    [c] = await azure.claim(10, LONG)
    assert step() == claim_one, "claim"
    await azure.renew(c, LONG)
    assert step() == {"table merge entity": 1, "queue update message": 1}, "one lease renewal"
    await azure.complete(c)
    assert step() == complete_last, "complete (no next event: look, then delete the token)"
    await azure.accept(resolved)
    assert step() == {"table get entity": 1, "table entity group transaction": 1, "queue put message": 1}, \
        "accept of a Resolved (reads the alert's counter first)"
    [c] = await azure.claim(10, LONG)
    assert step() == claim_one, "claim"
    await azure.complete(c)
    assert step() == complete_last, "complete"
    assert await azure.claim(10, LONG) == []
    assert step() == {"queue get messages": 1}, "an idle poll"


async def test_azure_claim_reads_only_the_alert_it_claims_whatever_the_backlog(azure):
    """Issue 11: a claim's cost must not grow with the backlog. Each table query a claim and its
    complete send is scoped to the claimed alert's partition and reads at most two rows."""
    from urllib.parse import parse_qs, urlsplit

    azure._next_sweep = float("inf")  # the sweep is a background scan, not part of a claim
    costs = {}
    for backlog in (1, 40):
        for i in range(backlog):  # each earlier round's one event was completed
            await azure.accept(event(f"backlog-{backlog}-{i}"))
        assert await azure.pending() == backlog
        azure.operations.trace = []
        [c] = await azure.claim(1, LONG)
        await azure.complete(c)
        trace, azure.operations.trace = azure.operations.trace, None
        costs[backlog] = sorted((service, op) for service, op, _ in trace)
        for _, op, url in trace:
            if op == "query entities":
                q = parse_qs(urlsplit(url).query)
                assert "PartitionKey eq" in q["$filter"][0], f"a claim's query scans partitions: {url}"
                assert int(q["$top"][0]) <= 2, f"a claim's query reads more than two rows: {url}"
    assert costs[1] == costs[40], f"a claim costs more with a larger backlog: {costs}"


@pytest.mark.parametrize("retry_seconds", [None, 0.2], ids=["default 5 s", "shortened"])
async def test_azure_store_unreachable_at_start_opens_not_ready_and_sets_up_once_storage_returns(
        azurite, monkeypatch, retry_seconds):
    import relay.store.azure as azure_store

    if retry_seconds is not None:
        monkeypatch.setattr(azure_store, "SETUP_RETRY_SECONDS", retry_seconds)
    cut = StorageCut(azurite)
    cut.cut()
    store = AzureStorageStore(connection_string=cut.connection_string, names=unique_names())
    try:
        await asyncio.wait_for(store.open(), 60)  # before: raised StoreUnavailable, and `relay serve` exited
        with pytest.raises(StoreUnavailable, match="not set up yet"):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.accept(event(1)), 60)
        cut.restore()
        deadline = time.monotonic() + WAIT_SECONDS  # a hang guard, not a timing
        while True:
            try:
                await store.ping()
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store never set itself up after storage returned"
                await asyncio.sleep(0.1)
        assert await store.accept(event(1)) is True
        [c] = await claim_eventually(store)
        assert c.event.key == event(1).key
    finally:
        await store.close()
        cut.close()


def test_azure_setup_retries_every_five_seconds_by_default():
    from relay.store.azure import SETUP_RETRY_SECONDS

    assert SETUP_RETRY_SECONDS == 5.0


# -- the alert trail (issue 18 item 4) ---------------------------------------------------------------


def with_trail(claim: Claim, *entries: TrailEntry) -> Claim:
    """What the worker does before recording an outcome: attach the attempt's decisions and calls."""
    return dataclasses.replace(claim, trail=entries)


def call(what: str, status: str = "ok", ticket: str = "", link: str = "", at: float = 1.0) -> TrailEntry:
    return TrailEntry(at=at, kind="call", target="rt", what=what, status=status, latency_ms=12.5,
                      ticket=ticket, link=link)


async def test_trail_keeps_each_attempt_with_its_outcome_decisions_and_calls(store):
    a1 = event("trail")
    await store.accept(a1)
    [c] = await store.claim(10, 0.5)
    decided = TrailEntry(at=1.0, kind="decision", target="rt", what="new", detail="fired: no ticket yet")
    await store.retry_later(with_trail(c, decided, call("create", "503")), 0, "rt: create answered 503")
    [c] = await claim_eventually(store)
    await store.complete(with_trail(c, decided, call("create", ticket="42", link="http://rt/Ticket/Display.html?id=42")))
    [got] = await store.alert_trail(a1.alert_id)
    assert (got.key, got.condition, got.state) == (a1.key, "Fired", "delivered")
    assert [a.outcome for a in got.attempts] == ["retry", "delivered"], "each attempt, oldest first"
    assert got.attempts[0].error == "rt: create answered 503"
    assert got.attempts[0].entries == (decided, call("create", "503")), "entries come back as they went in"
    assert got.attempts[1].entries[1].latency_ms == 12.5
    assert got.tickets == (TicketLink("rt", "42", "http://rt/Ticket/Display.html?id=42"),)
    assert got.received_at == pytest.approx(time.time(), abs=60)


async def test_trail_is_found_by_alert_id_in_any_case_or_by_an_event_key_and_lists_every_event(store):
    fired, resolved = event("Mixed"), event("Mixed", "Resolved", "t2")
    other = event("other")
    for e in (fired, resolved, other):
        await store.accept(e)
    [c] = [c for c in await store.claim(10, LONG) if c.event.key == fired.key]
    await store.dead_letter(with_trail(c, call("create", "400")), "rt: 400 invalid queue")
    by_id = await store.alert_trail(fired.alert_id.upper())
    by_key = await store.alert_trail(resolved.key)
    assert [t.key for t in by_id] == [fired.key, resolved.key], "all of the alert's events, oldest first"
    assert [t.key for t in by_key] == [fired.key, resolved.key], "an event key names its alert"
    assert [t.state for t in by_id] == ["dead", "pending"]
    assert by_id[0].attempts[0].outcome == "dead_letter" and by_id[0].attempts[0].error == "rt: 400 invalid queue"
    assert by_id[1].attempts == (), "an event not yet attempted has no attempts"
    assert await store.alert_trail(ALERT.format("never-seen")) == []


async def test_an_outcome_without_a_trail_records_no_attempt(store):
    await store.accept(event("bare"))
    [c] = await store.claim(10, LONG)
    await store.complete(c)
    [got] = await store.alert_trail(ALERT.format("bare"))
    assert got.state == "delivered" and got.attempts == ()


async def test_recent_events_lists_newest_first_filtered_by_state_and_time(store):
    for n in range(4):
        await store.accept(event(f"r{n}"))
    claims = {c.event.alert_id: c for c in await store.claim(10, LONG)}
    await store.complete(with_trail(claims[ALERT.format("r0")], call("create", ticket="7")))
    await store.dead_letter(with_trail(claims[ALERT.format("r1")], call("create", "401")), "rt: 401")
    await store.retry_later(claims[ALERT.format("r2")], LONG, "rt: 503")
    listed = await store.recent_events()
    assert [t.alert_id for t in listed] == [ALERT.format(f"r{n}") for n in (3, 2, 1, 0)], "newest first"
    assert {t.alert_id: t.state for t in listed} == {
        ALERT.format("r0"): "delivered", ALERT.format("r1"): "dead",
        ALERT.format("r2"): "pending", ALERT.format("r3"): "pending"}
    assert [t.tickets for t in listed if t.alert_id == ALERT.format("r0")] == [(TicketLink("rt", "7"),)]
    assert [t.alert_id for t in await store.recent_events(state="dead")] == [ALERT.format("r1")]
    assert len(await store.recent_events(state="pending")) == 2
    assert len(await store.recent_events(limit=1)) == 1
    assert await store.recent_events(since=time.time() + 3600) == [], "nothing was received in the future"
    assert len(await store.recent_events(since=time.time() - 3600)) == 4
    with pytest.raises(ValueError, match="unknown state 'lost'"):
        await store.recent_events(state="lost")


async def test_expire_deletes_an_events_trail_with_it_and_keeps_a_pending_ones(store):
    for alert in ("x1", "x2", "keep"):
        await store.accept(event(alert))
    claims = {c.event.alert_id: c for c in await store.claim(10, LONG)}
    await store.complete(with_trail(claims[ALERT.format("x1")], call("create", ticket="1")))
    await store.dead_letter(with_trail(claims[ALERT.format("x2")], call("create", "400")), "rt: 400")
    await store.retry_later(with_trail(claims[ALERT.format("keep")], call("create", "503")), LONG, "rt: 503")
    gone = await store.expire(time.time() + 91 * DAY, RETAIN)
    assert (gone.events, gone.dead_letters) == (1, 1)
    assert await store.alert_trail(ALERT.format("x1")) == []
    assert await store.alert_trail(ALERT.format("x2")) == []
    [kept] = await store.alert_trail(ALERT.format("keep"))
    assert [a.outcome for a in kept.attempts] == ["retry"], "a pending event keeps its trail"
    assert await trail_rows(store) == 1, "the expired events' trail rows are gone, not orphaned"


async def trail_rows(store: Store) -> int:
    if isinstance(store, SqliteStore):
        return await store._read(lambda: store._rdb().execute("SELECT COUNT(*) FROM trail").fetchone()[0])
    assert isinstance(store, AzureStorageStore)
    rows = store._t.query_entities("RowKey ge 'r-' and RowKey lt 'r.'", select=["RowKey"])
    return len([r async for r in rows])


async def test_a_long_trail_is_bounded_to_what_one_table_property_holds(store):
    await store.accept(event("long"))
    [c] = await store.claim(10, LONG)
    many = [TrailEntry(at=float(n), kind="call", target="rt", what="note", status="503", detail="x" * 2000)
            for n in range(200)]
    await store.complete(with_trail(c, *many))
    [got] = await store.alert_trail(ALERT.format("long"))
    [attempt] = got.attempts
    assert 1 < len(attempt.entries) <= TRAIL_ENTRIES_LIMIT
    assert attempt.entries[0].at == 0.0 and attempt.entries[-1].at == 199.0, "its first and last entries stay"
    assert all(len(e.detail) <= TRAIL_DETAIL_LIMIT for e in attempt.entries)


async def test_sqlite_trail_rides_in_the_outcomes_group_commit():
    """Issue 11's budget: recording the trail adds no commit (no fsync) of its own."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "relay.db")
        await store.open()
        try:
            await store.accept(event("cost"))
            [c] = await store.claim(10, LONG)
            before = store.commits
            await store.complete(with_trail(c, call("create", ticket="1")))
            assert store.commits - before == 1, "complete with its trail is one group commit"
            [got] = await store.alert_trail(ALERT.format("cost"))
            assert got.attempts[0].outcome == "delivered"
        finally:
            await store.close()


async def test_azure_trail_adds_no_storage_operation_to_an_outcome(azure):
    """The trail row rides in the entity batch the outcome already sends (complete, dead letter) or
    turns the retry's single update into a batch of two: one request either way."""
    azure._next_sweep = float("inf")
    await azure.accept(event("ops-trail"))
    [c] = await azure.claim(10, 1)
    before = azure.operations.snapshot()
    await azure.retry_later(with_trail(c, call("create", "503")), 0, "rt: 503")
    diff = azure.operations.snapshot() - before
    assert diff[("table", "entity group transaction")] == 1 and diff[("table", "merge entity")] == 0, diff
    assert sum(v for (svc, _), v in diff.items() if svc == "table") == 1, diff
    [c] = await claim_eventually(azure)
    before = azure.operations.snapshot()
    await azure.complete(with_trail(c, call("create", ticket="9")))
    diff = azure.operations.snapshot() - before
    assert diff == {("table", "entity group transaction"): 1, ("table", "query entities"): 1,
                    ("queue", "delete message"): 1}, "the same three operations as a complete without trail"
    [got] = await azure.alert_trail(ALERT.format("ops-trail"))
    assert [a.outcome for a in got.attempts] == ["retry", "delivered"]


# -- the trace context (relay/telemetry.py: delivery's span continues intake's trace) ----------------------

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_an_events_trace_context_comes_back_with_every_read_of_it_on_any_replica(backend):
    first, second = await backend.replica(), await backend.replica()
    traced = dataclasses.replace(event("traced"), trace_context=TRACEPARENT)
    plain = event("plain")
    assert await first.accept(traced) and await first.accept(plain)
    claims: dict[str, Claim] = {}
    while len(claims) < 2:
        claims.update({c.event.key: c for c in await claim_eventually(second)})
    assert claims[traced.key].event.trace_context == TRACEPARENT, "the claim on another replica lost it"
    assert claims[plain.key].event.trace_context == "", "an event accepted untraced must carry nothing"
    stored = await second.event(traced.alert_id, traced.key)
    assert stored is not None and stored.trace_context == TRACEPARENT
    await second.dead_letter(claims[traced.key], "boom")
    [dl] = await second.dead_letters()
    assert dl.event.trace_context == TRACEPARENT
    await second.replay(None)
    [again] = await claim_eventually(first)
    assert again.event.trace_context == TRACEPARENT, "a replayed dead letter left its trace"


async def test_azure_a_trace_context_adds_no_storage_operation_and_nothing_without_tracing(azure):
    azure._next_sweep = float("inf")
    costs = []
    for name, context in (("ops-untraced", ""), ("ops-traced", TRACEPARENT)):
        before = azure.operations.snapshot()
        assert await azure.accept(dataclasses.replace(event(name), trace_context=context))
        [c] = await azure.claim(10, LONG)
        await azure.complete(c)
        costs.append(azure.operations.snapshot() - before)
    assert costs[0] == costs[1], f"tracing changed an event's storage operations: {costs}"
    rows = {e["key"]: e async for e in azure._t.query_entities("RowKey ge 'e-' and RowKey lt 'e.'")}
    untraced, traced = event("ops-untraced").key, event("ops-traced").key
    assert "trace_context" not in rows[untraced], "an untraced event must store no trace property"
    assert rows[traced]["trace_context"] == TRACEPARENT
