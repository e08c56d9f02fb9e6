"""SQLite specifics: WAL with synchronous=FULL, and concurrent accepts sharing one commit."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from relay.store import Event, StoreUnavailable, idempotency_key
from relay.store.sqlite import SqliteStore


def event(i: int, condition: str = "Fired") -> Event:
    alert_id = f"/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/{i}"
    return Event(idempotency_key(alert_id, condition, "2025-01-01T00:00:00Z"), alert_id, condition,
                 "2025-01-01T00:00:00Z", b"{}")


@pytest.fixture
async def store(tmp_path):
    s = SqliteStore(tmp_path / "relay.db")
    await s.open()
    yield s
    await s.close()


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


def test_store_url_forms(tmp_path):
    assert SqliteStore.from_url("sqlite:///relay.db").path == "relay.db"
    assert SqliteStore.from_url("sqlite:////var/lib/relay/relay.db").path == "/var/lib/relay/relay.db"
    with pytest.raises(ValueError, match="malformed sqlite store URL"):
        SqliteStore.from_url("sqlite://relay.db")
