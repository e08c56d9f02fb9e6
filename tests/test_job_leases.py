"""Named job leases (relay/store/leases.py): one holder at a time across replicas, on both backends."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.schema import TARGET_NAME
from relay.store.leases import JOBS_TARGET, JobLease, lease_state, run_leased
from tests.test_store_contract import Backend, backend  # noqa: F401 (the fixture)

pytest_plugins = ["tests.azurite"]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("data", "owner", "now", "expected"), [
    (None, "a", 10.0, "free"),
    ({}, "a", 10.0, "free"),
    ({"owner": "a", "until": 20.0}, "a", 10.0, "mine"),
    ({"owner": "a", "until": 20.0}, "b", 10.0, "taken"),
    ({"owner": "a", "until": 20.0}, "b", 20.0, "free"),  # ran out exactly now
    ({"owner": "a", "until": 0}, "b", 10.0, "free"),  # released
    ({"owner": "", "until": 99.0}, "b", 10.0, "free"),
])
def test_lease_state_table(data, owner, now, expected) -> None:
    assert lease_state(data, owner=owner, now=now) == expected


@given(st.text(min_size=1, max_size=5), st.text(min_size=1, max_size=5), st.floats(0, 1e9), st.floats(0, 1e9))
def test_a_lease_is_never_both_mine_and_anothers(a: str, b: str, until: float, now: float) -> None:
    data = {"owner": a, "until": until}
    states = {lease_state(data, owner=a, now=now), lease_state(data, owner=b, now=now)}
    if a != b:
        assert states != {"mine"}
        assert "mine" not in states or states == {"mine", "taken"}


def test_the_jobs_target_is_a_name_no_configured_target_can_have() -> None:
    assert not TARGET_NAME.match(JOBS_TARGET)


async def test_one_holder_at_a_time_across_replicas(backend: Backend) -> None:  # noqa: F811
    clock = Clock()
    r1, r2 = await backend.replica(), await backend.replica()
    a = JobLease(r1, "scheduler", owner="a", seconds=30, wall_clock=clock)
    b = JobLease(r2, "scheduler", owner="b", seconds=30, wall_clock=clock)
    assert await a.acquire()
    assert not await b.acquire()
    clock.now += 20
    assert await a.acquire()  # renewed: lasts to +50
    clock.now += 20
    assert not await b.acquire()
    clock.now += 11  # a stopped renewing: run out
    assert await b.acquire()
    assert not await a.acquire()
    await b.release()
    assert await a.acquire()


async def test_racing_replicas_elect_exactly_one(backend: Backend) -> None:  # noqa: F811
    clock = Clock()
    replicas = [await backend.replica() for _ in range(4)]
    leases = [JobLease(r, "reconcile", owner=f"o{i}", seconds=30, wall_clock=clock) for i, r in enumerate(replicas)]
    won = await asyncio.gather(*(lease.acquire() for lease in leases))
    assert sum(won) == 1


async def test_values_kept_with_the_lease_only_by_its_holder(backend: Backend) -> None:  # noqa: F811
    clock = Clock()
    store = await backend.replica()
    a = JobLease(store, "poll", owner="a", seconds=30, wall_clock=clock)
    b = JobLease(store, "poll", owner="b", seconds=30, wall_clock=clock)
    assert await a.acquire()
    assert await a.put(since="2026-12-01T00:00:00Z")
    assert not await b.put(since="nope")
    assert await b.get("since") == "2026-12-01T00:00:00Z"
    clock.now += 31
    assert await b.acquire()
    assert await b.get("since") == "2026-12-01T00:00:00Z"  # the next holder carries on from there


async def test_run_leased_runs_on_the_holder_only_and_releases_at_stop(backend: Backend) -> None:  # noqa: F811
    r1, r2 = await backend.replica(), await backend.replica()
    ran: list[str] = []
    stop = asyncio.Event()
    a = JobLease(r1, "tick", owner="a", seconds=30)
    b = JobLease(r2, "tick", owner="b", seconds=30)

    async def job(name: str) -> None:
        ran.append(name)

    ta = asyncio.create_task(run_leased(a, every=0.05, run=lambda: job("a"), stopping=stop))
    await asyncio.sleep(0.3)
    tb = asyncio.create_task(run_leased(b, every=0.05, run=lambda: job("b"), stopping=stop))
    await asyncio.sleep(0.3)
    assert ran and set(ran) == {"a"}
    stop.set()
    await asyncio.gather(ta, tb)
    assert await b.acquire()  # a released it at stop: no need to wait the 30 s out


async def test_a_failing_run_does_not_end_the_loop(backend: Backend) -> None:  # noqa: F811
    store = await backend.replica()
    stop = asyncio.Event()
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        stop.set()

    await asyncio.wait_for(run_leased(JobLease(store, "flaky", owner="a", seconds=30), every=0.01, run=flaky,
                                      stopping=stop), 30)
    assert calls == 2
