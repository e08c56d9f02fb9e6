"""The embedded store: one SQLite file in WAL mode with synchronous=FULL.

All database work runs on one dedicated thread, so the event loop never blocks on disk. Concurrent
`accept` calls are group-committed: while one transaction is being fsynced, new events gather in the
next batch, so one fsync covers many alerts and durability does not cap throughput.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from relay.schema import SQLITE_URL_PREFIX
from relay.store.base import (
    Claim,
    DeadLetter,
    Event,
    LeaseLost,
    StoreUnavailable,
    TicketRecord,
    VersionConflict,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    -- A plain rowid (no AUTOINCREMENT): events are never deleted from the top, so a new row's seq
    -- is always above every earlier one, which _insert_batch relies on.
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    alert_id TEXT NOT NULL,
    condition TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY REFERENCES events(seq),
    alert_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    available_at REAL NOT NULL,
    lease_until REAL,
    receipt TEXT,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_by_alert ON deliveries(alert_id, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY REFERENCES events(seq),
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    dead_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tickets (
    target TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (target, key)
);
"""


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None
        self._batch: list[tuple[Event, asyncio.Future[bool]]] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self.commits = 0  # transactions committed by accept(); tests and benchmarks read it

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        path = url.removeprefix(SQLITE_URL_PREFIX)
        if not path.startswith("/") or path == "/":
            raise ValueError(f"malformed sqlite store URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db")
        path = path[1:]  # sqlite:///x.db -> x.db ; sqlite:////abs/x.db -> /abs/x.db
        return cls(path)

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open_sync)
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="sqlite-group-commit")

    def _open_sync(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if self.path != ":memory:":
            # 0600: the store holds alert bodies; SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an acknowledged alert survives power loss.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
        self._conn = conn

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None
        self._wake = None  # accept() after close must fail, not wait for a writer that is gone
        for _, fut in self._batch:
            if not fut.done():
                fut.set_exception(StoreUnavailable("store closed"))
        self._batch.clear()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            pending = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except RuntimeError as exc:  # the executor is shut down: the store was closed
            raise StoreUnavailable("sqlite: store is closed") from exc
        try:
            return await pending
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.OperationalError("store is not open")
        return self._conn

    # -- intake ----------------------------------------------------------------------------------

    async def accept(self, event: Event) -> bool:
        if self._wake is None:
            raise StoreUnavailable("store is not open")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._batch.append((event, fut))
        self._wake.set()
        return await fut

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._batch = self._batch, []
            if not batch:
                continue
            try:
                inserted = await self._run(self._insert_batch, [e for e, _ in batch])
            except Exception as exc:  # every waiter learns the commit failed; none is acknowledged
                err = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(str(exc))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self.commits += 1
            for (_, fut), new in zip(batch, inserted, strict=True):
                if not fut.done():
                    fut.set_result(new)

    def _insert_batch(self, events: list[Event]) -> list[bool]:
        # A handful of statements per batch, not per event: this thread then holds the GIL only
        # briefly and the event loop keeps serving requests while SQLite writes and fsyncs.
        db = self._db()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            before = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            db.executemany(
                "INSERT OR IGNORE INTO events (key, alert_id, condition, occurred_at, body, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(ev.key, ev.alert_id, ev.condition, ev.occurred_at, ev.body, now) for ev in events],
            )
            db.execute(
                "INSERT INTO deliveries (seq, alert_id, available_at)"
                " SELECT seq, lower(alert_id), ? FROM events WHERE seq > ?",
                (now, before),
            )
            inserted = {row[0] for row in db.execute("SELECT key FROM events WHERE seq > ?", (before,))}
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        # A key inserted by this batch is new for its first holder only; later copies are duplicates.
        results = []
        for ev in events:
            results.append(ev.key in inserted)
            inserted.discard(ev.key)
        return results

    async def ping(self) -> None:
        # Take and release the write lock: SELECT 1 succeeds even when nothing can commit.
        await self._run(self._in_tx, lambda db: None)

    async def pending(self) -> int:
        return await self._run(lambda: self._db().execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])

    async def events(self) -> list[Event]:
        """Every event ever accepted, in acceptance order (for tests and audits)."""

        def read() -> list[Event]:
            rows = self._db().execute(
                "SELECT key, alert_id, condition, occurred_at, body FROM events ORDER BY seq"
            ).fetchall()
            return [Event(*row) for row in rows]

        return await self._run(read)

    # -- delivery --------------------------------------------------------------------------------

    async def claim(self, limit: int, lease_seconds: float) -> list[Claim]:
        return await self._run(self._claim_sync, limit, lease_seconds)

    def _claim_sync(self, limit: int, lease_seconds: float) -> list[Claim]:
        db = self._db()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            # Only the head of each alert's queue is claimable, so one alert's events go in order;
            # a leased or backing-off head holds the events behind it. A replayed dead letter goes
            # back in at its old place, ahead of an event that may be leased: none while one is.
            rows = db.execute(
                """
                SELECT d.seq, d.attempts, e.key, e.alert_id, e.condition, e.occurred_at, e.body, e.received_at
                FROM deliveries d JOIN events e ON e.seq = d.seq
                WHERE d.available_at <= ? AND (d.lease_until IS NULL OR d.lease_until <= ?)
                  AND d.seq = (SELECT MIN(d2.seq) FROM deliveries d2 WHERE d2.alert_id = d.alert_id)
                  AND NOT EXISTS (SELECT 1 FROM deliveries d3
                                  WHERE d3.alert_id = d.alert_id AND d3.lease_until > ?)
                ORDER BY d.seq LIMIT ?
                """,
                (now, now, now, limit),
            ).fetchall()
            claims = []
            for seq, attempts, key, alert_id, condition, occurred_at, body, received_at in rows:
                receipt = uuid.uuid4().hex
                db.execute(
                    "UPDATE deliveries SET lease_until = ?, receipt = ?, attempts = attempts + 1 WHERE seq = ?",
                    (now + lease_seconds, receipt, seq),
                )
                event = Event(key, alert_id, condition, occurred_at, body)
                claims.append(Claim(event=event, receipt=receipt, attempts=attempts, handle=str(seq),
                                    received_at=received_at))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return claims

    async def renew(self, claim: Claim, lease_seconds: float) -> None:
        def extend(db: sqlite3.Connection) -> None:
            cur = db.execute(
                "UPDATE deliveries SET lease_until = ? WHERE seq = ? AND receipt = ?",
                (time.time() + lease_seconds, int(claim.handle), claim.receipt),
            )
            if cur.rowcount != 1:
                raise LeaseLost(f"event {claim.handle}: the lease is no longer this worker's")

        await self._run(self._in_tx, extend)

    async def complete(self, claim: Claim) -> None:
        await self._run(self._in_tx, lambda db: db.execute(
            "DELETE FROM deliveries WHERE seq = ? AND receipt = ?", (int(claim.handle), claim.receipt)
        ))

    async def retry_later(self, claim: Claim, delay_seconds: float, error: str, *,
                          count_attempt: bool = True) -> None:
        await self._run(self._in_tx, lambda db: db.execute(
            "UPDATE deliveries SET available_at = ?, lease_until = NULL, receipt = NULL, last_error = ?,"
            " attempts = attempts - ? WHERE seq = ? AND receipt = ?",
            (time.time() + delay_seconds, error[:2000], 0 if count_attempt else 1, int(claim.handle),
             claim.receipt),
        ))

    async def dead_letter(self, claim: Claim, error: str) -> None:
        def move(db: sqlite3.Connection) -> None:
            cur = db.execute(
                "DELETE FROM deliveries WHERE seq = ? AND receipt = ?", (int(claim.handle), claim.receipt)
            )
            if cur.rowcount == 1:
                db.execute(
                    "INSERT OR REPLACE INTO dead_letters (seq, attempts, error, dead_at) VALUES (?, ?, ?, ?)",
                    (int(claim.handle), claim.attempts + 1, error[:4000], time.time()),
                )

        await self._run(self._in_tx, move)

    async def dead_letters(self) -> list[DeadLetter]:
        def read() -> list[DeadLetter]:
            rows = self._db().execute(
                "SELECT x.seq, x.attempts, x.error, x.dead_at, e.key, e.alert_id, e.condition, e.occurred_at,"
                " e.body FROM dead_letters x JOIN events e ON e.seq = x.seq ORDER BY x.seq"
            ).fetchall()
            return [
                DeadLetter(id=str(seq), event=Event(*ev), attempts=att, error=err, dead_at=at)
                for seq, att, err, at, *ev in rows
            ]

        return await self._run(read)

    async def replay(self, ids: list[str] | None) -> int:
        def move(db: sqlite3.Connection) -> int:
            if ids is None:
                seqs = [r[0] for r in db.execute("SELECT seq FROM dead_letters ORDER BY seq")]
            else:
                seqs = []
                for i in ids:
                    found = i.isdigit() and db.execute(
                        "SELECT 1 FROM dead_letters WHERE seq = ?", (int(i),)
                    ).fetchone()
                    if not found:
                        raise KeyError(f"no dead letter with id {i!r}")
                    seqs.append(int(i))
            now = time.time()
            for seq in seqs:
                db.execute(
                    "INSERT INTO deliveries (seq, alert_id, available_at)"
                    " SELECT seq, lower(alert_id), ? FROM events WHERE seq = ?",
                    (now, seq),
                )
                db.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))
            return len(seqs)

        return await self._run(self._in_tx, move)

    # -- ticket records ----------------------------------------------------------------------------

    async def get_ticket(self, target: str, key: str) -> TicketRecord | None:
        def read() -> TicketRecord | None:
            row = self._db().execute(
                "SELECT data, version FROM tickets WHERE target = ? AND key = ?", (target, key)
            ).fetchone()
            if row is None:
                return None
            return TicketRecord(target=target, key=key, data=json.loads(row[0]), version=str(row[1]))

        return await self._run(read)

    async def put_ticket(self, record: TicketRecord) -> TicketRecord:
        def write(db: sqlite3.Connection) -> TicketRecord:
            data = json.dumps(record.data, sort_keys=True)
            if record.version is None:
                cur = db.execute(
                    "INSERT OR IGNORE INTO tickets (target, key, data, version) VALUES (?, ?, ?, 1)",
                    (record.target, record.key, data),
                )
                new_version = 1
            else:
                new_version = int(record.version) + 1
                cur = db.execute(
                    "UPDATE tickets SET data = ?, version = ? WHERE target = ? AND key = ? AND version = ?",
                    (data, new_version, record.target, record.key, int(record.version)),
                )
            if cur.rowcount != 1:
                raise VersionConflict(f"ticket record {record.target}/{record.key} changed since it was read")
            return TicketRecord(record.target, record.key, record.data, str(new_version))

        return await self._run(self._in_tx, write)

    def _in_tx(self, fn: Any) -> Any:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result
