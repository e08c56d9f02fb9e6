"""Issue 12, ITSM lookups: hostile CI names per query language (item 2: ServiceNow `javascript:` values are
never sent, RT TicketSQL refuses quotes and backslashes, AR qualifications double their quotes), and the
bound on configuration items per alert (item 3: at most `delivery.max_configuration_items`, default 20,
bound; the rest listed in the description)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.alerts import parse_alert_json
from relay.delivery.lifecycle import ticket_keys
from relay.delivery.routing import Route
from relay.schema import DELIVERY, IncidentPer
from relay.targets import Incident
from tests import test_worker
from tests.fakes.bmc_helix import FakeBmcHelix
from tests.fakes.request_tracker import FakeRequestTracker
from tests.fakes.servicenow import FakeServiceNow
from tests.test_bmc_helix_target import make_target as make_bmc
from tests.test_request_tracker_target import QUEUE
from tests.test_request_tracker_target import make_target as make_rt
from tests.test_servicenow_target import make_target as make_sn
from tests.test_worker import FakeTarget, accept, alert_body, drained, make_config, until

# The worker tests' fixtures: a SQLite store, and workers stopped after the test.
store = test_worker.store
running = test_worker.running

CASES: dict[str, int] = {}


def count(group: str) -> None:
    CASES[group] = CASES.get(group, 0) + 1


def incident(cis: tuple[str, ...], **fields: Any) -> Incident:
    return Incident(correlation_key="5b6c1c8e-0b7a-4a41-9f43-2d1f5a9f6c11", summary="CPU high",
                    description="fired", severity="Sev2", fields=fields, configuration_items=cis)


@pytest.fixture
async def servicenow_fake() -> AsyncIterator[FakeServiceNow]:
    server = FakeServiceNow()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def rt() -> AsyncIterator[FakeRequestTracker]:
    server = FakeRequestTracker()
    server.add_queue(QUEUE, custom_fields=("AzureAlertId",))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def bmc() -> AsyncIterator[FakeBmcHelix]:
    server = FakeBmcHelix()
    await server.start()
    yield server
    await server.stop()


# -- item 2: ServiceNow ------------------------------------------------------------------------------

SCRIPTS = ["javascript:gs.getUser()", "JavaScript:gs.sleep(9)", "  javascript:x", "java script:x", "JAVA\tSCRIPT :x",
           "j a v a s c r i p t:x"]


@pytest.mark.parametrize("name", SCRIPTS)
async def test_servicenow_never_sends_a_javascript_ci_name_in_a_query_or_a_new_ci(servicenow_fake, name):
    servicenow_fake.add_ci("web-01")
    target = make_sn(servicenow_fake, ci_binding="create_if_missing")
    try:
        ticket = await target.create(incident((name, "web-01")))
    finally:
        await target.close()
    queries = [c.query.get("sysparm_query", "") for c in servicenow_fake.calls if c.path.startswith("/api/now/table/")]
    bodies = [c.body.decode(errors="replace") for c in servicenow_fake.calls if c.method == "POST"]
    assert not any(name.split(":")[0] in q for q in queries), f"{name!r} was put in an encoded query: {queries}"
    assert not any(json.dumps(name)[1:-1] in b for b in bodies), f"{name!r} was sent in a created record"
    assert servicenow_fake.incidents[ticket.id]["cmdb_ci"], "the other CI should still be bound"
    count("ServiceNow javascript: CI names left unbound (item 2)")


async def test_servicenow_leaves_out_a_route_field_that_is_a_script(servicenow_fake):
    target = make_sn(servicenow_fake)
    try:
        ticket = await target.create(incident((), category="JavaScript: gs.eval()", assignment_group="Cloud Ops"))
    finally:
        await target.close()
    record = servicenow_fake.incidents[ticket.id]
    assert "javascript" not in str(record.get("category", "")).lower(), "a script value reached the record"
    assert record["assignment_group"] == "Cloud Ops"
    count("ServiceNow javascript: field values left out (item 2)")


@pytest.mark.parametrize("name", ["javascriptish-host", "my javascript: notes", "vm-javascript"])
async def test_servicenow_binds_names_that_merely_mention_javascript(servicenow_fake, name):
    ci = servicenow_fake.add_ci(name)
    target = make_sn(servicenow_fake)
    try:
        ticket = await target.create(incident((name,)))
    finally:
        await target.close()
    assert servicenow_fake.incidents[ticket.id]["cmdb_ci"] == ci["sys_id"]


# -- item 2: RT TicketSQL / AssetSQL -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x' OR Name LIKE '", "web\\' OR 1=1 --", 'say "hi"', "web-01'"])
async def test_rt_refuses_ci_names_that_would_change_the_query(rt, name):
    rt.add_asset("web-01")
    target = make_rt(rt, ci_binding="create_if_missing")
    try:
        ticket = await target.create(incident((name,)))
    finally:
        await target.close()
    searches = [c.form().get("query", "") for c in rt.calls if c.path.endswith("/assets")]
    assert all(name not in q for q in searches), f"{name!r} went into AssetSQL: {searches}"
    assert rt.tickets[int(ticket.id)]["RefersTo"] == [], "a hostile name linked an asset"
    assert all(a["Name"] != name for a in rt.assets.values())
    count("RT hostile asset names refused (item 2)")


# -- item 2: BMC Helix AR qualifications ---------------------------------------------------------------

@pytest.mark.parametrize("name", ['web" OR \'Name\' LIKE "%', 'x"" OR ""1"" = ""1', '" OR 1=1 OR "', "back\\slash\""])
async def test_bmc_quotes_hostile_ci_names_as_one_literal(bmc, name):
    bmc.add_ci("web-01")
    target = make_bmc(bmc)
    try:
        ticket = await target.create(incident((name,)))
    finally:
        await target.close()
    lookups = [c.query["qualification"] for c in bmc.calls if c.path.startswith("/api/cmdb/") and c.method == "GET"]
    assert lookups, "no CMDB lookup was made"
    assert lookups[-1] == "'Name' = \"" + name.replace('"', '""') + '"', f"not one quoted literal: {lookups[-1]}"
    assert not bmc.incidents[ticket.id].get("HPD_CI_ReconID"), f"{name!r} matched another CI"
    count("BMC hostile CI names quoted (item 2)")


# -- item 3: configuration items per alert ------------------------------------------------------------

def many_cis(n: int) -> list[str]:
    return [f"vm-{i:04d}" for i in range(n)]


def test_default_bound_is_20_configuration_items():
    alert = parse_alert_json(alert_body(cis=many_cis(400)))
    [key] = ticket_keys(alert, IncidentPer.ALERT)
    assert DELIVERY["max_configuration_items"].default == 20
    assert len(key.configuration_items) == 20 and len(key.unbound) == 380
    per_ci = ticket_keys(alert, IncidentPer.CONFIGURATION_ITEM)
    assert len(per_ci) == 20, f"{len(per_ci)} incidents for one alert"
    count("CI bound at the default (item 3)")


class DescribingTarget(FakeTarget):
    async def create(self, incident):  # type: ignore[no-untyped-def]
        ticket = await super().create(incident)
        self.tickets[ticket.id]["description"] = incident.description
        return ticket


@pytest.mark.parametrize(("per", "limit", "cis"), [("configuration_item", 5, 3000), ("alert", 5, 400),
                                                   ("alert", 20, 400)])
async def test_one_alert_with_many_cis_binds_at_most_the_limit_and_lists_the_rest(store, running, per, limit, cis):
    target = DescribingTarget()
    await accept(store, alert_body(cis=many_cis(cis)))
    config = make_config(Route(target="itsm", incident_per=per), max_configuration_items=limit)
    await running(store, config, {"itsm": target})
    await until(lambda: drained(store), "event delivered")
    expected_tickets = limit if per == "configuration_item" else 1
    assert len(target.tickets) == expected_tickets, f"{len(target.tickets)} incidents from one alert of {cis} CIs"
    bound = {ci for t in target.tickets.values() for ci in t["cis"]}
    assert len(bound) == limit
    description = next(iter(target.tickets.values()))["description"]
    assert "not bound" in description and f"vm-{limit:04d}" in description, "the rest must be listed"
    count(f"alerts of {cis} CIs bound to {limit} (item 3)")


def test_the_limit_is_read_from_relay_config(tmp_path):
    from relay.delivery.config import ConfigError, load_config

    path = tmp_path / "relay.yaml"
    base = "targets:\n  out: {kind: dry_run}\nroutes:\n  - target: out\ndelivery:\n"
    path.write_text(base + "  max_configuration_items: 5\n")
    assert load_config(str(path)).delivery.max_configuration_items == 5
    path.write_text(base + "  max_configuration_items: 0\n")
    with pytest.raises(ConfigError, match="max_configuration_items"):
        load_config(str(path))


def test_report_itsm_counts(fault_report):
    assert CASES, "run with the tests above"
    fault_report("ITSM lookup hardening", "; ".join(f"{n} {group}" for group, n in sorted(CASES.items())))
