"""The embedded store: one SQLite file in WAL mode with synchronous=FULL, owned by one relay.

Every write (intake's accepts and the worker's claims, renewals and outcomes alike) is group-committed:
while one transaction is being fsynced, new writes gather in the next batch, so one fsync covers many of
them and intake's commits never wait behind a worker's separate transaction. The serving relay's accepts
commit in a process of their own (relay.store.sqlite_commits: why there); every other write, and every
write of a store opened with owner=False, goes through one writer thread. Reads run on a second
connection and thread (WAL lets readers beside the writer), so a long read never holds a commit up.

Claims read only what they claim: `heads` holds each alert's next event with its priority and the
time it is due, kept on every write that changes an alert's queue, so a claim is an index range
scan whatever the backlog. The relay that serves a file owns it through an advisory lock on
`<db>.lock` (`owner=True`); admin commands open it without taking ownership.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from relay.schema import SQLITE_URL_PREFIX
from relay.store.base import (
    PRIORITIES,
    TRAIL_DETAIL_LIMIT,
    Attempt,
    Claim,
    DeadLetter,
    Event,
    EventTrail,
    Expired,
    LeaseLost,
    Retention,
    StoreInUse,
    StoreUnavailable,
    TicketRecord,
    TrailEntry,
    VersionConflict,
    check_trail_query,
    tickets_of,
    trail_from_json,
    trail_json,
)
from relay.store.sqlite_commits import (
    JOURNAL_SIZE_LIMIT,
    CommitProcess,
    connect_writer,
    insert_events,
    is_disk_full,
    open_write_turn,
    rollback,
    unavailable,
    write_turn,
)

T = TypeVar("T")
log = logging.getLogger("relay.store.sqlite")

SCHEMA_VERSION = 2  # PRAGMA user_version; 0 is a file from before heads, priorities and closed_at, 1 before
# events.trace_context

TABLES = (
    # A plain rowid (no AUTOINCREMENT): a new row's seq is MAX(seq) + 1, which _insert_events relies
    # on; retention therefore never deletes the newest event row.
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        alert_id TEXT NOT NULL,
        condition TEXT NOT NULL,
        occurred_at TEXT NOT NULL,
        body BLOB NOT NULL,
        received_at REAL NOT NULL,
        priority INTEGER NOT NULL DEFAULT 1,
        delivered_at REAL,  -- set by complete; retention counts a delivered event's age from it
        trace_context TEXT  -- intake span's W3C traceparent (relay/telemetry.py); NULL with tracing off
    )""",
    """CREATE TABLE IF NOT EXISTS deliveries (
        seq INTEGER PRIMARY KEY REFERENCES events(seq),
        alert_id TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        available_at REAL NOT NULL,
        lease_until REAL,
        receipt TEXT,
        last_error TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        seq INTEGER PRIMARY KEY REFERENCES events(seq),
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        dead_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tickets (
        target TEXT NOT NULL,
        key TEXT NOT NULL,
        data TEXT NOT NULL,
        version INTEGER NOT NULL,
        closed_at REAL,
        PRIMARY KEY (target, key)
    )""",
)
# Columns added since the first layout: (table, column, declaration), added in place to an old file.
ADDED_COLUMNS = (
    ("events", "priority", "INTEGER NOT NULL DEFAULT 1"),
    ("events", "delivered_at", "REAL"),
    ("tickets", "closed_at", "REAL"),
    ("events", "trace_context", "TEXT"),
)
INDEXES = (
    "CREATE INDEX IF NOT EXISTS deliveries_by_alert ON deliveries(alert_id, seq)",
    # Each alert with something to deliver: its first queued event, and when that is due (its back-off
    # or its lease, whichever ends later). A claim scans (priority, due_at) and reads nothing else.
    """CREATE TABLE IF NOT EXISTS heads (
        alert_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        due_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS heads_by_due ON heads(priority, due_at)",
    # Retention's scans: delivered events by age, closed tickets by when they closed.
    "CREATE INDEX IF NOT EXISTS events_by_delivered ON events(delivered_at) WHERE delivered_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS dead_letters_by_age ON dead_letters(dead_at)",
    "CREATE INDEX IF NOT EXISTS tickets_by_closed ON tickets(closed_at) WHERE closed_at IS NOT NULL",
    # One row that /readyz's ping rewrites: readiness is "a commit reaches the disk", not "a SELECT works".
    "CREATE TABLE IF NOT EXISTS heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL)",
)
REBUILD_HEADS = """
    INSERT INTO heads (alert_id, seq, priority, due_at)
    SELECT d.alert_id, MIN(d.seq), e.priority, MAX(d.available_at, COALESCE(d.lease_until, 0))
    FROM deliveries d JOIN events e ON e.seq = d.seq GROUP BY d.alert_id
"""
# The alert trail: one row per recorded attempt of an event (its outcome, and the attempt's decisions and
# target calls as JSON), written inside the outcome's own write; retention deletes it with its event.
# Created at open when missing (files from before the trail), outside the numbered migrations.
TRAIL_TABLES = (
    """CREATE TABLE IF NOT EXISTS trail (
        id INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL,  -- events.seq
        at REAL NOT NULL,
        outcome TEXT NOT NULL,  -- delivered | retry | dead_letter
        error TEXT NOT NULL DEFAULT '',
        entries TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS trail_by_event ON trail(seq)",
)
# Rows one retention step deletes: short transactions, so intake's commits slip in between them.
EXPIRE_CHUNK = 500
# Checkpoints (copying the WAL into the database file, and fsyncing it) run on a thread and connection of
# their own, after this many group commits, never inside a commit: SQLite's automatic checkpoint ran in
# whichever commit crossed 1,000 WAL pages, and stalled every request waiting on that commit (the storm
# benchmark's slowest 202s came in clusters, one per automatic checkpoint). In WAL mode a checkpoint runs
# beside the writer; a PASSIVE one never waits for it or for readers. But SQLite starts the WAL over only
# when a write finds it wholly checkpointed, and under sustained load a write always came before the
# checkpoint had caught up: the WAL grew to 800 MB in 25 s of bench/intake.py's load, and the write that
# finally started it over (truncating it to JOURNAL_SIZE_LIMIT) took 70-290 ms, every request with it.
# So each checkpoint copies the bulk beside the writers, then takes the write turn for a second pass over
# the few frames written meanwhile (a few ms); the next write starts the WAL over.
CHECKPOINT_EVERY_COMMITS = 100
CHECKPOINT_PASSES_BESIDE_WRITERS = 4
CHECKPOINT_FRAMES_UNDER_TURN = 64  # at most about this many frames are left for the pass under the turn


class SqliteStore:
    """owner=True (the serving relay): take the lock file, refuse with StoreInUse if another relay
    holds it, and release the leases a dead predecessor held. owner=False: admin commands and tests;
    any number of them may open the file beside the owner."""

    def __init__(self, path: str | Path, *, owner: bool = False, commit_process: bool | None = None) -> None:
        self.path = str(path)
        # Intake's accepts commit in a process of their own (relay.store.sqlite_commits) where the serving
        # relay owns a file; elsewhere (and for an in-memory database) on the writer thread, as every
        # other write does.
        use_process = owner if commit_process is None else commit_process
        self._committer = (CommitProcess(self.path, on_commit=self._committed)
                           if use_process and self.path != ":memory:" else None)
        self.lock_path = self.path + ".lock"
        self.owner = owner
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._reader_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        self._checkpoint_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoint")
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_turn_fd: int | None = None  # its own: a flock is shared by the holders of one descriptor
        self._checkpointing: asyncio.Future[Any] | None = None
        self._commits_since_checkpoint = 0
        self.checkpoints = 0  # checkpoints run by the checkpoint thread; tests read it
        self._conn: sqlite3.Connection | None = None  # the writer's
        self._reader: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._turn_fd: int | None = None  # the write-turn file's (sqlite_commits.write_turn), for the writer thread
        self._accepts: list[tuple[Event, asyncio.Future[bool]]] = []
        self._ops: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._reads: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []  # _read_together's next batch
        self._committing: list[asyncio.Future[Any]] = []  # the batch being written now
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self.commits = 0  # group commits; tests and benchmarks read it
        self.released_leases = 0  # leases of a dead predecessor released at open (owner only)

    @classmethod
    def from_url(cls, url: str, *, owner: bool = False) -> SqliteStore:
        path = url.removeprefix(SQLITE_URL_PREFIX)
        if not path.startswith("/") or path == "/":
            raise ValueError(f"malformed sqlite store URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db")
        path = path[1:]  # sqlite:///x.db -> x.db ; sqlite:////abs/x.db -> /abs/x.db
        return cls(path, owner=owner)

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open_sync)
        if self._committer is not None:
            try:
                await self._committer.start()
            except BaseException:
                await self._run(self._close_writer)
                raise
        await self._read(self._open_reader)
        self._checkpointer = await asyncio.get_running_loop().run_in_executor(
            self._checkpoint_executor, self._connect_checkpointer)
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="sqlite-group-commit")

    def _open_sync(self) -> None:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if self.path != ":memory:":
                # 0600: the store holds alert bodies; SQLite gives its -wal and -shm files the same mode.
                os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            if self.owner:
                self._take_lock()
            self._turn_fd = open_write_turn(self.path)
        except OSError as exc:
            raise self._unavailable(exc) from exc
        try:
            conn = connect_writer(self.path)  # checkpoints: the checkpoint thread (CHECKPOINT_EVERY_COMMITS)
        except BaseException:
            self._drop_lock()
            raise
        try:
            self._migrate(conn)
            _ensure_trail(conn)
            if self.owner:
                self.released_leases = self._in_tx_on(conn, self._release_leases)
        except BaseException:
            conn.close()
            self._drop_lock()
            raise
        self._conn = conn

    def _connect_checkpointer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        return conn

    def _checkpoint(self) -> None:
        if self._checkpointer is None:
            return
        # Beside the writers, until a pass finds few frames written since the last (each pass copies what
        # came during the one before, and fsyncs the database), then the rest with every writer waiting.
        frames = -1
        for _ in range(CHECKPOINT_PASSES_BESIDE_WRITERS):
            _, log_frames, _ = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if 0 <= log_frames - frames < CHECKPOINT_FRAMES_UNDER_TURN:
                break
            frames = log_frames
        if self._checkpoint_turn_fd is None:
            self._checkpoint_turn_fd = open_write_turn(self.path)
        with write_turn(self._checkpoint_turn_fd):
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _committed(self) -> None:
        """A group commit of the commit process's."""
        self.commits += 1
        self._after_commit()

    def _after_commit(self) -> None:
        """Start a checkpoint on its own thread every CHECKPOINT_EVERY_COMMITS commits (one at a time);
        the commit path never waits for it."""
        self._commits_since_checkpoint += 1
        if self._commits_since_checkpoint < CHECKPOINT_EVERY_COMMITS or self._checkpointing is not None:
            return
        self._commits_since_checkpoint = 0
        self._checkpointing = asyncio.get_running_loop().run_in_executor(self._checkpoint_executor, self._checkpoint)
        self._checkpointing.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, fut: asyncio.Future[Any]) -> None:
        self._checkpointing = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:  # the next one tries again; the WAL keeps every commit meanwhile
            log.warning("sqlite: checkpoint of %s failed: %s", self.path, exc)
        else:
            self.checkpoints += 1

    def _open_reader(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA query_only=ON")
        self._reader = conn

    def _take_lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise StoreInUse(
                f"{self.path} is in use by another relay{by}: it holds {self.lock_path}; stop it first "
                "(`relay dead-letters` works beside it)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _drop_lock(self) -> None:
        # Closing the descriptor releases the flock; the file stays (deleting it would race a newcomer).
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._turn_fd is not None:
            os.close(self._turn_fd)
            self._turn_fd = None

    def _close_writer(self) -> None:
        """Close the writer's connection and let the lock go (an open that failed after them)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._drop_lock()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return

        def migrate(db: sqlite3.Connection) -> None:
            if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return  # another process migrated it while this one waited for the write lock
            for statement in TABLES:
                db.execute(statement)
            for table, column, decl in ADDED_COLUMNS:
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            # Events an older relay delivered: it kept no delivery time, so their age counts from intake.
            db.execute("UPDATE events SET delivered_at = received_at WHERE delivered_at IS NULL"
                       " AND seq NOT IN (SELECT seq FROM deliveries) AND seq NOT IN (SELECT seq FROM dead_letters)")
            for statement in INDEXES:
                db.execute(statement)
            db.execute("DELETE FROM heads")
            db.execute(REBUILD_HEADS)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

        self._in_tx_on(conn, migrate)

    @staticmethod
    def _release_leases(db: sqlite3.Connection) -> int:
        """The owner starts: every lease is a dead predecessor's, so its events go at once. Their
        attempts stay counted (a poison event that kills the relay still reaches its limit). `heads` is
        rebuilt too (one pass over the backlog), in case a relay too old to keep it wrote meanwhile."""
        released = db.execute(
            "UPDATE deliveries SET lease_until = NULL, receipt = NULL WHERE lease_until IS NOT NULL"
        ).rowcount
        db.execute("DELETE FROM heads")
        db.execute(REBUILD_HEADS)
        return released

    async def release_leases(self) -> int:
        """The owner's delivery process died: release every delivery lease (they were all its own: only
        the owner's delivery process claims), so its events go again at once rather than when their
        leases run out. Returns how many were released."""
        if not self.owner:
            raise RuntimeError(f"only the relay that owns {self.path} may release its leases")
        return await self._write(self._release_leases)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None
        self._wake = None  # writes after close must fail, not wait for a writer that is gone
        waiting = [fut for _, fut in [*self._accepts, *self._ops]] + self._committing
        for fut in waiting:
            if not fut.done():
                fut.set_exception(StoreUnavailable("store closed"))
        self._committing = []
        self._accepts.clear()
        self._ops.clear()
        if self._committer is not None:
            await self._committer.close()
        loop = asyncio.get_running_loop()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await loop.run_in_executor(self._reader_executor, reader.close)
        if self._checkpointing is not None:
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            await loop.run_in_executor(self._checkpoint_executor, checkpointer.close)
        if self._checkpoint_turn_fd is not None:
            os.close(self._checkpoint_turn_fd)
            self._checkpoint_turn_fd = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            # The last connection to close checkpoints the WAL into the database by itself.
            await loop.run_in_executor(self._executor, conn.close)
        await loop.run_in_executor(self._executor, self._drop_lock)
        self._executor.shutdown(wait=True)
        self._reader_executor.shutdown(wait=True)
        self._checkpoint_executor.shutdown(wait=True)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        """One clear message per failure; a full disk says so (SQLITE_FULL, or ENOSPC from the OS)."""
        return unavailable(self.path, str(exc), is_disk_full(exc))

    async def _run(self, fn: Any, *args: Any) -> Any:
        """Run `fn` on the writer's thread (outside the group commit: opening, and tests)."""
        return await self._on(self._executor, fn, *args)

    async def _read(self, fn: Any, *args: Any) -> Any:
        return await self._on(self._reader_executor, fn, *args)

    async def _read_together(self, fn: Callable[[], T]) -> T:
        """A short read (one row by its key). Those asked for in the same turn of the event loop go to the
        reader's thread together, in one hop: a hop each cost a thread wake-up and two GIL hand-overs on
        the event loop's side, and in a storm every delivery starts with one (its ticket record), all
        of a claim's deliveries in the same turn. Each read's own error goes to its own caller."""
        if self._reader is None:
            raise StoreUnavailable("sqlite: store is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._reads.append((fn, fut))
        if len(self._reads) == 1:
            loop.call_soon(self._send_reads)
        return await fut

    def _send_reads(self) -> None:
        batch, self._reads = self._reads, []
        try:
            done = asyncio.get_running_loop().run_in_executor(self._reader_executor, _each, [fn for fn, _ in batch])
        except RuntimeError:  # the executor is shut down: the store was closed
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(StoreUnavailable("sqlite: store is closed"))
            return
        done.add_done_callback(lambda finished: self._answer_reads(batch, finished))

    def _answer_reads(self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]],
                      finished: asyncio.Future[list[tuple[bool, Any]]]) -> None:
        failed = None if finished.cancelled() else finished.exception()
        if finished.cancelled() or failed is not None:
            error = failed or StoreUnavailable("sqlite: read cancelled")
            answers: list[tuple[bool, Any]] = [(False, error)] * len(batch)
        else:
            answers = finished.result()
        for (_, fut), (ok, value) in zip(batch, answers, strict=True):
            if fut.done():  # its caller gave up (cancelled)
                continue
            if ok:
                fut.set_result(value)
            elif isinstance(value, (sqlite3.Error, OSError)):
                fut.set_exception(self._unavailable(value))
            else:
                fut.set_exception(value)

    async def _on(self, executor: ThreadPoolExecutor, fn: Any, *args: Any) -> Any:
        try:
            pending = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except RuntimeError as exc:  # the executor is shut down: the store was closed
            raise StoreUnavailable("sqlite: store is closed") from exc
        try:
            return await pending
        except (sqlite3.Error, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.OperationalError("store is not open")
        return self._conn

    def _rdb(self) -> sqlite3.Connection:
        if self._reader is None:
            raise sqlite3.OperationalError("store is not open")
        return self._reader

    @staticmethod
    def _in_tx_on(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        return result

    # -- the group commit ------------------------------------------------------------------------

    async def accept(self, event: Event) -> bool:
        if self._wake is None:
            raise StoreUnavailable("store is not open")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._committer is not None:
            self._committer.add(event, fut)  # the commit process's own group commit
        else:
            self._accepts.append((event, fut))
            self._wake.set()
        return await fut

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in the next group commit; its own exception (LeaseLost, ...) undoes only its part."""
        if self._wake is None:
            raise StoreUnavailable("store is not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._ops.append((fn, fut))
        self._wake.set()
        return await fut

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            accepts, self._accepts = self._accepts, []
            ops, self._ops = self._ops, []
            if not accepts and not ops:
                continue
            self._committing = [fut for _, fut in [*accepts, *ops]]
            try:
                inserted, outcomes = await self._run(
                    self._commit_batch, [e for e, _ in accepts], [fn for fn, _ in ops]
                )
            except Exception as exc:  # every waiter learns the commit failed; none is acknowledged
                err = exc if isinstance(exc, StoreUnavailable) else self._unavailable(exc)
                for _, fut in [*accepts, *ops]:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self.commits += 1
            self._after_commit()
            for (_, fut), new in zip(accepts, inserted, strict=True):
                if not fut.done():
                    fut.set_result(new)
            for (_, fut), (ok, value) in zip(ops, outcomes, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _commit_batch(self, events: list[Event], ops: list[Callable[[sqlite3.Connection], Any]]
                      ) -> tuple[list[bool], list[tuple[bool, Any]]]:
        # A handful of statements per batch, not per event: this thread then holds the GIL only
        # briefly and the event loop keeps serving requests while SQLite writes and fsyncs.
        db = self._db()
        with write_turn(self._turn_fd):
            return self._commit_batch_in_turn(db, events, ops)

    def _commit_batch_in_turn(self, db: sqlite3.Connection, events: list[Event],
                              ops: list[Callable[[sqlite3.Connection], Any]]
                              ) -> tuple[list[bool], list[tuple[bool, Any]]]:
        db.execute("BEGIN IMMEDIATE")
        try:
            inserted = insert_events(db, events) if events else []
            outcomes: list[tuple[bool, Any]] = []
            for fn in ops:
                db.execute("SAVEPOINT op")
                try:
                    outcomes.append((True, fn(db)))
                except Exception as exc:
                    if not db.in_transaction:  # SQLite gave the whole transaction up: so does everyone
                        raise
                    db.execute("ROLLBACK TO op")
                    is_db_error = isinstance(exc, sqlite3.Error)
                    outcomes.append((False, self._unavailable(exc) if is_db_error else exc))
                db.execute("RELEASE op")
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        return inserted, outcomes

    @staticmethod
    def _refresh_head(db: sqlite3.Connection, alert_id: str) -> None:
        """Point the alert's head at its first queued event (or drop it): after that event's lease ended."""
        row = db.execute(
            "SELECT d.seq, e.priority, MAX(d.available_at, COALESCE(d.lease_until, 0))"
            " FROM deliveries d JOIN events e ON e.seq = d.seq WHERE d.alert_id = ? ORDER BY d.seq LIMIT 1",
            (alert_id,),
        ).fetchone()
        if row is None:
            db.execute("DELETE FROM heads WHERE alert_id = ?", (alert_id,))
        else:
            db.execute("INSERT OR REPLACE INTO heads (alert_id, seq, priority, due_at) VALUES (?, ?, ?, ?)",
                       (alert_id, *row))

    async def ping(self) -> None:
        # A real commit, through the same group commit as intake: a SELECT succeeds on a full disk.
        await self._write(lambda db: db.execute(
            "INSERT OR REPLACE INTO heartbeat (id, at) VALUES (1, ?)", (time.time(),)
        ))

    # -- reads (their own connection and thread) -------------------------------------------------

    async def pending(self) -> int:
        return await self._read(lambda: self._rdb().execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])

    async def events(self) -> list[Event]:
        """Every event still stored, in acceptance order (for tests and audits)."""

        def read() -> list[Event]:
            rows = self._rdb().execute(
                "SELECT key, alert_id, condition, occurred_at, body, priority, COALESCE(trace_context, '')"
                " FROM events ORDER BY seq"
            ).fetchall()
            return [Event(*row) for row in rows]

        return await self._read(read)

    async def event(self, alert_id: str, key: str) -> Event | None:
        """One stored event by its key (the scheduler's due events re-read a deferred event's body)."""

        def read() -> Event | None:
            row = self._rdb().execute(
                "SELECT key, alert_id, condition, occurred_at, body, priority, COALESCE(trace_context, '')"
                " FROM events WHERE key = ?", (key,)
            ).fetchone()
            return Event(*row) if row else None

        return await self._read(read)

    # -- delivery --------------------------------------------------------------------------------

    async def claim(self, limit: int, lease_seconds: float) -> list[Claim]:
        return await self._write(lambda db: self._claim(db, limit, lease_seconds))

    @staticmethod
    def _claim(db: sqlite3.Connection, limit: int, lease_seconds: float) -> list[Claim]:
        # Only an alert's head is claimable, so one alert's events go in order; a leased or
        # backing-off head (due later) holds the events behind it. Highest priority first, then
        # whichever came due first: one index range scan per priority, whatever the backlog.
        now = time.time()
        until = now + lease_seconds
        claims: list[Claim] = []
        for level in PRIORITIES:
            if len(claims) >= limit:
                break
            heads = db.execute(
                "SELECT alert_id, seq FROM heads WHERE priority = ? AND due_at <= ? ORDER BY due_at LIMIT ?",
                (level, now, limit - len(claims)),
            ).fetchall()
            for alert_id, seq in heads:
                receipt = uuid.uuid4().hex
                [(attempts,)] = db.execute(
                    "UPDATE deliveries SET lease_until = ?, receipt = ?, attempts = attempts + 1 WHERE seq = ?"
                    " RETURNING attempts",
                    (until, receipt, seq),
                ).fetchall()
                db.execute("UPDATE heads SET due_at = ? WHERE alert_id = ?", (until, alert_id))
                *columns, received_at = db.execute(
                    "SELECT key, alert_id, condition, occurred_at, body, priority, COALESCE(trace_context, ''),"
                    " received_at FROM events WHERE seq = ?", (seq,),
                ).fetchone()
                event = Event(*columns)
                claims.append(Claim(event=event, receipt=receipt, attempts=attempts - 1, handle=str(seq),
                                    received_at=received_at))
        return claims

    async def renew(self, claim: Claim, lease_seconds: float) -> None:
        def extend(db: sqlite3.Connection) -> None:
            until = time.time() + lease_seconds
            rows = db.execute(
                "UPDATE deliveries SET lease_until = ? WHERE seq = ? AND receipt = ? RETURNING alert_id",
                (until, int(claim.handle), claim.receipt),
            ).fetchall()
            if not rows:
                raise LeaseLost(f"event {claim.handle}: the lease is no longer this worker's")
            db.execute("UPDATE heads SET due_at = ? WHERE alert_id = ? AND seq = ?",
                       (until, rows[0][0], int(claim.handle)))

        await self._write(extend)

    async def complete(self, claim: Claim) -> None:
        def done(db: sqlite3.Connection) -> None:
            rows = db.execute("DELETE FROM deliveries WHERE seq = ? AND receipt = ? RETURNING alert_id",
                              (int(claim.handle), claim.receipt)).fetchall()
            if rows:
                db.execute("UPDATE events SET delivered_at = ? WHERE seq = ?", (time.time(), int(claim.handle)))
                self._refresh_head(db, rows[0][0])
                _insert_trail(db, claim, "delivered")

        await self._write(done)

    async def retry_later(self, claim: Claim, delay_seconds: float, error: str, *,
                          count_attempt: bool = True) -> None:
        def back_off(db: sqlite3.Connection) -> None:
            rows = db.execute(
                "UPDATE deliveries SET available_at = ?, lease_until = NULL, receipt = NULL, last_error = ?,"
                " attempts = attempts - ? WHERE seq = ? AND receipt = ? RETURNING alert_id",
                (time.time() + delay_seconds, error[:2000], 0 if count_attempt else 1, int(claim.handle),
                 claim.receipt),
            ).fetchall()
            if rows:
                self._refresh_head(db, rows[0][0])
                _insert_trail(db, claim, "retry", error)

        await self._write(back_off)

    async def dead_letter(self, claim: Claim, error: str) -> None:
        def move(db: sqlite3.Connection) -> None:
            rows = db.execute("DELETE FROM deliveries WHERE seq = ? AND receipt = ? RETURNING alert_id",
                              (int(claim.handle), claim.receipt)).fetchall()
            if rows:
                db.execute(
                    "INSERT OR REPLACE INTO dead_letters (seq, attempts, error, dead_at) VALUES (?, ?, ?, ?)",
                    (int(claim.handle), claim.attempts + 1, error[:4000], time.time()),
                )
                self._refresh_head(db, rows[0][0])
                _insert_trail(db, claim, "dead_letter", error)

        await self._write(move)

    async def dead_letters(self) -> list[DeadLetter]:
        def read() -> list[DeadLetter]:
            rows = self._rdb().execute(
                "SELECT x.seq, x.attempts, x.error, x.dead_at, e.key, e.alert_id, e.condition, e.occurred_at,"
                " e.body, e.priority, COALESCE(e.trace_context, '')"
                " FROM dead_letters x JOIN events e ON e.seq = x.seq ORDER BY x.seq"
            ).fetchall()
            return [
                DeadLetter(id=str(seq), event=Event(*ev), attempts=att, error=err, dead_at=at)
                for seq, att, err, at, *ev in rows
            ]

        return await self._read(read)

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
            alerts = set()
            for seq in seqs:
                rows = db.execute(
                    "INSERT INTO deliveries (seq, alert_id, available_at)"
                    " SELECT seq, lower(alert_id), ? FROM events WHERE seq = ? RETURNING alert_id",
                    (now, seq),
                ).fetchall()
                alerts.update(r[0] for r in rows)
                db.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))
            # A replayed event goes back in at its old place, ahead of its alert's later events; but
            # never ahead of one that is leased: that head stays until its outcome is recorded.
            for alert_id in alerts:
                leased = db.execute(
                    "SELECT 1 FROM heads h JOIN deliveries d ON d.seq = h.seq"
                    " WHERE h.alert_id = ? AND d.lease_until > ?", (alert_id, now),
                ).fetchone()
                if not leased:
                    self._refresh_head(db, alert_id)
            return len(seqs)

        return await self._write(move)

    # -- ticket records ----------------------------------------------------------------------------

    async def get_ticket(self, target: str, key: str) -> TicketRecord | None:
        def read() -> TicketRecord | None:
            row = self._rdb().execute(
                "SELECT data, version, closed_at FROM tickets WHERE target = ? AND key = ?", (target, key)
            ).fetchone()
            if row is None:
                return None
            return TicketRecord(target=target, key=key, data=json.loads(row[0]), version=str(row[1]),
                                closed_at=row[2])

        return await self._read_together(read)

    async def put_ticket(self, record: TicketRecord) -> TicketRecord:
        def write(db: sqlite3.Connection) -> TicketRecord:
            data = json.dumps(record.data, sort_keys=True)
            if record.version is None:
                cur = db.execute(
                    "INSERT OR IGNORE INTO tickets (target, key, data, version, closed_at) VALUES (?, ?, ?, 1, ?)",
                    (record.target, record.key, data, record.closed_at),
                )
                new_version = 1
            else:
                new_version = int(record.version) + 1
                cur = db.execute(
                    "UPDATE tickets SET data = ?, version = ?, closed_at = ?"
                    " WHERE target = ? AND key = ? AND version = ?",
                    (data, new_version, record.closed_at, record.target, record.key, int(record.version)),
                )
            if cur.rowcount != 1:
                raise VersionConflict(f"ticket record {record.target}/{record.key} changed since it was read")
            return TicketRecord(record.target, record.key, record.data, str(new_version), record.closed_at)

        return await self._write(write)

    # -- the alert trail (reads) ------------------------------------------------------------------

    async def add_trail(self, alert_id: str, key: str, outcome: str, entries: tuple[TrailEntry, ...]) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT seq FROM events WHERE key = ?", (key,)).fetchone()
            if row is None or not entries:
                return False
            db.execute("INSERT INTO trail (seq, at, outcome, error, entries) VALUES (?, ?, ?, ?, ?)",
                       (int(row[0]), time.time(), outcome, "", trail_json(entries)))
            return True

        return await self._write(write)

    async def alert_trail(self, alert: str) -> list[EventTrail]:
        return await self._read(lambda: _read_alert_trail(self._rdb(), alert))

    async def recent_events(self, *, since: float | None = None, state: str | None = None,
                            limit: int = 100) -> list[EventTrail]:
        check_trail_query(state, limit)
        return await self._read(lambda: _read_recent_events(self._rdb(), since, state, limit))

    # -- retention -------------------------------------------------------------------------------

    async def expire(self, now: float, retention: Retention) -> Expired:
        for name in ("delivered_seconds", "dead_letter_seconds", "ticket_seconds"):
            if not getattr(retention, name) >= 0:
                raise ValueError(f"Retention.{name} must be 0 or more (got {getattr(retention, name)!r})")
        # Freed pages go on SQLite's free list and the next inserts reuse them, so once retention
        # applies the file stops growing (no VACUUM: it would rewrite the file under intake).
        counts = {"events": 0, "dead_letters": 0, "tickets": 0}
        steps: list[tuple[str, Callable[[sqlite3.Connection], int]]] = [
            ("events", lambda db: _expire_delivered(db, now - retention.delivered_seconds)),
            ("dead_letters", lambda db: _expire_dead_letters(db, now - retention.dead_letter_seconds)),
            ("tickets", lambda db: _expire_tickets(db, now - retention.ticket_seconds)),
        ]
        for kind, step in steps:
            while True:
                n = await self._write(step)
                counts[kind] += n
                if n < EXPIRE_CHUNK:
                    break
        return Expired(**counts)


def _each(reads: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
    """Run each read; (True, its result) or (False, its exception), so that one failure fails only its own."""
    answers: list[tuple[bool, Any]] = []
    for read in reads:
        try:
            answers.append((True, read()))
        except Exception as exc:
            answers.append((False, exc))
    return answers


def _expire_delivered(db: sqlite3.Connection, before: float) -> int:
    """Events delivered before `before` (never a pending one, nor the newest row), with their trail."""
    seqs = [r[0] for r in db.execute(
        """DELETE FROM events WHERE seq IN (
               SELECT e.seq FROM events e
               WHERE e.delivered_at IS NOT NULL AND e.delivered_at < ? AND e.seq < (SELECT MAX(seq) FROM events)
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = e.seq)
               ORDER BY e.delivered_at LIMIT ?) RETURNING seq""",
        (before, EXPIRE_CHUNK),
    ).fetchall()]
    _drop_trail(db, seqs)
    return len(seqs)


def _expire_dead_letters(db: sqlite3.Connection, before: float) -> int:
    seqs = [r[0] for r in db.execute(
        "SELECT seq FROM dead_letters WHERE dead_at < ? ORDER BY dead_at LIMIT ?", (before, EXPIRE_CHUNK))]
    rows = [(seq,) for seq in seqs]
    db.executemany("DELETE FROM dead_letters WHERE seq = ?", rows)
    db.executemany("DELETE FROM events WHERE seq = ? AND seq < (SELECT MAX(seq) FROM events)", rows)
    _drop_trail(db, seqs)
    return len(seqs)


def _expire_tickets(db: sqlite3.Connection, before: float) -> int:
    return db.execute(
        "DELETE FROM tickets WHERE rowid IN (SELECT rowid FROM tickets"
        " WHERE closed_at IS NOT NULL AND closed_at < ? LIMIT ?)",
        (before, EXPIRE_CHUNK),
    ).rowcount


def _ensure_trail(conn: sqlite3.Connection) -> None:
    """Create the trail table in a file from before it (a read needs no write lock once it exists)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'trail'").fetchone():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in TRAIL_TABLES:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def _insert_trail(db: sqlite3.Connection, claim: Claim, outcome: str, error: str = "") -> None:
    """The attempt's trail, in the outcome's own write (same transaction, same group commit: no fsync of
    its own). A claim the worker attached nothing to (an admin tool, a test) records nothing."""
    if claim.trail:
        db.execute("INSERT INTO trail (seq, at, outcome, error, entries) VALUES (?, ?, ?, ?, ?)",
                   (int(claim.handle), time.time(), outcome, error[:TRAIL_DETAIL_LIMIT], trail_json(claim.trail)))


def _drop_trail(db: sqlite3.Connection, seqs: list[int]) -> None:
    """The trail of events retention just deleted (an event it kept, the newest row, keeps its trail)."""
    db.executemany("DELETE FROM trail WHERE seq = ? AND NOT EXISTS (SELECT 1 FROM events WHERE seq = ?)",
                   [(seq, seq) for seq in seqs])


# What `alert_trail` and `recent_events` read of an event: its facts and its state.
_TRAIL_EVENT = (
    "SELECT e.seq, e.key, e.alert_id, e.condition, e.occurred_at, e.received_at,"
    " CASE WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = e.seq) THEN 'pending'"
    " WHEN EXISTS (SELECT 1 FROM dead_letters x WHERE x.seq = e.seq) THEN 'dead' ELSE 'delivered' END AS state"
    " FROM events e"
)
_ALERT_EVENTS = _TRAIL_EVENT + " WHERE lower(e.alert_id) = lower(?) ORDER BY e.seq"
# Newest first by seq (the primary key, read backwards); `since` and `state` filter as it goes.
_RECENT_EVENTS = ("SELECT * FROM (" + _TRAIL_EVENT + " WHERE (?1 IS NULL OR e.received_at >= ?1)"  # noqa: S608
                  " ORDER BY e.seq DESC) WHERE (?2 IS NULL OR state = ?2) LIMIT ?3")
_ATTEMPTS = "SELECT at, outcome, error, entries FROM trail WHERE seq = ? ORDER BY id"


def _attempts(db: sqlite3.Connection, seq: int) -> tuple[Attempt, ...]:
    return tuple(Attempt(at=at, outcome=outcome, error=error, entries=trail_from_json(entries))
                 for at, outcome, error, entries in db.execute(_ATTEMPTS, (seq,)))


def _read_alert_trail(db: sqlite3.Connection, alert: str) -> list[EventTrail]:
    row = db.execute("SELECT alert_id FROM events WHERE key = ?", (alert,)).fetchone()
    alert_id = row[0] if row else alert
    # A scan of the events (no index on alert id: it would cost every accept a write, for an admin read).
    trails = []
    for seq, key, aid, condition, occurred_at, received_at, state in db.execute(_ALERT_EVENTS, (alert_id,)).fetchall():
        attempts = _attempts(db, seq)
        trails.append(EventTrail(key, aid, condition, occurred_at, received_at, state, attempts, tickets_of(attempts)))
    return trails


def _read_recent_events(db: sqlite3.Connection, since: float | None, state: str | None,
                        limit: int) -> list[EventTrail]:
    trails = []
    for seq, key, aid, condition, occurred_at, received_at, st in db.execute(
            _RECENT_EVENTS, (since, state, limit)).fetchall():
        trails.append(EventTrail(key, aid, condition, occurred_at, received_at, st, (),
                                 tickets_of(_attempts(db, seq))))
    return trails
