"""The scheduler (relay/delivery/scheduler.py): due work kept in small job records, found without a scan,
run once by the lease holder, on both store backends."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery.scheduler import (
    INDEX_KEY,
    SHARDS,
    Scheduler,
    due_key,
    due_minutes,
    minute_of,
    split_due,
    with_entry,
)
from relay.store.leases import JOBS_TARGET
from tests.test_job_leases import Clock
from tests.test_store_contract import Backend, backend  # noqa: F401 (the fixture)

pytest_plugins = ["tests.azurite"]


def test_the_same_timer_scheduled_twice_is_kept_once_with_the_latest_payload():
    a = {"kind": "alert", "id": "x", "at": 60.0, "event": "e1"}
    b = {"kind": "alert", "id": "x", "at": 60.0, "event": "e2"}
    c = {"kind": "alert", "id": "x", "at": 61.0, "event": "e3"}
    assert with_entry(with_entry([a], b), c) == [b, c]


@given(st.lists(st.floats(0, 10_000), max_size=30), st.floats(0, 10_000))
def test_split_due_loses_nothing_and_orders_the_due(times, now):
    entries = [{"kind": "k", "id": str(i), "at": at} for i, at in enumerate(times)]
    due, later = split_due(entries, now)
    assert sorted(e["id"] for e in due + later) == sorted(e["id"] for e in entries)
    assert all(e["at"] <= now for e in due) and all(e["at"] > now for e in later)
    assert [e["at"] for e in due] == sorted(e["at"] for e in due)


def test_due_minutes_are_the_indexed_ones_up_to_now():
    assert due_minutes([5, 1, 9, 3], now=5 * 60 + 59) == [1, 3, 5]


class Ran:
    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.fail = 0

    async def __call__(self, entry) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("handler failed")
        self.entries.append(dict(entry))


async def test_entries_run_when_due_not_before_and_once(backend: Backend) -> None:  # noqa: F811
    clock = Clock(1_000_000.0)
    store = await backend.replica()
    sched = Scheduler(store, owner="a", wall_clock=clock)
    ran = Ran()
    sched.register("alert", ran)
    await sched.schedule("alert", clock.now + 90, "alert-1", event="e1")
    await sched.schedule("alert", clock.now + 30, "alert-2", event="e2")
    assert await sched.run_due() == 0
    clock.now += 30
    assert await sched.run_due() == 1 and [e["id"] for e in ran.entries] == ["alert-2"]
    clock.now += 60
    assert await sched.run_due() == 1 and [e["id"] for e in ran.entries] == ["alert-2", "alert-1"]
    assert await sched.run_due() == 0, "an entry runs once"
    assert await sched.pending() == []
    index = await store.get_ticket(JOBS_TARGET, INDEX_KEY)
    assert index is not None and index.data["minutes"] == [], "emptied minutes leave the index"


async def test_a_failing_handler_keeps_its_entry_for_the_next_run(backend: Backend) -> None:  # noqa: F811
    clock = Clock()
    store = await backend.replica()
    sched = Scheduler(store, owner="a", wall_clock=clock)
    ran = Ran()
    ran.fail = 1
    sched.register("alert", ran)
    await sched.schedule("alert", clock.now, "alert-1", event="e1")
    assert await sched.run_due() == 0
    assert len(await sched.pending()) == 1
    assert await sched.run_due() == 1


async def test_an_entry_of_a_kind_nobody_handles_stays(backend: Backend) -> None:  # noqa: F811
    clock = Clock()
    store = await backend.replica()
    sched = Scheduler(store, owner="a", wall_clock=clock)
    await sched.schedule("group", clock.now, "g1")
    assert await sched.run_due() == 0
    assert [e["kind"] for e in await sched.pending()] == ["group"]
    with pytest.raises(ValueError):
        sched.register("x", Ran()) or sched.register("x", Ran())


async def test_replicas_scheduling_one_minute_at_once_lose_no_entry(backend: Backend) -> None:  # noqa: F811
    clock = Clock()
    r1, r2 = await backend.replica(), await backend.replica()
    s1, s2 = Scheduler(r1, owner="a", wall_clock=clock), Scheduler(r2, owner="b", wall_clock=clock)
    await asyncio.gather(*(s.schedule("alert", clock.now + 5, f"alert-{i}", event=str(i))
                           for i, s in enumerate([s1, s2] * 20)))
    assert sorted(e["id"] for e in await s1.pending()) == sorted(f"alert-{i}" for i in range(40))
    # Found by the minute index: only that minute's shard records are read.
    index = await r1.get_ticket(JOBS_TARGET, INDEX_KEY)
    assert index.data["minutes"] == [minute_of(clock.now + 5)]


async def test_an_entry_added_while_a_run_drops_its_minute_is_not_stranded(backend: Backend) -> None:  # noqa: F811
    clock = Clock()
    store = await backend.replica()
    sched = Scheduler(store, owner="a", wall_clock=clock)
    ran = Ran()
    sched.register("alert", ran)
    minute = minute_of(clock.now)
    # The run saw the minute empty and drops it from the index; meanwhile a writer put an entry in its
    # record (the writer saw the minute still indexed, so it did not index it again).
    await sched.schedule("alert", clock.now, "late", event="e")
    await sched._update(INDEX_KEY, lambda data: {"minutes": [minute]})
    await sched._drop_minute(minute)
    assert (await store.get_ticket(JOBS_TARGET, INDEX_KEY)).data["minutes"] == [minute]
    assert await sched.run_due() == 1 and ran.entries[0]["id"] == "late"


async def test_only_the_lease_holder_runs_due_work(backend: Backend) -> None:  # noqa: F811
    clock = Clock()
    r1, r2 = await backend.replica(), await backend.replica()
    ran1, ran2 = Ran(), Ran()
    s1 = Scheduler(r1, owner="a", wall_clock=clock, every=0.02)
    s2 = Scheduler(r2, owner="b", wall_clock=clock, every=0.02)
    s1.register("alert", ran1)
    s2.register("alert", ran2)
    for i in range(5):
        await s1.schedule("alert", clock.now - 1, f"alert-{i}", event=str(i))
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stopping)) for s in (s1, s2)]
    try:
        for _ in range(500):
            if len(ran1.entries) + len(ran2.entries) >= 5:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
    finally:
        stopping.set()
        await asyncio.gather(*tasks)
    assert sorted(e["id"] for e in ran1.entries + ran2.entries) == [f"alert-{i}" for i in range(5)]
    assert not (ran1.entries and ran2.entries), "both replicas ran due work"


def test_due_records_are_per_minute_and_shard():
    assert due_key(7, 3) == "due-7-3" and SHARDS >= 2


async def test_the_store_reads_one_event_back_by_its_key(backend: Backend) -> None:  # noqa: F811
    from relay.store.base import Event

    store = await backend.replica()
    body = b'{"big": "' + b"x" * 70_000 + b'"}'  # over the Azure table's inline limit: a blob
    event = Event(key="k" * 64, alert_id="/subscriptions/s/alerts/a1", condition="Fired",
                  occurred_at="2026-01-01T00:00:00Z", body=body)
    assert await store.accept(event)
    got = await store.event(event.alert_id, event.key)
    assert got is not None and (got.key, got.condition, got.body) == (event.key, "Fired", body)
    assert await store.event(event.alert_id, "n" * 64) is None
