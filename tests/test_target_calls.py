"""Calls per new incident, counted on each vendor's fake: a find and a create once the CMDB cache is
warm (ServiceNow, BMC Helix, Request Tracker), and the cache's invalidation and TTLs at work."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from relay.targets import Incident, TargetError
from relay.targets.cmdb_cache import CacheSettings, CICache
from tests.fakes import FakeServer
from tests.fakes.bmc_helix import FakeBmcHelix
from tests.fakes.request_tracker import FakeRequestTracker
from tests.fakes.servicenow import FakeServiceNow
from tests.test_bmc_helix_target import make_target as make_helix
from tests.test_request_tracker_target import QUEUE
from tests.test_request_tracker_target import make_target as make_rt
from tests.test_servicenow_target import make_target as make_snow

VM = "/subscriptions/s1/resourcegroups/rg-web/providers/microsoft.compute/virtualmachines/web-01"


@dataclass
class Kind:
    """One vendor: its fake, a target on it, how to add the VM's CI, and what the incident was bound to."""

    name: str
    fake: Callable[[], FakeServer]
    target: Callable[[Any], Any]
    add_ci: Callable[[Any], str]  # -> the CI's id in the vendor's terms
    remove_cis: Callable[[Any], None]
    bound_to: Callable[[Any, str], str | None]  # (fake, ticket id) -> the bound CI's id
    create_path: str
    add_ticket: Callable[[Any, str, bool], str]  # (fake, key, resolved) -> the ticket's id


def _rt_fake() -> FakeRequestTracker:
    fake = FakeRequestTracker()
    fake.add_queue(QUEUE, custom_fields=("AzureAlertId",))
    return fake


def _rt_bound(fake: FakeRequestTracker, ticket_id: str) -> str | None:
    links = fake.tickets[int(ticket_id)]["RefersTo"]
    return links[0].split(":", 1)[1] if links else None


KINDS = [
    Kind(
        "servicenow",
        FakeServiceNow,
        make_snow,
        lambda f: f.add_ci("web-01", object_id=VM)["sys_id"],
        lambda f: f.cis.clear(),
        lambda f, tid: f.incidents[tid].get("cmdb_ci") or None,
        "/api/now/table/incident",
        lambda f, key, resolved: f.add_incident(
            correlation_id=key,
            **({"state": "6", "close_code": "x", "close_notes": "y"} if resolved else {"state": "2"}),
        )["sys_id"],
    ),
    Kind(
        "bmc_helix",
        FakeBmcHelix,
        make_helix,
        lambda f: f.add_ci("web-01").attributes["ReconciliationIdentity"],
        lambda f: f.cis.clear(),
        lambda f, tid: f.incidents[tid].get("HPD_CI_ReconID"),
        "HPD:IncidentInterface_Create",
        lambda f, key, resolved: f.add_incident(
            **{"Vendor Ticket Number": key, "Status": "Resolved" if resolved else "In Progress"}
        )["Incident Number"],
    ),
    Kind(
        "request_tracker",
        _rt_fake,
        make_rt,
        lambda f: str(f.add_asset(VM)["id"]),
        lambda f: f.assets.clear(),
        _rt_bound,
        "/REST/2.0/ticket",
        lambda f, key, resolved: str(f.add_ticket(QUEUE, "resolved" if resolved else "open", AzureAlertId=key)["id"]),
    ),
]


@pytest.fixture(params=KINDS, ids=lambda k: k.name)
async def kind(request) -> AsyncIterator[tuple[Kind, Any, Any]]:
    k: Kind = request.param
    fake = k.fake()
    await fake.start()
    target = k.target(fake)
    yield k, fake, target
    await target.close()
    await fake.stop()


def incident(n: int) -> Incident:
    return Incident(
        correlation_key=f"00000000-0000-4000-8000-{n:012d}",
        summary="CPU over 90% on web-01",
        description="Metric alert fired",
        severity="Sev2",
        configuration_items=(VM,),
        resource_ids=(VM,),
    )


async def new_incident(target: Any, inc: Incident) -> str:
    """What the worker does for a new incident: find (nothing), then create."""
    assert await target.find(inc) is None
    return (await target.create(inc)).id


async def counted(fake: FakeServer, work: Callable[[], Awaitable[Any]]) -> tuple[Any, list[str]]:
    before = len(fake.calls)
    result = await work()
    return result, [f"{c.method} {c.path}" for c in fake.calls[before:]]


async def test_a_new_incident_costs_two_calls_once_the_cmdb_cache_is_warm(kind):
    k, fake, target = kind
    ci = k.add_ci(fake)
    first, cold = await counted(fake, lambda: new_incident(target, incident(1)))
    assert k.bound_to(fake, first) == ci
    for n in range(2, 6):
        ticket, calls = await counted(fake, lambda n=n: new_incident(target, incident(n)))
        assert len(calls) == 2, f"{k.name}: new incident {n} cost {len(calls)} calls, not find + create: {calls}"
        assert k.bound_to(fake, ticket) == ci, f"{k.name}: incident {n} lost its CI binding"
    assert len(cold) == len(calls) + 1 + (2 if k.name == "request_tracker" else 1 if k.name == "bmc_helix" else 0), (
        f"{k.name}: the first incident should cost one CMDB lookup more (and the login/queue check): {cold}"
    )


async def test_a_refused_create_invalidates_the_cached_ci_and_the_retry_binds_the_replacement(kind):
    k, fake, target = kind
    k.add_ci(fake)
    await new_incident(target, incident(1))
    k.remove_cis(fake)  # the CI was merged into a new one
    replacement = k.add_ci(fake)
    retry = incident(2)
    assert await target.find(retry) is None
    fake.inject("status", status=400, path=k.create_path, method="POST")
    with pytest.raises(TargetError) as refused:
        await target.create(retry)
    assert not refused.value.retryable
    ticket, calls = await counted(fake, lambda: target.create(retry))
    assert k.bound_to(fake, ticket.id) == replacement, f"{k.name}: the retry still used the stale CI"
    assert len(calls) == 2, f"{k.name}: expected a fresh CMDB lookup and the create: {calls}"


async def test_a_failed_create_worth_retrying_keeps_the_cached_ci(kind):
    k, fake, target = kind
    ci = k.add_ci(fake)
    await new_incident(target, incident(1))
    retry = incident(2)
    fake.inject("status", status=503, path=k.create_path, method="POST")
    with pytest.raises(TargetError):
        await target.create(retry)
    ticket, calls = await counted(fake, lambda: target.create(retry))
    assert len(calls) == 1 and k.bound_to(fake, ticket.id) == ci, calls


async def test_not_found_is_remembered_for_the_default_30_seconds_then_asked_again(kind):
    k, fake, target = kind
    now = [0.0]
    target.ci_cache = CICache(CacheSettings(), clock=lambda: now[0])  # the defaults, on a clock we move
    unbound = await new_incident(target, incident(1))
    assert k.bound_to(fake, unbound) is None
    ci = k.add_ci(fake)  # discovery adds the CI
    now[0] = 29.9
    still, calls = await counted(fake, lambda: new_incident(target, incident(2)))
    assert k.bound_to(fake, still) is None and len(calls) == 2, calls
    now[0] = 30.0
    bound, calls = await counted(fake, lambda: new_incident(target, incident(3)))
    assert k.bound_to(fake, bound) == ci and len(calls) == 3, calls


async def test_a_found_ci_is_kept_for_the_default_5_minutes(kind):
    k, fake, target = kind
    now = [0.0]
    target.ci_cache = CICache(CacheSettings(), clock=lambda: now[0])
    k.add_ci(fake)
    await new_incident(target, incident(1))
    now[0] = 299.9
    _, calls = await counted(fake, lambda: new_incident(target, incident(2)))
    assert len(calls) == 2, calls
    now[0] = 300.0
    _, calls = await counted(fake, lambda: new_incident(target, incident(3)))
    assert len(calls) == 3, calls


# -- the one find query ---------------------------------------------------------------------------

@pytest.fixture
async def snow() -> AsyncIterator[tuple[FakeServiceNow, Any]]:
    fake = FakeServiceNow()
    await fake.start()
    target = make_snow(fake)
    yield fake, target
    await target.close()
    await fake.stop()


async def test_servicenow_finds_open_and_resolved_in_one_query_newest_first(snow):
    fake, target = snow
    resolved = fake.add_incident(correlation_id=incident(1).correlation_key, state="6", close_code="x", close_notes="y")
    found, calls = await counted(fake, lambda: target.find(incident(1)))
    assert found is not None and found.id == resolved["sys_id"] and found.resolved
    assert len(calls) == 1, calls
    assert fake.calls[-1].query["sysparm_query"] == (
        f"correlation_id={incident(1).correlation_key}^stateNOT IN7,8^ORDERBYDESCsys_created_on")
    assert fake.calls[-1].query["sysparm_limit"] == "2"


async def test_servicenow_an_open_duplicate_behind_two_newer_resolved_incidents_is_still_caught(snow):
    fake, target = snow
    key = incident(1).correlation_key
    old_open = fake.add_incident(correlation_id=key, state="2")
    fake.add_incident(correlation_id=key, state="6", close_code="x", close_notes="y")
    fake.add_incident(correlation_id=key, state="6", close_code="x", close_notes="y")
    found, calls = await counted(fake, lambda: target.find(incident(1)))
    assert found is not None and found.id == old_open["sys_id"] and not found.resolved
    assert len(calls) == 2, f"a full page must be settled by an open-only query: {calls}"
    fake.add_incident(correlation_id=key, state="1")
    with pytest.raises(TargetError, match="more than one open incident"):
        await target.find(incident(1))


@pytest.mark.parametrize(
    ("tickets", "found", "searches"),
    [
        ([], None, 1),
        (["open"], "open", 1),
        (["resolved"], "resolved", 1),
        (["resolved", "resolved"], "newest", 2),  # a full page: settled by the open-only search
        (["open", "resolved", "resolved"], 0, 2),  # an open ticket behind two newer resolved ones
    ],
    ids=["none", "open", "resolved", "two-resolved", "open-behind-resolved"],
)
async def test_find_is_one_search_unless_a_full_page_needs_the_open_only_one(kind, tickets, found, searches):
    k, fake, target = kind
    key = incident(1).correlation_key
    ids = [k.add_ticket(fake, key, state == "resolved") for state in tickets]  # oldest first
    await target.find(incident(99))  # a login or queue check, once per process, is not the find's
    ticket, calls = await counted(fake, lambda: target.find(incident(1)))
    assert len(calls) == searches, f"{k.name}: {calls}"
    if found is None:
        assert ticket is None
    elif found == "open" or found == "resolved":
        assert ticket.id == ids[0] and ticket.resolved == (found == "resolved")
    elif found == "newest":
        assert ticket.id == ids[-1] and ticket.resolved
    else:
        assert ticket.id == ids[found] and not ticket.resolved


async def test_two_open_tickets_with_one_key_are_refused_in_one_search(kind):
    k, fake, target = kind
    key = incident(1).correlation_key
    k.add_ticket(fake, key, False)
    k.add_ticket(fake, key, False)
    await target.find(incident(99))
    before = len(fake.calls)
    with pytest.raises(TargetError) as caught:
        await target.find(incident(1))
    assert not caught.value.retryable and "more than one" in str(caught.value)
    assert len(fake.calls) - before == 1
