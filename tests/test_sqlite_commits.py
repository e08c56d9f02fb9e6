"""The serving relay's commit process (relay.store.sqlite_commits): accepts committed by a real child
process on the real file, what a dead child costs (one batch, never an acknowledged event), and that the
child never outlives the relay."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay.store.base import Event, StoreUnavailable, idempotency_key
from relay.store.sqlite import SqliteStore
from relay.store.sqlite_commits import CommitProcess

ROOT = Path(__file__).resolve().parents[1]


def event(i: int) -> Event:
    alert_id = f"/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/{i}"
    at = "2025-01-01T00:00:00Z"
    return Event(idempotency_key(alert_id, "Fired", at), alert_id, "Fired", at, b'{"n": %d}' % i)


def stored_keys(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {k for (k,) in conn.execute("SELECT key FROM events")}
    finally:
        conn.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_the_owner_commits_accepts_in_another_process_durably_and_tells_duplicates(tmp_path):
    store = SqliteStore(tmp_path / "relay.db", owner=True)
    await store.open()
    try:
        child = store._committer.pid
        assert child is not None and child != os.getpid() and alive(child)
        results = await asyncio.gather(*(store.accept(event(i)) for i in (1, 2, 1)))
        assert sorted(results) == [False, True, True], "one of the two copies of event 1 is a duplicate"
        assert await store.accept(event(2)) is False
        # Acknowledged means committed: another connection sees both (no close, no checkpoint first).
        assert stored_keys(tmp_path / "relay.db") == {event(1).key, event(2).key}
        [claim] = [c for c in await store.claim(10, lease_seconds=30) if c.event.key == event(1).key]
        assert claim.event.body == b'{"n": 1}'
        assert store._committer.pid == child, "one child serves every batch"
    finally:
        await store.close()
    assert not alive(child), "closing the store ends its commit process"


async def test_admin_commands_and_the_delivery_process_commit_on_the_writer_thread(tmp_path):
    store = SqliteStore(tmp_path / "relay.db")
    await store.open()
    try:
        assert store._committer is None
        assert await store.accept(event(1)) is True
    finally:
        await store.close()


async def test_a_child_that_died_between_batches_is_replaced_without_failing_a_request(tmp_path, caplog):
    store = SqliteStore(tmp_path / "relay.db", owner=True)
    await store.open()
    try:
        first = store._committer.pid
        os.kill(first, signal.SIGKILL)
        await asyncio.to_thread(store._committer._proc.wait, 5)
        assert await store.accept(event(1)) is True
        assert store._committer.starts == 2 and store._committer.pid != first
        assert f"the commit process (pid {first}) ended (signal SIGKILL); starting another" in caplog.text
    finally:
        await store.close()


async def test_a_child_killed_during_a_commit_fails_that_batch_only_and_the_next_one_goes(tmp_path):
    store = SqliteStore(tmp_path / "relay.db", owner=True)
    await store.open()
    try:
        child = store._committer.pid
        os.kill(child, signal.SIGSTOP)  # the batch reaches it, and waits
        accepting = asyncio.create_task(store.accept(event(1)))
        await asyncio.sleep(0.2)
        assert not accepting.done()
        os.kill(child, signal.SIGKILL)
        with pytest.raises(StoreUnavailable, match="commit process ended during a commit"):
            await asyncio.wait_for(accepting, 10)
        assert stored_keys(tmp_path / "relay.db") == set(), "a stopped child committed nothing"
        assert await store.accept(event(1)) is True, "Azure's retry of the refused event is taken"
        assert await store.accept(event(2)) is True
    finally:
        await store.close()


async def test_a_child_that_cannot_open_the_database_says_why(tmp_path):
    committer = CommitProcess(str(tmp_path / "missing-folder" / "relay.db"))
    with pytest.raises(StoreUnavailable, match="sqlite: unable to open database file"):
        await committer.start()
    assert committer.pid is None


def test_the_child_dies_with_a_killed_relay(tmp_path):
    """SIGKILL leaves the parent no chance to close the socket: the child goes anyway (PR_SET_PDEATHSIG,
    and the socket's end of file)."""
    script = (
        "import asyncio, sys\n"
        "from relay.store.sqlite import SqliteStore\n"
        "async def main():\n"
        f"    store = SqliteStore({str(tmp_path / 'relay.db')!r}, owner=True)\n"
        "    await store.open()\n"
        "    print(store._committer.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    relay = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = int(relay.stdout.readline())
        assert alive(child)
        relay.kill()
        relay.wait(10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(child), "the commit process outlived the relay"
    finally:
        relay.kill()
        relay.wait(10)


async def test_the_wal_starts_over_under_writes_that_never_pause(tmp_path):
    """SQLite starts the WAL over only when a write finds it wholly checkpointed; with writes that never
    pause a checkpoint beside them never caught up, and the WAL grew without bound (800 MB in 25 s of the
    intake benchmark) until the write that finally started it over stalled for 70-290 ms. Each checkpoint
    now ends with a pass under the write turn: 4 senders that never pause keep the WAL small."""
    from relay.store.sqlite import CHECKPOINT_EVERY_COMMITS

    store = SqliteStore(tmp_path / "relay.db", owner=True)
    await store.open()
    wal = tmp_path / "relay.db-wal"
    body = b"x" * 4000
    try:
        async def sender(n: int) -> None:
            for i in range(1500):
                alert = f"/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/{n}-{i}"
                at = "2025-01-01T00:00:00Z"
                assert await store.accept(Event(idempotency_key(alert, "Fired", at), alert, "Fired", at, body))

        await asyncio.gather(*(sender(n) for n in range(4)))
        assert store.commits >= 3 * CHECKPOINT_EVERY_COMMITS, "too few commits to have checkpointed"
        assert store.checkpoints >= 2
        # 6,000 events of 4 KB: ~26 MB of WAL frames had it never started over.
        assert wal.stat().st_size < 12 * 1024 * 1024, f"the WAL grew to {wal.stat().st_size:,} bytes"
    finally:
        await store.close()
