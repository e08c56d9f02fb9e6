"""Storm grouping through the delivery worker: a real SQLite store, the ServiceNow and Request Tracker fakes
(ServiceNow's parent/child sync included), and two workers on one store opening one parent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.delivery.grouping import GroupSpec, GroupState
from relay.delivery.routing import DeliverySettings, RelayConfig, Route, TargetConfig
from relay.schema import GroupChildren
from relay.targets import Ticket
from relay.targets import request_tracker as rt
from relay.targets import servicenow as sn
from tests.fakes.request_tracker import FakeRequestTracker
from tests.fakes.servicenow import FakeServiceNow
from tests.test_worker import T1, accept, alert_body, drained, guid, running, store, until

__all__ = ["running", "store"]  # the worker tests' fixtures, used here too


def config(spec: GroupSpec, kind: str = "servicenow", **delivery: Any) -> RelayConfig:
    return RelayConfig(
        targets={"itsm": TargetConfig(name="itsm", kind=kind, block={}, timeout_seconds=5, max_concurrency=8)},
        routes=(Route(target="itsm", group=spec),),
        delivery=DeliverySettings(poll_seconds=0.01, backoff_base_seconds=0.01, backoff_max_seconds=0.05,
                                  lease_seconds=30, shutdown_grace_seconds=5, **delivery),
    )


@pytest.fixture
async def snow() -> AsyncIterator[FakeServiceNow]:
    fake = FakeServiceNow()
    await fake.start()
    yield fake
    await fake.stop()


def snow_target(fake: FakeServiceNow) -> sn.ServiceNowTarget:
    cfg = {"kind": "servicenow", "base_url": fake.url, "timeout_seconds": 5,
           "auth": {"type": "basic", "username": fake.username, "password_env": "P"}}
    return sn.from_config("itsm", cfg, env={"P": fake.password})


def parents(fake: FakeServiceNow) -> list[dict[str, str]]:
    return [r for r in fake.incidents.values() if r.get("correlation_id", "").startswith("grp-")]


def own(fake: FakeServiceNow) -> list[dict[str, str]]:
    return [r for r in fake.incidents.values() if not r.get("correlation_id", "").startswith("grp-")]


async def storm(store, n: int, condition: str = "Fired", start: int = 1) -> None:
    for i in range(start, start + n):
        await accept(store, alert_body(guid=guid(i), condition=condition,
                                       resolved=T1 if condition == "Resolved" else None))


async def test_a_storm_with_notes_opens_n_incidents_and_one_parent_that_notes_the_rest(store, running, snow):
    await storm(store, 12)
    await running(store, config(GroupSpec(open_parent_after=3)), {"itsm": snow_target(snow)})
    await until(lambda: drained(store), "the storm delivered")
    assert len(own(snow)) == 3, f"{len(own(snow))} incidents of their own; the first 3 alone get one"
    (parent,) = parents(snow)
    assert parent["short_description"].startswith("12 alerts of rule "), "the parent's count is not current"
    assert all(r.get("parent_incident") == parent["sys_id"] for r in own(snow)), "the first 3 are not linked"
    notes = snow.notes(parent["sys_id"])
    assert len(notes) == 8, f"{len(notes)} notes on the parent; one per alert after the 4th"
    assert "The group now holds 12 alerts" in notes[-1], "the count is not kept current"


async def test_link_mode_links_at_most_max_children_then_notes(store, running, snow):
    await storm(store, 10)
    spec = GroupSpec(open_parent_after=2, children=GroupChildren.LINK, max_children=3)
    await running(store, config(spec), {"itsm": snow_target(snow)})
    await until(lambda: drained(store), "the storm delivered")
    (parent,) = parents(snow)
    assert len(own(snow)) == 5, "2 of their own and 3 children"
    assert all(r.get("parent_incident") == parent["sys_id"] for r in own(snow))
    assert len(snow.notes(parent["sys_id"])) == 7, "alerts 4-10 are noted (3 and later children too)"


async def test_the_parent_resolves_after_every_alert_and_children_are_not_resolved_twice(store, running, snow):
    await storm(store, 5)
    worker = await running(store, config(GroupSpec(open_parent_after=2)), {"itsm": snow_target(snow)})
    await until(lambda: drained(store), "the storm delivered")
    (parent,) = parents(snow)
    await storm(store, 4, "Resolved")
    worker.notify()
    await until(lambda: drained(store), "four resolves delivered")
    assert parent["state"] != "6", "the parent resolved while an alert of its window still fires"
    await storm(store, 1, "Resolved", start=5)
    worker.notify()
    await until(lambda: drained(store), "the last resolve delivered")
    assert parent["state"] == "6", "the parent did not resolve once every alert had"
    assert all(r["state"] == "6" for r in own(snow))
    resolves = [c for c in snow.calls if c.method == "PATCH" and b'"state": "6"' in c.body]
    assert len(resolves) == 3, f"{len(resolves)} resolve calls; one per incident (2 own + the parent)"


async def test_a_child_resolved_by_servicenow_with_its_parent_is_not_resolved_again(store, running, snow):
    await storm(store, 4)
    worker = await running(store, config(GroupSpec(open_parent_after=2)), {"itsm": snow_target(snow)})
    await until(lambda: drained(store), "the storm delivered")
    (parent,) = parents(snow)
    # A person resolves the parent: ServiceNow's business rule resolves the linked children with it.
    parent.update(state="6", close_code="Solved (Permanently)", close_notes="fixed the switch")
    snow._sync_children(parent, "1")
    assert all(r["state"] == "6" for r in own(snow)), "the fake's parent/child sync did not run"
    before = len(snow.calls)
    await storm(store, 4, "Resolved")
    worker.notify()
    await until(lambda: drained(store), "the resolves delivered")
    patches = [c for c in snow.calls[before:] if c.method == "PATCH"]
    assert patches == [], f"already-resolved incidents were resolved again: {[c.path for c in patches]}"


async def test_two_workers_on_one_store_open_one_parent(store, running, snow):
    await storm(store, 20)
    spec = GroupSpec(open_parent_after=3, children=GroupChildren.LINK, max_children=4)
    await asyncio.gather(running(store, config(spec), {"itsm": snow_target(snow)}),
                         running(store, config(spec), {"itsm": snow_target(snow)}))
    await until(lambda: drained(store), "the storm delivered by two workers")
    assert len(parents(snow)) == 1, f"{len(parents(snow))} parents: two replicas both opened one"
    assert len(own(snow)) == 7, f"{len(own(snow))} incidents of their own; 3 own + 4 children"
    (parent,) = parents(snow)
    assert all(r.get("parent_incident") == parent["sys_id"] for r in own(snow)), "a member was left unlinked"
    record = await store.get_ticket("itsm", parent["correlation_id"])
    assert record is not None and GroupState.from_data(record.data).count == 20


async def test_a_crash_after_the_parent_create_adopts_it_rather_than_opening_another(store, running, snow):
    class CrashOnce:
        """The store, failing the first write of the parent's ticket (a crash before recording it)."""

        def __init__(self, inner: Any) -> None:
            self.inner, self.failed = inner, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def put_ticket(self, record):  # type: ignore[no-untyped-def]
            from relay.store import StoreUnavailable
            if not self.failed and record.key.startswith("grp-") and record.data.get("ticket_id"):
                self.failed = True
                raise StoreUnavailable("simulated crash before the parent was recorded")
            return await self.inner.put_ticket(record)

    await storm(store, 6)
    # adopt_after_seconds short: the retried delivery waits for the lost create's intent, then finds it.
    await running(CrashOnce(store), config(GroupSpec(open_parent_after=2), adopt_after_seconds=0.05),
                  {"itsm": snow_target(snow)})
    await until(lambda: drained(store), "the storm delivered")
    assert len(parents(snow)) == 1, "the parent was opened twice"


async def test_request_tracker_members_become_members_of_the_parent(store, running):
    fake = FakeRequestTracker()
    fake.add_queue("General", custom_fields=("AzureAlertId",))
    await fake.start()
    try:
        cfg = {"kind": "request_tracker", "base_url": fake.url, "timeout_seconds": 5,
               "auth": {"type": "token", "token_env": "T"}}
        target = rt.from_config("itsm", cfg, env={"T": fake.token})
        await storm(store, 8)
        await running(store, config(GroupSpec(open_parent_after=3), kind="request_tracker"), {"itsm": target})
        await until(lambda: drained(store), "the storm delivered")
        tickets = list(fake.tickets.values())
        (parent,) = [t for t in tickets if t["CustomFields"]["AzureAlertId"].startswith("grp-")]
        members = [t for t in tickets if t is not parent]
        assert len(members) == 3
        assert all(t["MemberOf"] == [str(parent["id"])] for t in members), [t["MemberOf"] for t in members]
        assert parent["Subject"].startswith("8 alerts of rule "), parent["Subject"]
    finally:
        await fake.stop()


async def test_a_refused_link_is_an_error_naming_the_tickets(snow):
    target = snow_target(snow)
    try:
        child = snow.add_incident(correlation_id="c")
        snow.unreadable_columns = frozenset({"parent_incident"})  # an ACL: the write is dropped
        from tests.conftest import expect_error
        err = await expect_error(target.link(Ticket(child["sys_id"], child["number"]), Ticket("p" * 32, "INC9")))
        assert not err.retryable and "parent_incident" in str(err) and child["number"] in str(err)
    finally:
        await target.close()


def test_the_defaults_a_user_gets():
    """The defaults a user gets: a 15-minute window, a parent past 5 alerts, notes, 20 children."""
    spec = GroupSpec()
    assert (spec.window_seconds, spec.open_parent_after, spec.children, spec.max_children, spec.by) == \
        (900, 5, GroupChildren.NOTE, 20, ("alert_rule",))



async def test_a_shuffled_storm_stays_within_the_cap_and_ends_resolved(store, running, snow):
    import random

    rng = random.Random(15)
    bodies = []
    for i in range(1, 16):
        bodies.append(alert_body(guid=guid(i)))
        bodies.append(alert_body(guid=guid(i), condition="Resolved", resolved=T1))
    rng.shuffle(bodies)  # some Resolveds are accepted (and so delivered) before their Fired
    for body in bodies:
        await accept(store, body)
    spec = GroupSpec(open_parent_after=3, children=GroupChildren.LINK, max_children=4)
    await asyncio.gather(running(store, config(spec), {"itsm": snow_target(snow)}),
                         running(store, config(spec), {"itsm": snow_target(snow)}))
    await until(lambda: drained(store), "the shuffled storm delivered")
    assert len(parents(snow)) <= 1, "more than one parent"
    assert len(own(snow)) <= 3 + 4, f"{len(own(snow))} incidents of their own, over the cap of 3 + 4"
    assert all(r["state"] == "6" for r in snow.incidents.values()), "an incident stayed open after every alert resolved"
