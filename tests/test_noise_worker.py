"""Maintenance windows and flap damping through the real worker, store and scheduler (issue 15): timers come
back as due events of their alert; the clock is the test's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from relay.delivery.flapping import Damping
from relay.delivery.maintenance import Schedule, Window
from relay.delivery.metrics import DeliveryMetrics
from relay.delivery.routing import Route
from relay.delivery.worker import DUE_CONDITION, Worker
from relay.store.sqlite import SqliteStore
from tests.test_job_leases import Clock
from tests.test_worker import FakeForwarder, FakeTarget, accept, alert_body, drained, make_config, until


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture
async def store(tmp_path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "relay.db")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def start() -> AsyncIterator:
    workers: list[Worker] = []

    async def run(store, config, targets, clock) -> Worker:
        worker = Worker(store, config, targets, metrics=DeliveryMetrics(), wall_clock=clock)
        worker.scheduler.every = 0.02  # the scheduler looks every 5 s by default (test_default_* below)
        workers.append(worker)
        await worker.start()
        return worker

    yield run
    for w in workers:
        await w.stop(grace_seconds=1)


WINDOW = Window("patch", Schedule(start=datetime(2024, 5, 1, 9, tzinfo=UTC), end=datetime(2024, 5, 1, 11, tzinfo=UTC)))


async def test_an_alert_fired_in_a_window_gets_its_incident_when_the_window_ends(store, start):
    clock = Clock(epoch("2024-05-01T10:30:00Z"))
    target = FakeTarget()
    config = replace(make_config(), maintenance=(WINDOW,))
    await accept(store, alert_body(fired="2024-05-01T10:00:00Z"))
    worker = await start(store, config, {"itsm": target}, clock)
    await until(lambda: drained(store), "the fired event recorded")
    [entry] = await worker.scheduler.pending()
    assert entry["at"] == epoch("2024-05-01T11:00:00Z")
    assert target.count("create") == 0, "nothing is opened inside the window"
    clock.now = epoch("2024-05-01T11:00:00Z")
    await until(lambda: target.count("create") == 1, "the incident opened at the window's end")
    await until(lambda: drained(store), "the due event delivered")
    [ticket] = target.tickets.values()
    assert not ticket["resolved"]
    events = [e for e in await store.events() if e.condition == DUE_CONDITION]
    assert [e.occurred_at for e in events] == ["2024-05-01T11:00:00.000000000Z"]
    clock.now += 3600
    await asyncio.sleep(0.2)  # several scheduler runs
    assert await worker.scheduler.pending() == []
    assert target.count("create") == 1


async def test_an_alert_resolved_inside_its_window_never_gets_an_incident(store, start):
    clock = Clock(epoch("2024-05-01T10:30:00Z"))
    target = FakeTarget()
    config = replace(make_config(), maintenance=(WINDOW,))
    await accept(store, alert_body(fired="2024-05-01T10:00:00Z"))
    await accept(store, alert_body(condition="Resolved", fired="2024-05-01T10:00:00Z",
                                   resolved="2024-05-01T10:20:00Z"))
    worker = await start(store, config, {"itsm": target}, clock)
    await until(lambda: drained(store), "both events recorded")
    clock.now = epoch("2024-05-01T11:00:01Z")

    async def timers_done() -> bool:
        return await worker.scheduler.pending() == [] and await drained(store)

    await until(timers_done, "the window's end handled")
    assert target.calls == [], "no call at all: the alert came and went inside the window"


async def test_a_flapping_alert_keeps_one_incident_and_its_final_resolve_waits_out_the_hold(store, start):
    clock = Clock(epoch("2024-05-01T10:04:00Z"))
    target = FakeTarget()
    route = Route(target="itsm", damping=Damping(window_seconds=600, transitions=3, hold_seconds=120))
    await accept(store, alert_body(fired="2024-05-01T10:00:00Z"))
    await accept(store, alert_body(condition="Resolved", fired="2024-05-01T10:00:00Z", resolved="2024-05-01T10:01:00Z"))
    await accept(store, alert_body(fired="2024-05-01T10:02:00Z"))
    await accept(store, alert_body(condition="Resolved", fired="2024-05-01T10:02:00Z", resolved="2024-05-01T10:03:00Z"))
    worker = await start(store, make_config(route), {"itsm": target}, clock)
    await until(lambda: drained(store), "four events delivered")
    first, second = target.tickets.values()
    assert first["resolved"] and not second["resolved"], "the fourth change is held: the incident stays open"
    assert any("flapping" in n for n in second["notes"])
    [entry] = await worker.scheduler.pending()
    assert entry["at"] == epoch("2024-05-01T10:05:00Z")
    # A re-fire inside the hold cancels it; the next resolve is held again.
    await accept(store, alert_body(fired="2024-05-01T10:04:00Z"))
    await accept(store, alert_body(condition="Resolved", fired="2024-05-01T10:04:00Z", resolved="2024-05-01T10:04:30Z"))
    worker.notify()
    await until(lambda: drained(store), "the re-fire and its resolve delivered")
    assert not second["resolved"] and len(target.tickets) == 2, "no second incident while flapping"
    clock.now = epoch("2024-05-01T10:05:00Z")  # the first hold's end: cancelled, nothing to do
    await until(lambda: drained(store), "the cancelled hold's due event delivered")
    assert not second["resolved"]
    clock.now = epoch("2024-05-01T10:06:30Z")  # the second hold's end
    await until(lambda: second["resolved"], "the held resolve delivered once the hold passed")
    await until(lambda: drained(store), "settled")
    assert target.count("resolve") == 2 and target.count("create") == 2


async def test_forwarders_never_get_due_events(store, start):
    clock = Clock(epoch("2024-05-01T10:30:00Z"))
    target, fwd = FakeTarget(), FakeForwarder()
    config = replace(make_config(Route(target="itsm", continue_=True), Route(target="fwd"),
                                 targets={"itsm": 8, "fwd": 8}), maintenance=(WINDOW,))
    await accept(store, alert_body(fired="2024-05-01T10:00:00Z"))
    await start(store, config, {"itsm": target, "fwd": fwd}, clock)
    await until(lambda: drained(store), "recorded and forwarded")
    clock.now = epoch("2024-05-01T11:00:00Z")
    await until(lambda: target.count("create") == 1, "the incident opened at the window's end")
    await until(lambda: drained(store), "the due event delivered")
    assert len(fwd.bodies) == 1, "the receiver owns its lifecycle: the body is forwarded once"


def test_default_scheduler_pace_is_five_seconds_under_a_thirty_second_lease():
    from relay.delivery.scheduler import EVERY_SECONDS, LEASE_SECONDS

    assert (EVERY_SECONDS, LEASE_SECONDS) == (5.0, 30.0)
    assert LEASE_SECONDS > 2 * EVERY_SECONDS


async def test_a_timer_whose_event_retention_removed_is_dropped_and_counted(store, start):
    clock = Clock(epoch("2024-05-01T10:30:00Z"))
    target = FakeTarget()
    worker = await start(store, make_config(), {"itsm": target}, clock)
    await worker.scheduler.schedule("alert", clock.now - 1, "gone", alert_id="/subscriptions/x/alerts/gone",
                                    event="0" * 64)

    async def dropped() -> bool:
        return await worker.scheduler.pending() == []

    await until(dropped, "the timer run and dropped")
    assert worker.metrics.registry.get_sample_value("relay_dead_letters_total",
                                                    {"reason": "timer_source_gone"}) == 1
    assert target.calls == [] and await store.pending() == 0


def test_intake_can_never_store_a_due_event():
    import json

    from relay.alerts import SchemaError, parse_alert_json

    doc = json.loads(alert_body())
    doc["data"]["essentials"]["monitorCondition"] = DUE_CONDITION
    with pytest.raises(SchemaError, match="monitorCondition"):
        parse_alert_json(json.dumps(doc).encode())


# -- grouped routes: a window's alerts join at its end; a flapping member counts once ----------------

@pytest.fixture
async def snow() -> AsyncIterator:
    from tests.fakes.servicenow import FakeServiceNow

    fake = FakeServiceNow()
    await fake.start()
    yield fake
    await fake.stop()


def grouped(spec, *, damping=None, maintenance=()):
    from relay.delivery.routing import DeliverySettings, RelayConfig, TargetConfig

    return RelayConfig(
        targets={"itsm": TargetConfig(name="itsm", kind="servicenow", block={}, timeout_seconds=5, max_concurrency=8)},
        routes=(Route(target="itsm", group=spec, damping=damping),),
        delivery=DeliverySettings(poll_seconds=0.01, backoff_base_seconds=0.01, backoff_max_seconds=0.05,
                                  lease_seconds=30, shutdown_grace_seconds=5),
        maintenance=maintenance,
    )


def split(fake):
    parents = [r for r in fake.incidents.values() if r.get("correlation_id", "").startswith("grp-")]
    own = [r for r in fake.incidents.values() if not r.get("correlation_id", "").startswith("grp-")]
    return parents, own


async def test_a_storm_inside_a_window_opens_nothing_then_collapses_into_one_parent_at_its_end(store, start, snow):
    from relay.delivery.grouping import GroupSpec, Role
    from tests.test_grouping_worker import snow_target
    from tests.test_worker import guid

    clock = Clock(epoch("2024-05-01T10:30:00Z"))
    for i in range(1, 7):
        await accept(store, alert_body(guid=guid(i), fired=f"2024-05-01T10:0{i}:00Z"))
    worker = await start(store, grouped(GroupSpec(open_parent_after=2), maintenance=(WINDOW,)),
                         {"itsm": snow_target(snow)}, clock)
    await until(lambda: drained(store), "the storm recorded")
    assert snow.incidents == {}, "an alert inside the window opened an incident (or the parent)"
    assert len(await worker.scheduler.pending()) == 6
    from relay.alerts import parse_alert_json
    from relay.delivery.grouping import GroupState, group_key
    from relay.delivery.lifecycle import instant

    key = group_key(parse_alert_json(alert_body(guid=guid(1))), GroupSpec(), 0, instant("2024-05-01T10:01:00Z"))
    record = await store.get_ticket("itsm", key.key)
    assert record is not None and GroupState.from_data(record.data).roles(Role.DEFERRED) == 6
    assert GroupState.from_data(record.data).count == 0, "alerts inside the window counted toward the parent"
    clock.now = epoch("2024-05-01T11:00:00Z")

    async def settled() -> bool:
        return await worker.scheduler.pending() == [] and await drained(store)

    await until(settled, "the window's end handled")
    parents, own = split(snow)
    assert len(parents) == 1 and len(own) == 2, f"{len(parents)} parent(s), {len(own)} own incident(s); want 1 and 2"
    (parent,) = parents
    assert parent["short_description"].startswith("6 alerts of rule ")
    assert len(snow.notes(parent["sys_id"])) == 3, "alerts 4-6 are noted on the parent"
    assert all(r.get("parent_incident") == parent["sys_id"] for r in own), "the first 2 are not linked"
    clock.now += 3600
    await asyncio.sleep(0.2)  # several scheduler runs: nothing more happens
    assert len(snow.incidents) == 3


async def test_a_flapping_member_counts_once_and_its_held_resolve_keeps_the_parent_open(store, start, snow):
    from relay.delivery.grouping import GroupSpec
    from tests.test_grouping_worker import snow_target
    from tests.test_worker import guid

    clock = Clock(epoch("2024-05-01T10:04:40Z"))
    damping = Damping(window_seconds=600, transitions=3, hold_seconds=300)
    worker = await start(store, grouped(GroupSpec(open_parent_after=2), damping=damping),
                         {"itsm": snow_target(snow)}, clock)
    flapper = guid(1)
    for i in (1, 2, 3):
        await accept(store, alert_body(guid=guid(i), fired=f"2024-05-01T10:00:0{i}Z"))
    worker.notify()
    await until(lambda: drained(store), "three alerts delivered")
    (parent,), _ = split(snow)
    # The first alert flaps: resolved, fired, resolved (the fourth change: held), fired (cancels the hold).
    await accept(store, alert_body(guid=flapper, condition="Resolved", fired="2024-05-01T10:00:01Z",
                                   resolved="2024-05-01T10:01:00Z"))
    await accept(store, alert_body(guid=flapper, fired="2024-05-01T10:02:00Z"))
    await accept(store, alert_body(guid=flapper, condition="Resolved", fired="2024-05-01T10:02:00Z",
                                   resolved="2024-05-01T10:03:00Z"))
    await accept(store, alert_body(guid=flapper, fired="2024-05-01T10:04:00Z"))
    worker.notify()
    await until(lambda: drained(store), "the flapping delivered")
    again = [n for n in snow.notes(parent["sys_id"]) if "fired again" in n]
    assert len(again) == 1, f"{len(again)} 'fired again' notes on the parent; once flapping, re-fires are not noted"
    for i in (2, 3):
        await accept(store, alert_body(guid=guid(i), condition="Resolved", fired=f"2024-05-01T10:00:0{i}Z",
                                       resolved="2024-05-01T10:04:10Z"))
    await accept(store, alert_body(guid=flapper, condition="Resolved", fired="2024-05-01T10:04:00Z",
                                   resolved="2024-05-01T10:04:30Z"))
    worker.notify()
    await until(lambda: drained(store), "the resolves delivered")
    assert parent["state"] != "6", "the parent resolved while a flapping member's resolve was held"
    clock.now = epoch("2024-05-01T10:09:30Z")  # the hold's end
    await until(lambda: parent["state"] == "6", "the parent resolved once the held resolve was delivered")
    await until(lambda: drained(store), "settled")
    assert len(split(snow)[0]) == 1
