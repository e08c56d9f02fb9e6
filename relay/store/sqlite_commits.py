"""How the SQLite store commits accepted events, and the process the serving relay commits them in.

An accept is one statement group per batch (`insert_events`): the events, their delivery rows, and the
heads of alerts that had nothing queued. The serving relay (`owner=True`) runs it in a commit process of
its own (`CommitProcess`); admin commands, the delivery process and tests with `owner=False` run it on
the store's writer thread.

Why a process: on a thread, the group commit shares the event loop's GIL. Python's sqlite3 lets go of the
GIL around every SQLite step and takes it back after each, and with the loop busy serving requests each
of those takes waits until the loop drops it (measured under `bench/intake.py`'s hot load on the 2-core
benchmark machine: a batch of 16 waited 1.5 ms for the thread to start and took 2.4 ms where it needs
1 ms alone, so a commit cycle was 4.2 ms and the loop sat idle 40 % of the time with requests waiting).
A process has its own GIL: the loop only writes a frame and reads the answer.

The protocol, over a socket pair, in frames (relay.child_process): the child's first frame is
`(True, pid)` once its connection is open (or `(False, message, disk_full)`); then for each batch the
parent sends a list of event tuples (EVENT_FIELDS) and the child answers `(True, [new, ...])` or
`(False, message, disk_full)` once the transaction is committed (synchronous=FULL: fsynced) or rolled
back. marshal, not pickle: the frames hold only tuples, lists, str, bytes, numbers and None. The child
exits when the socket closes, and on Linux is killed with its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import marshal
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from relay.child_process import die_with_parent, exit_description, frame, read_frame, read_frame_blocking
from relay.store.base import PRIORITY_LOW, PRIORITY_URGENT, Event, StoreUnavailable

log = logging.getLogger("relay.store.sqlite")

# Truncate the WAL back to this after a checkpoint, so a burst does not leave a large WAL file behind.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
# Beside the database: the processes writing it (the serving relay's writer thread, its commit process
# and its delivery process) take turns at group commits through a flock on this file. Left to SQLite
# alone, a writer finding the write lock taken sleeps and retries (1, 2, 5, 10 ... 100 ms), and one that
# keeps committing starves the other: with the delivery process committing all the time, intake's commits
# waited up to 1.4 s. A flock waiter is woken the moment the lock is let go, so the writers alternate.
WRITE_TURN_SUFFIX = ".write-turn"
# An Event as a commit frame carries it.
EVENT_FIELDS = ("key", "alert_id", "condition", "occurred_at", "body", "priority", "trace_context")
START_TIMEOUT_SECONDS = 30.0  # a child that has not opened its connection by then is killed
STOP_TIMEOUT_SECONDS = 10.0  # after the socket closes, a child still running (mid-commit) is killed


def connect_writer(path: str) -> sqlite3.Connection:
    """A connection that writes: WAL, synchronous=FULL, no automatic checkpoint (the store's checkpoint
    thread does them)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an acknowledged alert survives power loss.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        conn.execute("PRAGMA wal_autocheckpoint=0")
    except BaseException:
        conn.close()
        raise
    return conn


def open_write_turn(path: str) -> int | None:
    """The descriptor of `path`'s WRITE_TURN_SUFFIX file (None for an in-memory database)."""
    if path == ":memory:":
        return None
    return os.open(path + WRITE_TURN_SUFFIX, os.O_CREAT | os.O_RDWR, 0o600)


@contextlib.contextmanager
def write_turn(fd: int | None) -> Iterator[None]:
    """This writer's turn (WRITE_TURN_SUFFIX); it blocks the calling thread. A process that dies holding
    it lets it go with its descriptors."""
    if fd is None:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def level(priority: int) -> int:
    """The stored priority: one of PRIORITIES (claim scans each level), out-of-range values clamped."""
    return min(max(priority, PRIORITY_LOW), PRIORITY_URGENT)


def rollback(db: sqlite3.Connection) -> None:
    # SQLite may already have rolled back (a full disk does): a second ROLLBACK would only raise
    # "cannot rollback - no transaction is active" over the error that matters.
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def is_disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL, or ENOSPC from the OS."""
    return (isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL) or (
        isinstance(exc, OSError) and exc.errno == errno.ENOSPC)


def unavailable(path: str, message: str, disk_full: bool) -> StoreUnavailable:
    """One clear message per failure; a full disk says so."""
    if disk_full:
        return StoreUnavailable(f"sqlite: disk full: cannot write {path}")
    return StoreUnavailable(f"sqlite: {message}")


def insert_events(db: sqlite3.Connection, events: list[Event]) -> list[bool]:
    """Insert a batch inside the caller's transaction: for each event, whether it is new (False: its key
    was stored before, or earlier in this batch)."""
    now = time.time()
    before = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    db.executemany(
        "INSERT OR IGNORE INTO events (key, alert_id, condition, occurred_at, body, received_at, priority,"
        " trace_context) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(ev.key, ev.alert_id, ev.condition, ev.occurred_at, ev.body, now, level(ev.priority),
          ev.trace_context or None) for ev in events],
    )
    db.execute(
        "INSERT INTO deliveries (seq, alert_id, available_at)"
        " SELECT seq, lower(alert_id), ? FROM events WHERE seq > ?",
        (now, before),
    )
    # An alert with nothing queued gets its first new event as its head; one with a head keeps it.
    # MATERIALIZED: read this batch's rows by seq first; left to itself, the planner serves the
    # GROUP BY from deliveries_by_alert, scanning the whole backlog on every commit.
    db.execute(
        "WITH new AS MATERIALIZED (SELECT seq, alert_id, available_at FROM deliveries WHERE seq > ?)"
        " INSERT OR IGNORE INTO heads (alert_id, seq, priority, due_at)"
        " SELECT n.alert_id, MIN(n.seq), e.priority, n.available_at"
        " FROM new n JOIN events e ON e.seq = n.seq GROUP BY n.alert_id",
        (before,),
    )
    # One row (a JSON array), not one per event: the sqlite3 module lets go of the GIL around every step
    # and takes it back after each, and with the event loop busy each of those waits is a context switch.
    (keys,) = db.execute("SELECT json_group_array(key) FROM events WHERE seq > ?", (before,)).fetchone()
    inserted = set(json.loads(keys))
    # A key inserted by this batch is new for its first holder only; later copies are duplicates.
    results = []
    for ev in events:
        results.append(ev.key in inserted)
        inserted.discard(ev.key)
    return results


def commit_events(db: sqlite3.Connection, turn_fd: int | None, events: list[Event]) -> list[bool]:
    """One transaction holding only `events` (the commit process's whole job)."""
    with write_turn(turn_fd):
        db.execute("BEGIN IMMEDIATE")
        try:
            inserted = insert_events(db, events)
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
    return inserted


# -- the parent's side ----------------------------------------------------------------------------------

class CommitProcess:
    """The serving store's commit process: `commit(events)` sends one batch and waits for its answer (the
    store's group commit sends one at a time). A child that died is started again for the next batch; the
    batch it died with gets StoreUnavailable (intake answers 503 and Azure sends it again: its key tells
    whether it had been committed)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.starts = 0  # children started; tests read it
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            # Popen, not the loop's subprocess support: it works the same on uvloop and asyncio, and
            # _posixsubprocess forks and execs with no Python in between (the store's threads are running).
            self._proc = subprocess.Popen(  # noqa: ASYNC220 - our own module, a fork and exec per start
                [sys.executable, "-m", "relay.store.sqlite_commits", str(theirs.fileno()), str(os.getpid()),
                 self.path],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.starts += 1
        self._reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        try:
            hello = await asyncio.wait_for(self._answer(), START_TIMEOUT_SECONDS)
        except BaseException:
            await self._stop(kill=True)
            raise
        if not hello[0]:
            await self._stop(kill=True)
            raise unavailable(self.path, hello[1], hello[2])

    async def commit(self, events: list[Event]) -> list[bool]:
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:  # it died between batches: say so, then start another
                log.warning("sqlite: the commit process (pid %d) ended (%s); starting another", self._proc.pid,
                            exit_description(self._proc.returncode))
                await self._stop(kill=True)
            await self.start()
        assert self._writer is not None
        payload = marshal.dumps([tuple(getattr(ev, f) for f in EVENT_FIELDS) for ev in events])
        try:
            self._writer.write(frame(payload))
            answer = await self._answer()
        except (OSError, asyncio.IncompleteReadError, ValueError, EOFError, TypeError) as exc:
            await self._stop(kill=True)
            raise StoreUnavailable(f"sqlite: the commit process ended during a commit ({exc!r}); "
                                   "its batch may or may not be stored") from exc
        if not answer[0]:
            raise unavailable(self.path, answer[1], answer[2])
        return answer[1]

    async def _answer(self) -> Any:
        assert self._reader is not None
        return marshal.loads(await read_frame(self._reader))  # noqa: S302 - our own child's frames

    async def close(self) -> None:
        await self._stop(kill=False)

    async def _stop(self, *, kill: bool) -> None:
        """Close the socket (the child exits at its end of file); kill it if asked or if it lingers."""
        proc, writer = self._proc, self._writer
        self._proc = self._reader = self._writer = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if proc is None:
            return
        if kill:
            proc.kill()
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
            await asyncio.sleep(0.005)


# -- the child ----------------------------------------------------------------------------------------

def serve(sock: socket.socket, path: str) -> None:
    """Commit each batch the parent sends until it closes the socket."""
    try:
        db = connect_writer(path)
        turn_fd = open_write_turn(path)
    except (sqlite3.Error, OSError) as exc:
        sock.sendall(frame(marshal.dumps((False, str(exc), is_disk_full(exc)))))
        return
    sock.sendall(frame(marshal.dumps((True, os.getpid()))))
    while True:
        request = read_frame_blocking(sock)
        if request is None:
            break
        events = [Event(*fields) for fields in marshal.loads(request)]  # noqa: S302 - our parent's frames
        try:
            answer: tuple[Any, ...] = (True, commit_events(db, turn_fd, events))
        except (sqlite3.Error, OSError) as exc:
            answer = (False, str(exc), is_disk_full(exc))
        sock.sendall(frame(marshal.dumps(answer)))
    db.close()


def main(argv: list[str]) -> int:
    """`python -m relay.store.sqlite_commits FD PARENT_PID PATH`, as CommitProcess starts it."""
    fd, parent, path = int(argv[1]), int(argv[2]), argv[3]
    die_with_parent(parent)
    # The parent's Ctrl-C or SIGTERM: it closes the socket once its last batch is answered.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    with socket.socket(fileno=fd) as sock:
        try:
            serve(sock, path)
        except (BrokenPipeError, ConnectionResetError):
            return 0  # the parent is gone: whatever it waited for, it no longer does
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
