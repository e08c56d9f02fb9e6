"""SQLite specifics: durability settings, group commit of every write, the reader connection, claims
whose cost does not grow with the backlog, priorities, single ownership, a full disk, retention's
file size, and migrating a file written by an older relay."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.dev_issuer import DevIssuer
from relay.app import create_app
from relay.settings import Settings
from relay.store import (
    Event,
    Retention,
    StoreInUse,
    StoreUnavailable,
    TicketRecord,
    idempotency_key,
    open_store,
)
from relay.store.base import PRIORITIES, PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_URGENT, delivery_priority
from relay.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests.conftest import load_sample, require_e2e
from tests.relay_process import ROOT, RelayProcess, free_port

LONG = 120.0


def event(i: int | str, condition: str = "Fired", at: str = "2025-01-01T00:00:00Z", body: bytes = b"{}",
          priority: int = PRIORITY_NORMAL) -> Event:
    alert_id = f"/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/{i}"
    return Event(idempotency_key(alert_id, condition, at), alert_id, condition, at, body, priority)


@pytest.fixture
async def store(tmp_path):
    s = SqliteStore(tmp_path / "relay.db")
    await s.open()
    yield s
    await s.close()


async def opened(path: Path, **kw: bool) -> SqliteStore:
    s = SqliteStore(path, **kw)
    await s.open()
    return s


# -- durability and the group commit ------------------------------------------------------------------


async def test_database_is_wal_with_full_sync(store):
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    sync = await store._run(lambda: store._db().execute("PRAGMA synchronous").fetchone()[0])
    assert sync == 2, "synchronous must be FULL (2) so an acknowledged alert survives power loss"


async def test_concurrent_accepts_are_group_committed(store):
    results = await asyncio.gather(*(store.accept(event(i)) for i in range(500)))
    assert all(results)
    assert await store.pending() == 500
    assert store.commits < 50, f"500 concurrent accepts took {store.commits} commits: no group commit"


async def test_duplicates_inside_one_batch_are_recorded_once(store):
    results = await asyncio.gather(*(store.accept(event(7)) for _ in range(20)))
    assert sorted(results) == [False] * 19 + [True]
    assert await store.pending() == 1


async def test_failed_commit_acknowledges_nobody(store):
    store._conn.close()
    with pytest.raises(StoreUnavailable):
        await asyncio.gather(*(store.accept(event(i)) for i in range(5)))


async def test_worker_writes_share_intakes_group_commits(store):
    await asyncio.gather(*(store.accept(event(i)) for i in range(200)))
    claims = await store.claim(200, LONG)
    assert len(claims) == 200
    before = store.commits
    await asyncio.gather(
        *(store.accept(event(1000 + i)) for i in range(200)),
        *(store.renew(c, LONG) for c in claims[:100]),
        *(store.complete(c) for c in claims[:100]),
        *(store.retry_later(c, LONG, "ServiceNow answered 503") for c in claims[100:150]),
        *(store.dead_letter(c, "ServiceNow answered 400") for c in claims[150:]),
        *(store.put_ticket(TicketRecord("rt", f"k{i}", {"ticket_id": str(i)})) for i in range(50)),
    )
    spent = store.commits - before
    assert spent < 30, f"800 concurrent writes of intake and the worker took {spent} commits: they do not share"
    assert await store.pending() == 200 + 50
    assert len(await store.dead_letters()) == 50


async def test_one_writes_failure_undoes_only_that_write_in_a_shared_commit(store):
    await store.accept(event(1))
    [c] = await store.claim(1, LONG)
    await store.complete(c)
    results = await asyncio.gather(store.renew(c, LONG), store.accept(event(2)),
                                   store.put_ticket(TicketRecord("rt", "k", {}, version="7")),
                                   return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["LeaseLost", "bool", "VersionConflict"]
    assert await store.pending() == 1, "the accept committed beside the two refused writes"


async def test_ticket_reads_asked_for_together_take_one_hop_to_the_reader(store, monkeypatch):
    await asyncio.gather(*(store.put_ticket(TicketRecord("rt", f"k{i}", {"ticket_id": str(i)})) for i in range(20)))
    hops = []
    submit = store._reader_executor.submit
    monkeypatch.setattr(store._reader_executor, "submit", lambda *a, **k: hops.append(1) or submit(*a, **k))
    records = await asyncio.gather(*(store.get_ticket("rt", f"k{i}") for i in range(25)))
    assert len(hops) == 1, f"25 ticket reads asked for in one turn took {len(hops)} trips to the reader thread"
    assert [r.data["ticket_id"] if r else None for r in records] == [str(i) for i in range(20)] + [None] * 5


async def test_a_failing_read_in_a_shared_hop_fails_only_its_own_caller(store, monkeypatch):
    hops = []
    submit = store._reader_executor.submit
    monkeypatch.setattr(store._reader_executor, "submit", lambda *a, **k: hops.append(1) or submit(*a, **k))

    def broken() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    results = await asyncio.gather(store._read_together(broken), store._read_together(lambda: "fine"),
                                   return_exceptions=True)
    assert len(hops) == 1, "the two reads were meant to share one hop"
    assert isinstance(results[0], StoreUnavailable), f"a read's own SQLite error gave {results[0]!r}"
    assert results[1] == "fine", f"the read beside a failing one got {results[1]!r}, not its own answer"


async def test_reads_run_on_their_own_connection_beside_the_writes(store):
    gate = threading.Event()
    held = asyncio.ensure_future(store._read(gate.wait))  # a long read holds the reader thread
    try:
        # Hang guards, not timings: without a separate reader these would wait for the gate forever.
        assert await asyncio.wait_for(store.accept(event(1)), 30)
        [c] = await asyncio.wait_for(store.claim(1, LONG), 30)
        await asyncio.wait_for(store.complete(c), 30)
        await asyncio.wait_for(store.ping(), 30)
        assert not held.done()
    finally:
        gate.set()
        await held
    record = await store.put_ticket(TicketRecord("rt", "k", {"ticket_id": "1"}))
    assert await store.get_ticket("rt", "k") == record, "a read sees what the writer committed"


async def test_closing_mid_commit_fails_the_batch_being_written_instead_of_leaving_it_waiting(tmp_path):
    store = await opened(tmp_path / "relay.db")
    gate = threading.Event()
    blocker = asyncio.ensure_future(store._run(gate.wait))  # the writer thread is busy
    write = asyncio.ensure_future(store.accept(event(1)))
    for _ in range(3000):  # until the batch is handed to the (busy) writer thread
        if store._committing:
            break
        await asyncio.sleep(0.01)
    assert store._committing, "the accept never reached the writer"
    closing = asyncio.ensure_future(store.close())
    try:
        with pytest.raises(StoreUnavailable, match="store closed"):
            await asyncio.wait_for(write, 30)  # a hang guard: without the fix this never returns
    finally:
        gate.set()
        await blocker
        await closing


# -- claims read what they claim ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def vm_steps(store: SqliteStore) -> AsyncIterator[list[int]]:
    """Count SQLite VM steps (progress-handler calls, one per instruction) on the writer connection
    while the block runs; the count is in the yielded list's only item."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    await store._run(lambda: store._db().set_progress_handler(count, 1))
    try:
        yield steps
    finally:
        await store._run(lambda: store._db().set_progress_handler(None, 1))


async def claim_cost(path: Path, backlog: int) -> int:
    """SQLite VM steps (progress-handler calls, one per instruction) of claiming and completing 10
    events with `backlog` waiting: half as many alerts' heads, half queued behind one leased head."""
    store = await opened(path)
    try:
        await store.accept(event("busy", at="t0"))
        [busy] = await store.claim(1, LONG)
        await asyncio.gather(*(store.accept(event("busy", at=f"t{i + 1}")) for i in range(backlog // 2)))
        await asyncio.gather(*(store.accept(event(i)) for i in range(backlog // 2)))
        async with vm_steps(store) as steps:
            claims = await store.claim(10, LONG)
            for c in claims:
                await store.complete(c)
        assert len(claims) == 10 and busy.event.key not in {c.event.key for c in claims}
        return steps[0]
    finally:
        await store.close()


async def test_claim_cost_does_not_grow_with_the_backlog(tmp_path):
    small = await claim_cost(tmp_path / "small.db", 100)
    large = await claim_cost(tmp_path / "large.db", 10_000)
    assert large <= small * 1.2, (
        f"claiming 10 events cost {small} SQLite steps with 100 waiting and {large} with 10,000: "
        "the claim scans the backlog"
    )


async def accept_cost(path: Path, backlog: int) -> int:
    """SQLite VM steps of one group commit of 32 new alerts with `backlog` events waiting."""
    store = await opened(path)
    try:
        await asyncio.gather(*(store.accept(event(f"old-{i}")) for i in range(backlog)))
        async with vm_steps(store) as steps:
            await asyncio.gather(*(store.accept(event(f"new-{i}")) for i in range(32)))
        return steps[0]
    finally:
        await store.close()


async def test_accept_cost_does_not_grow_with_the_backlog(tmp_path):
    # Regression: the heads upkeep at accept scanned every waiting event (intake halved under a backlog).
    small = await accept_cost(tmp_path / "small.db", 100)
    large = await accept_cost(tmp_path / "large.db", 10_000)
    assert large <= small * 1.5, (
        f"accepting 32 events cost {small} SQLite steps with 100 waiting and {large} with 10,000: "
        "accept scans the backlog"
    )


class _RowCounter:
    """The writer's connection, counting the rows its statements hand back to Python."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn, self.rows = conn, 0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._conn, name)

    def execute(self, *args):  # type: ignore[no-untyped-def]
        rows = self._conn.execute(*args).fetchall()
        self.rows += len(rows)
        return _Rows(rows)


class _Rows(list):
    def fetchone(self):  # type: ignore[no-untyped-def]
        return self[0] if self else None

    def fetchall(self):  # type: ignore[no-untyped-def]
        return list(self)


async def test_a_group_commit_reads_back_rows_per_batch_not_per_event(tmp_path):
    # Each row a statement returns is a step the sqlite3 module takes with the GIL let go and taken back:
    # with the event loop busy, each was a wait (a context switch) on the commit's path.
    store = await opened(tmp_path / "rows.db")
    try:
        counter = _RowCounter(store._db())
        store._conn = counter  # type: ignore[assignment]
        results = await asyncio.gather(*(store.accept(event(f"new-{i}")) for i in range(32)),
                                       store.accept(event("new-0")))
        assert results == [True] * 32 + [False], "one new event each, the repeat a duplicate"
        assert counter.rows <= 4, f"one group commit of 32 accepts read {counter.rows} rows back from SQLite"
    finally:
        store._conn = counter._conn
        await store.close()


def test_claim_plan_is_an_index_range_on_the_heads(tmp_path):
    s = SqliteStore(tmp_path / "plan.db")
    asyncio.run(s.open())
    asyncio.run(s.close())
    conn = sqlite3.connect(tmp_path / "plan.db")
    plan = " ".join(row[3] for row in conn.execute(
        "EXPLAIN QUERY PLAN SELECT alert_id, seq FROM heads WHERE priority = ? AND due_at <= ?"
        " ORDER BY due_at LIMIT ?", (1, 0.0, 10)))
    conn.close()
    assert "USING INDEX heads_by_due (priority=? AND due_at<?)" in plan, plan
    assert "TEMP B-TREE" not in plan, f"the claim sorts instead of reading the index in order: {plan}"


# -- priorities -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("condition", "severity", "priority"), [
    ("Resolved", "Sev4", PRIORITY_URGENT),
    ("Resolved", None, PRIORITY_URGENT),
    ("Fired", "Sev0", PRIORITY_URGENT),
    ("Fired", "Sev1", PRIORITY_URGENT),
    ("Fired", "Sev2", PRIORITY_NORMAL),
    ("Fired", None, PRIORITY_NORMAL),
    ("Fired", "Sev3", PRIORITY_LOW),
    ("Fired", "Sev4", PRIORITY_LOW),
])
def test_delivery_priority_puts_resolves_and_sev0_sev1_first(condition, severity, priority):
    assert delivery_priority(condition, severity) == priority


def test_event_from_alert_carries_its_priority():
    from relay.alerts import parse_alert

    doc = load_sample("testaction-metric-static-fired.json")
    doc["data"]["essentials"]["severity"] = "Sev4"
    body = json.dumps(doc).encode()
    assert Event.from_alert(parse_alert(doc), body).priority == PRIORITY_LOW
    doc["data"]["essentials"]["severity"] = "Sev1"
    assert Event.from_alert(parse_alert(doc), body).priority == PRIORITY_URGENT


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    backlog=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(PRIORITIES)), min_size=1, max_size=25),
    limit=st.integers(1, 6),
)
def test_backlog_goes_by_priority_and_never_breaks_an_alerts_order(backlog, limit):
    asyncio.run(check_priority_order(backlog, limit))


async def check_priority_order(backlog: list[tuple[int, int]], limit: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await opened(Path(tmp) / "relay.db")
        try:
            queues: dict[str, deque[tuple[str, int]]] = {}
            for n, (alert, priority) in enumerate(backlog):
                e = event(f"p{alert}", at=f"t{n}", priority=priority)
                assert await store.accept(e)
                queues.setdefault(e.alert_id, deque()).append((e.key, priority))
            while any(queues.values()):
                claims = await store.claim(limit, LONG)
                heads = {a: q[0] for a, q in queues.items() if q}
                assert len(claims) == min(limit, len(heads))
                for c in claims:
                    assert c.event.key == heads[c.event.alert_id][0], "an alert's events must go in order"
                taken = {c.event.alert_id for c in claims}
                lowest_taken = min(heads[a][1] for a in taken)
                left = [p for a, (_, p) in heads.items() if a not in taken]
                assert all(p <= lowest_taken for p in left), (
                    f"claimed priorities {sorted(heads[a][1] for a in taken)} while a head of "
                    f"priority {max(left)} waited"
                )
                for c in claims:
                    await store.complete(c)
                    queues[c.event.alert_id].popleft()
        finally:
            await store.close()


# -- single owner ---------------------------------------------------------------------------------------


async def test_second_owner_is_refused_naming_the_file(tmp_path):
    db = tmp_path / "relay.db"
    first = await opened(db, owner=True)
    try:
        second = SqliteStore(db, owner=True)
        with pytest.raises(StoreInUse) as info:
            await second.open()
        message = str(info.value)
        assert str(db) in message and f"pid {os.getpid()}" in message and "\n" not in message
        admin = await opened(db)  # not an owner: works beside it
        assert await admin.pending() == 0
        await admin.close()
    finally:
        await first.close()
    again = await opened(db, owner=True)  # closing released the lock
    await again.close()


async def test_open_store_owns_for_serving_and_not_for_admin_commands(tmp_path):
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    serving = open_store(url)
    await serving.open()
    try:
        with pytest.raises(StoreInUse):
            await open_store(url).open()
        admin = open_store(url, owner=False)
        await admin.open()
        await admin.close()
    finally:
        await serving.close()


async def test_new_owner_releases_its_dead_predecessors_leases_and_keeps_their_attempts(tmp_path):
    db = tmp_path / "relay.db"
    old = await opened(db, owner=True)
    for e in (event(1), event(2), event(1, at="later")):
        await old.accept(e)
    held = await old.claim(10, LONG)
    assert len(held) == 2
    await old.close()  # it "dies" holding both leases

    admin = await opened(db)
    assert await admin.claim(10, LONG) == [], "a non-owner must not release the owner's leases"
    await admin.close()

    new = await opened(db, owner=True)
    try:
        assert new.released_leases == 2
        again = await new.claim(10, LONG)
        assert sorted(c.event.key for c in again) == sorted(c.event.key for c in held), "they go at once"
        assert all(c.attempts == 1 for c in again), "the attempt the dead relay counted stays counted"
        for c in held:
            await new.complete(c)  # the dead relay's claims are void
        assert await new.pending() == 3
    finally:
        await new.close()


def test_second_relay_serve_is_refused_in_one_line_and_admin_commands_work_beside_it(tmp_path):
    issuer = DevIssuer()
    db = tmp_path / "relay.db"
    with issuer.serving_in_thread():
        env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{db}", "RELAY_LOG_LEVEL": "INFO"}
        first = RelayProcess(env, tmp_path / "first.log").start()
        try:
            second_env = {**os.environ, **env, "RELAY_HOST": "127.0.0.1", "RELAY_PORT": str(free_port())}
            second = subprocess.run([sys.executable, "-m", "relay", "serve"], env=second_env, cwd=ROOT,
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 1, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and str(db) in lines[0] and "in use by another relay" in lines[0], second.stderr
            admin = subprocess.run([sys.executable, "-m", "relay", "dead-letters", "--store", f"sqlite:///{db}",
                                    "list"], env={**os.environ}, cwd=ROOT, capture_output=True, text=True,
                                   timeout=120)
            assert admin.returncode == 0 and admin.stdout.strip() == "no dead letters", admin.stderr
            first.kill()  # SIGKILL: the kernel drops the dead relay's lock
            RelayProcess(env, tmp_path / "third.log").start().stop()
        finally:
            first.kill()


# -- a full disk -----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (this needs root). No fallback to `max_page_count`: a page limit fails inserts but
    not the readiness heartbeat's in-place update, so it cannot show /readyz going down."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        reason = f"cannot mount a small tmpfs: {done.stderr.strip() or done.returncode}"
        if require_e2e():
            pytest.fail(f"REQUIRE_E2E=1 but {reason}")
        pytest.skip(reason)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    """Take every free byte of the file system `path` is on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 512, 1):
            try:
                while os.write(fd, b"\0" * chunk):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


async def test_full_disk_fails_intake_and_readiness_as_disk_full_and_both_recover(small_disk, issuer,
                                                                                  aiohttp_client, caplog):
    """On a real 1 MiB tmpfs: intake answers 503 with Retry-After, the log says "disk full" (once, with no
    "cannot rollback" noise), /readyz fails because its check writes, and all of it recovers by itself."""
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{small_disk / 'relay.db'}"})
    client = await aiohttp_client(create_app(settings))
    auth = issuer.authorization()

    def body(n: int) -> bytes:
        doc = load_sample("testaction-metric-static-fired.json")
        doc["data"]["essentials"]["alertId"] = f"/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/d{n}"
        return json.dumps(doc).encode()

    async def post(n: int):  # type: ignore[no-untyped-def]
        return await client.post("/alerts", data=body(n), headers={"Authorization": auth,
                                                                   "Content-Type": "application/json"})

    assert (await post(0)).status == 202
    assert (await client.get("/readyz")).status == 200
    filler = small_disk / "filler"
    fill(filler)
    caplog.clear()
    refused = [await post(n) for n in range(1, 4)]
    assert [r.status for r in refused] == [503] * 3
    assert all(r.headers.get("Retry-After") for r in refused)
    ready = await client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["checks"]["store"] is False
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("relay")]
    store_errors = [m for m in logged if "store could not commit" in m]
    assert store_errors and all(m.count("disk full") == 1 for m in store_errors), logged
    assert not any("cannot rollback" in m for m in logged), logged

    filler.unlink()
    assert (await client.get("/readyz")).status == 200, "readiness must recover once space returns"
    assert (await post(1)).status == 202


async def test_disk_full_error_is_named_once_without_rollback_noise(small_disk):
    store = await opened(small_disk / "relay.db")
    try:
        await store.accept(event(0, body=b"x" * 2000))
        fill(small_disk / "filler")
        with pytest.raises(StoreUnavailable) as info:
            await store.accept(event(1, body=b"x" * 20000))
        assert str(info.value) == f"sqlite: disk full: cannot write {small_disk / 'relay.db'}"
        with pytest.raises(StoreUnavailable, match="disk full"):
            await store.ping()
        (small_disk / "filler").unlink()
        await store.ping()
        assert await store.accept(event(1, body=b"x" * 20000))
    finally:
        await store.close()


# -- retention -------------------------------------------------------------------------------------------


async def test_expire_keeps_the_newest_event_row_so_new_rows_number_above_every_old_one(store):
    for i in range(3):
        await store.accept(event(i))
    for c in await store.claim(10, LONG):
        await store.complete(c)
    gone = await store.expire(time.time() + 10**6, Retention(1, 1, 1))
    assert gone.events == 2
    [kept] = await store.events()
    assert kept.key == event(2).key
    assert await store.accept(event(0)), "an expired key is new again"
    [c] = await store.claim(10, LONG)
    assert int(c.handle) == 4, "a new row must number above every row ever written"


async def test_expire_deletes_a_dead_letters_event_with_it(store):
    for i in range(3):
        await store.accept(event(i))
    claims = await store.claim(10, LONG)
    for c in claims:
        await store.dead_letter(c, "HTTP 400")
    gone = await store.expire(time.time() + 10**6, Retention(10**9, 1, 1))
    assert (gone.dead_letters, gone.events) == (3, 0)
    assert [e.key for e in await store.events()] == [event(2).key], "only the newest row stays"


async def test_expire_refuses_a_negative_age(store):
    with pytest.raises(ValueError, match=r"Retention\.delivered_seconds must be 0 or more"):
        await store.expire(time.time(), Retention(-1, 1, 1))


async def stream_sizes(path: Path, rounds: int, retention: Retention | None) -> list[int]:
    """Database file size after each round of 200 events (2 KB bodies) accepted, delivered, and their
    ticket records closed; with `retention`, each round ends with an expire pass that finds them old."""
    store = await opened(path, owner=True)
    try:
        sizes = []
        for r in range(rounds):
            await asyncio.gather(*(store.accept(event(f"{r}-{i}", body=os.urandom(2000))) for i in range(200)))
            while claims := await store.claim(100, LONG):
                await asyncio.gather(*(store.complete(c) for c in claims))
            now = time.time()
            await asyncio.gather(*(store.put_ticket(TicketRecord("rt", f"{r}-{i}", {"n": i}, closed_at=now))
                                   for i in range(200)))
            if retention is not None:
                await store.expire(now + 3600, retention)
            await store._run(lambda: store._db().execute("PRAGMA wal_checkpoint(TRUNCATE)"))
            sizes.append(await store._run(os.path.getsize, path))
        return sizes
    finally:
        await store.close()


async def test_file_size_stays_flat_under_a_stream_once_retention_applies(tmp_path):
    """Freed pages go on SQLite's free list and later inserts reuse them (no VACUUM, no auto_vacuum):
    once retention deletes as much as arrives, the file stops growing. Without it, it grows every round."""
    short = Retention(delivered_seconds=60, dead_letter_seconds=60, ticket_seconds=60)
    kept = await stream_sizes(tmp_path / "retained.db", 12, short)
    grown = await stream_sizes(tmp_path / "unbounded.db", 12, None)
    assert grown[-1] > grown[2] * 3, f"the control stream should grow: {grown}"
    assert max(kept[2:]) <= kept[2] * 1.05, f"with retention the file grew round after round: {kept}"


# -- migration ---------------------------------------------------------------------------------------------

# The layout relays wrote before heads, priorities, closed_at and the heartbeat (user_version 0).
OLD_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, alert_id TEXT NOT NULL,
    condition TEXT NOT NULL, occurred_at TEXT NOT NULL, body BLOB NOT NULL, received_at REAL NOT NULL);
CREATE TABLE deliveries (seq INTEGER PRIMARY KEY REFERENCES events(seq), alert_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, available_at REAL NOT NULL, lease_until REAL, receipt TEXT,
    last_error TEXT);
CREATE INDEX deliveries_by_alert ON deliveries(alert_id, seq);
CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY REFERENCES events(seq), attempts INTEGER NOT NULL,
    error TEXT NOT NULL, dead_at REAL NOT NULL);
CREATE TABLE tickets (target TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (target, key));
"""


async def test_a_database_file_from_an_older_relay_is_migrated_in_place(tmp_path):
    db = tmp_path / "relay.db"
    conn = sqlite3.connect(db)
    conn.executescript(OLD_SCHEMA)
    delivered, a, b = event("done"), event("a"), event("a", "Resolved", at="2025-01-01T00:05:00Z")
    conn.execute("INSERT INTO events VALUES (1, ?, ?, ?, ?, ?, ?)",  # delivered by the old relay
                 (delivered.key, delivered.alert_id, delivered.condition, delivered.occurred_at, delivered.body,
                  time.time() - 100 * 86400))
    for seq, e in enumerate((a, b), start=2):
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (seq, e.key, e.alert_id, e.condition, e.occurred_at, e.body, time.time()))
        conn.execute("INSERT INTO deliveries (seq, alert_id, attempts, available_at, lease_until, receipt)"
                     " VALUES (?, ?, ?, 0, ?, ?)", (seq, e.alert_id.lower(), 3 if seq == 2 else 0,
                                                    time.time() + 3600 if seq == 2 else None,
                                                    "old" if seq == 2 else None))
    conn.execute("INSERT INTO tickets VALUES ('rt', 'k', '{\"ticket_id\": \"9\"}', 4)")
    conn.commit()
    conn.close()

    store = await opened(db, owner=True)
    try:
        [first] = await store.claim(10, LONG)
        assert first.event == a and first.attempts == 3, "the old relay's lease is released, its attempts kept"
        assert first.event.priority == PRIORITY_NORMAL
        assert await store.claim(10, LONG) == [], "the alert's next event still waits for its head"
        await store.complete(first)
        [second] = await store.claim(10, LONG)
        assert second.event == b
        ticket = await store.get_ticket("rt", "k")
        assert ticket is not None and ticket.data == {"ticket_id": "9"} and ticket.closed_at is None
        await store.put_ticket(TicketRecord("rt", "k", {"ticket_id": "9"}, ticket.version, closed_at=time.time()))
        assert not await store.accept(delivered), "the old relay's delivered event still deduplicates"
        gone = await store.expire(time.time() + 10**6, Retention(1, 1, 1))
        assert (gone.tickets, gone.events) == (1, 2), "the old delivered event and the one delivered since"
    finally:
        await store.close()
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_a_file_from_before_trace_contexts_gets_the_column_and_keeps_its_events(tmp_path):
    db = tmp_path / "relay.db"
    old, traced = event("old"), dataclasses.replace(event("new"), trace_context=TRACEPARENT)
    store = await opened(db, owner=True)
    await store.close()
    conn = sqlite3.connect(db)  # the layout of user_version 1: events without trace_context
    conn.execute("ALTER TABLE events DROP COLUMN trace_context")
    conn.execute("INSERT INTO events (seq, key, alert_id, condition, occurred_at, body, received_at, priority)"
                 " VALUES (1, ?, ?, ?, ?, ?, ?, 1)", (old.key, old.alert_id, old.condition, old.occurred_at,
                                                      old.body, time.time()))
    conn.execute("INSERT INTO deliveries (seq, alert_id, available_at) VALUES (1, ?, 0)", (old.alert_id.lower(),))
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()

    store = await opened(db, owner=True)
    try:
        [claim] = await store.claim(10, LONG)
        assert claim.event == old and claim.event.trace_context == "", "an old event reads as untraced"
        assert await store.accept(traced)
        assert not await store.accept(old), "the old event still deduplicates"
        stored = {e.key: e.trace_context for e in await store.events()}
        assert stored == {old.key: "", traced.key: TRACEPARENT}
        again = await store.event(traced.alert_id, traced.key)
        assert again is not None and again.trace_context == TRACEPARENT
    finally:
        await store.close()
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    rows = dict(check.execute("SELECT key, trace_context FROM events").fetchall())
    check.close()
    assert rows == {old.key: None, traced.key: TRACEPARENT}, "untraced events store NULL, nothing extra"


def test_store_url_forms(tmp_path):
    assert SqliteStore.from_url("sqlite:///relay.db").path == "relay.db"
    assert SqliteStore.from_url("sqlite:////var/lib/relay/relay.db").path == "/var/lib/relay/relay.db"
    assert SqliteStore.from_url("sqlite:///relay.db", owner=True).owner
    with pytest.raises(ValueError, match="malformed sqlite store URL"):
        SqliteStore.from_url("sqlite://relay.db")


async def test_a_commit_waits_for_its_turn_and_goes_the_moment_the_other_writer_lets_go(tmp_path):
    """Two processes write one file (`relay serve` and its delivery process): they take turns through a
    flock on `<db>.write-turn`, not through SQLite's sleep-and-retry busy handler, which let a writer that
    commits all the time starve the other (intake's commits waited up to 1.4 s)."""
    import fcntl

    from relay.store.sqlite_commits import WRITE_TURN_SUFFIX

    store = await opened(tmp_path / "relay.db", owner=True)
    other = os.open(str(tmp_path / "relay.db") + WRITE_TURN_SUFFIX, os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)  # the other process is committing
        accepting = asyncio.create_task(store.accept(event(1)))
        await asyncio.sleep(0.3)
        assert not accepting.done(), "a commit went ahead while another writer held its turn"
        fcntl.flock(other, fcntl.LOCK_UN)
        assert await asyncio.wait_for(accepting, 5) is True
    finally:
        os.close(other)
        await store.close()


async def test_the_owner_releases_its_dead_delivery_processs_leases_at_once(tmp_path):
    owner = await opened(tmp_path / "relay.db", owner=True)
    child = await opened(tmp_path / "relay.db")
    try:
        await owner.accept(event(1))
        [held] = await child.claim(10, lease_seconds=3600)
        assert await owner.claim(10, lease_seconds=30) == [], "a leased event was claimable"
        assert await owner.release_leases() == 1
        [again] = await owner.claim(10, lease_seconds=30)
        assert again.event.key == held.event.key and again.attempts == 1, "the attempt must stay counted"
        with pytest.raises(RuntimeError, match="only the relay that owns"):
            await child.release_leases()
    finally:
        await child.close()
        await owner.close()
