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
`(True, pid)` once its connection is open (or `(False, message, disk_full)`); then the parent sends
batches, each a list of event tuples (EVENT_FIELDS), without waiting for answers, and the child answers
each, in order, `(True, [new, ...])` or `(False, message, disk_full)` once the transaction holding it
is committed (synchronous=FULL: fsynced) or rolled back. marshal, not pickle: the frames hold only
tuples, lists, str, bytes, numbers and None. The child exits when the socket closes, and on Linux is
killed with its parent.
"""

from __future__ import annotations

import asyncio
import collections
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
from collections.abc import Callable, Iterator
from typing import Any

from relay.child_process import FRAME_HEADER_BYTES, die_with_parent, exit_description, frame
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
READ_BYTES = 1 << 20  # the child's socket reads
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


def commit_events(db: sqlite3.Connection, events: list[Event]) -> list[bool]:
    """One transaction holding only `events` (the commit process's whole job; the caller has the turn)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        inserted = insert_events(db, events)
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise
    return inserted


# -- the parent's side ----------------------------------------------------------------------------------

Waiter = tuple[Event, "asyncio.Future[bool]"]


class CommitProcess:
    """The serving store's commit process. `add(event, future)` queues an accept; the accepts of one pass
    of the event loop go to the child as one frame at the end of that pass, whatever is in flight, and the
    child commits in one transaction every frame that reached it while it committed or waited for its
    write turn. So the batch is whatever gathered while the file was busy: one event when it is idle,
    many when the delivery process holds the turn.

    Everything happens in callbacks, never in a task: the answer settles its futures in `data_received`.
    Awaiting it in a coroutine cost a pass of the event loop's ready queue per hop (the wake of the
    group-commit task, gather, the stream reader, the task's resumption), and in a loop full of requests
    each pass was a few hundred microseconds: the loop's side of a 0.4 ms commit measured 2-5 ms.

    A child that died is started again once accepts wait; the batch it died with fails with
    StoreUnavailable (intake answers 503 and Azure sends it again: its key tells whether it had been
    committed)."""

    def __init__(self, path: str, on_commit: Callable[[], None] = lambda: None) -> None:
        self.path = path
        self.starts = 0  # children started; tests read it
        self._on_commit = on_commit
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: _Channel | None = None
        self._pending: list[Waiter] = []
        self._in_flight: collections.deque[list[Waiter]] = collections.deque()  # frames sent, oldest first
        self._flush_soon: asyncio.Handle | None = None
        self._starting: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Start the child; StoreUnavailable (with SQLite's reason) when it cannot open the database."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            # Popen, not the loop's subprocess support: it works the same on uvloop and asyncio, and
            # _posixsubprocess forks and execs with no Python in between (the store's threads are running).
            proc = subprocess.Popen(  # noqa: ASYNC220 - our own module, a fork and exec per start
                [sys.executable, "-m", "relay.store.sqlite_commits", str(theirs.fileno()), str(os.getpid()),
                 self.path],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.starts += 1
        channel = _Channel(self, loop.create_future())
        try:
            await loop.create_unix_connection(lambda: channel, sock=ours)
            hello = await asyncio.wait_for(asyncio.shield(channel.hello), START_TIMEOUT_SECONDS)
        except BaseException:
            channel.close()
            await _reap(proc, kill=True)
            raise
        if not hello[0]:
            channel.close()
            await _reap(proc, kill=True)
            raise unavailable(self.path, hello[1], hello[2])
        self._proc, self._channel = proc, channel

    def add(self, event: Event, fut: asyncio.Future[bool]) -> None:
        if self._closed:
            fut.set_exception(StoreUnavailable("store closed"))
            return
        self._pending.append((event, fut))
        if self._flush_soon is None:
            self._flush_soon = asyncio.get_running_loop().call_soon(self._send_next)

    def _send_next(self) -> None:
        """Send what waits, if the child runs; start a child if none runs."""
        self._flush_soon = None
        if not self._pending:
            return
        # poll(): a child that exited before its end of file reached the loop is not sent a batch.
        if self._channel is None or not self._channel.open or self._proc is None or self._proc.poll() is not None:
            if self._starting is None and not self._closed:
                self._starting = asyncio.get_running_loop().create_task(self._restart(), name="sqlite-commits")
            return
        batch, self._pending = self._pending, []
        payload = marshal.dumps([tuple(getattr(ev, f) for f in EVENT_FIELDS) for ev, _ in batch])
        self._in_flight.append(batch)
        self._channel.send(frame(payload))

    def _answered(self, answer: Any) -> None:
        if not self._in_flight:
            raise ValueError("an answer to no batch")
        batch = self._in_flight.popleft()
        if answer[0]:
            self._on_commit()
            for (_, fut), new in zip(batch, answer[1], strict=True):
                if not fut.done():
                    fut.set_result(new)
        else:
            _fail(batch, unavailable(self.path, answer[1], answer[2]))

    def _lost(self, reason: str) -> None:
        """The child's socket closed (it died, or sent what we could not read)."""
        lost = StoreUnavailable(f"sqlite: the commit process ended during a commit ({reason}); "
                                "its batch may or may not be stored")
        while self._in_flight:
            _fail(self._in_flight.popleft(), lost)
        if not self._closed:
            self._send_next()  # a new child for the accepts that wait

    async def _restart(self) -> None:
        try:
            if self._channel is not None:
                self._channel.close()
            if self._proc is not None:
                log.warning("sqlite: the commit process (pid %d) ended (%s); starting another", self._proc.pid,
                            exit_description(await _reap(self._proc, kill=True)))
                self._proc = self._channel = None
            await self.start()
        except Exception as exc:
            err = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(f"sqlite: {exc}")
            batch, self._pending = self._pending, []
            _fail(batch, err)
        finally:
            self._starting = None
        self._send_next()

    async def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        closed = StoreUnavailable("store closed")
        while self._in_flight:
            _fail(self._in_flight.popleft(), closed)
        _fail(self._pending, closed)
        self._pending = []
        if self._channel is not None:
            self._channel.close()  # the child exits at its end of file
        if self._proc is not None:
            await _reap(self._proc, kill=False)
        self._proc = self._channel = None


class _Channel(asyncio.Protocol):
    """The socket to one child: frames in, frames out, straight into CommitProcess's callbacks."""

    def __init__(self, owner: CommitProcess, hello: asyncio.Future[Any]) -> None:
        self.owner = owner
        self.hello = hello
        self.open = False
        self._transport: Any = None
        self._buffer = bytearray()

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        self._transport = transport
        self.open = True

    def send(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= FRAME_HEADER_BYTES:
            size = int.from_bytes(self._buffer[:FRAME_HEADER_BYTES], "big")
            if len(self._buffer) < FRAME_HEADER_BYTES + size:
                return
            payload = bytes(self._buffer[FRAME_HEADER_BYTES:FRAME_HEADER_BYTES + size])
            del self._buffer[:FRAME_HEADER_BYTES + size]
            try:
                answer = marshal.loads(payload)  # noqa: S302 - our own child's frames
                if not self.hello.done():
                    self.hello.set_result(answer)
                else:
                    self.owner._answered(answer)
            except (ValueError, EOFError, TypeError, IndexError) as exc:
                self.close()
                self._ended(f"an unreadable answer: {exc}")
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(repr(exc) if exc else "its socket closed")

    def _ended(self, reason: str) -> None:
        if not self.open:
            return
        self.open = False
        if not self.hello.done():
            self.hello.set_exception(StoreUnavailable(f"sqlite: the commit process ended as it started ({reason})"))
        elif self.owner._channel is self:
            self.owner._lost(reason)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _fail(batch: list[Waiter], err: StoreUnavailable) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(err)


async def _reap(proc: subprocess.Popen[bytes], *, kill: bool) -> int:
    """Wait for a child that was told to go (its socket closed); kill it if asked or if it lingers."""
    if kill and proc.poll() is None:
        proc.kill()
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
        await asyncio.sleep(0.005)
    return proc.returncode


# -- the child ----------------------------------------------------------------------------------------

def serve(sock: socket.socket, path: str) -> None:
    """Commit what the parent sends until it closes the socket: each transaction holds every frame that
    arrived while the last one committed or while this process waited for its write turn."""
    try:
        db = connect_writer(path)
        turn_fd = open_write_turn(path)
    except (sqlite3.Error, OSError) as exc:
        sock.sendall(frame(marshal.dumps((False, str(exc), is_disk_full(exc)))))
        return
    sock.sendall(frame(marshal.dumps((True, os.getpid()))))
    frames = _Frames(sock)
    while True:
        first = frames.next()
        if first is None:
            break
        with write_turn(turn_fd):
            requests = [first, *frames.arrived()]
            batches = [[Event(*fields) for fields in marshal.loads(r)] for r in requests]  # noqa: S302 - our parent's
            try:
                inserted = commit_events(db, [ev for batch in batches for ev in batch])
            except (sqlite3.Error, OSError) as exc:
                answers: list[tuple[Any, ...]] = [(False, str(exc), is_disk_full(exc))] * len(batches)
            else:
                answers, at = [], 0
                for batch in batches:
                    answers.append((True, inserted[at:at + len(batch)]))
                    at += len(batch)
        sock.sendall(b"".join(frame(marshal.dumps(a)) for a in answers))
    db.close()


class _Frames:
    """The parent's frames, buffered: `next` waits for one, `arrived` takes those already here."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.ended = False

    def _take(self) -> bytes | None:
        if len(self.buffer) < FRAME_HEADER_BYTES:
            return None
        size = int.from_bytes(self.buffer[:FRAME_HEADER_BYTES], "big")
        if len(self.buffer) < FRAME_HEADER_BYTES + size:
            return None
        payload = bytes(self.buffer[FRAME_HEADER_BYTES:FRAME_HEADER_BYTES + size])
        del self.buffer[:FRAME_HEADER_BYTES + size]
        return payload

    def next(self) -> bytes | None:
        while (payload := self._take()) is None:
            chunk = b"" if self.ended else self.sock.recv(READ_BYTES)
            if not chunk:
                return None
            self.buffer += chunk
        return payload

    def arrived(self) -> list[bytes]:
        self.sock.setblocking(False)
        try:
            while not self.ended:
                try:
                    chunk = self.sock.recv(READ_BYTES)
                except BlockingIOError:
                    break
                if not chunk:
                    self.ended = True
                self.buffer += chunk
        finally:
            self.sock.setblocking(True)
        payloads = []
        while (payload := self._take()) is not None:
            payloads.append(payload)
        return payloads


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
