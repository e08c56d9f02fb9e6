"""The Request Tracker target against a real RT 5: the lifecycle an alert takes, and RT's quirks.

One RT serves the whole session; each test uses its own correlation keys, so tests never see each
other's tickets.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from relay.alerts import parse_alert
from relay.targets import Incident, TargetError, Ticket, request_tracker
from tests.conftest import load_sample
from tests.e2e.rt_relay import QUICK_DELIVERY, RT_TARGET, SUB, RTAdmin, alert_body, post_alert, relay_fixture, until_rt
from tests.rt_server import RunningRT

pytestmark = pytest.mark.e2e


def linked_assets(ticket: dict[str, Any]) -> list[str]:
    return [
        link["id"]
        for link in ticket["_hyperlinks"]
        if link.get("ref") == "refers-to" and link["type"] == "asset"
    ]


def custom_field(ticket: dict[str, Any], name: str) -> list[str]:
    return [v for cf in ticket.get("CustomFields", []) if cf["name"] == name for v in cf["values"]]


def new_alert(resource: str | None = None, key: str | None = None) -> Incident:
    name = f"vm-{uuid.uuid4().hex[:8]}"
    vm = resource or f"{SUB}/resourcegroups/rg-e2e/providers/microsoft.compute/virtualmachines/{name}"
    return Incident(
        correlation_key=key or str(uuid.uuid4()),
        summary=f"[Sev1] CPU over 90% on {vm.rsplit('/', 1)[-1]}",
        description=f"Azure Monitor alert cpu-high\nResource: {vm}",
        severity="Sev1",
        fields={"Priority": 75},
        configuration_items=(vm.rsplit("/", 1)[-1],),
        resource_ids=(vm,),
    )


def make_target(rt: RunningRT, **options: Any) -> request_tracker.RequestTrackerTarget:
    cfg = {
        "kind": "request_tracker",
        "base_url": rt.url,
        "auth": {"type": "token", "token_env": "RT_TOKEN"},
        "queue": rt.queue,
        "custom_field": rt.custom_field,
        "asset_catalog": rt.catalog,
        "timeout_seconds": 30,
        **options,
    }
    return request_tracker.from_config(
        "rt-e2e", cfg, env={"RT_TOKEN": rt.token, "RT_PASSWORD": rt.root_password}
    )


@pytest.fixture
async def target(rt_server: RunningRT) -> AsyncIterator[request_tracker.RequestTrackerTarget]:
    t = make_target(rt_server)
    yield t
    await t.close()


async def test_fire_opens_one_ticket_carrying_the_key_and_linked_to_its_asset(rt_server, admin, target):
    alert = new_alert()
    asset_id = await admin.add_asset(alert.resource_ids[0])
    assert await target.find(alert) is None
    ticket = await target.create(alert)
    stored = await admin.ticket(ticket.id)
    assert custom_field(stored, rt_server.custom_field) == [alert.correlation_key]
    assert stored["Status"] == "new" and stored["Subject"] == alert.summary
    assert linked_assets(stored) == [asset_id], "the ticket must refer to the asset named by the ARM id"
    assert [t["id"] for t in await admin.tickets_with_key(alert.correlation_key)] == [ticket.id]


async def test_create_if_missing_creates_the_asset_named_by_the_arm_id(rt_server, admin):
    alert = new_alert()
    target = make_target(rt_server, ci_binding="create_if_missing")
    try:
        ticket = await target.create(alert)
    finally:
        await target.close()
    [asset] = await admin.assets_named(alert.resource_ids[0])
    assert linked_assets(await admin.ticket(ticket.id)) == [asset["id"]]


async def test_an_asset_named_in_another_case_is_still_linked(rt_server, admin, target):
    alert = new_alert()
    asset_id = await admin.add_asset(alert.resource_ids[0].replace("virtualmachines", "virtualMachines"))
    ticket = await target.create(alert)
    assert linked_assets(await admin.ticket(ticket.id)) == [asset_id]


async def test_repeats_keep_one_ticket_and_add_comments(rt_server, admin, target):
    alert = new_alert()
    ticket = await target.create(alert)
    for n in (1, 2):
        found = await target.find(alert)
        assert found == Ticket(ticket.id, ticket.id, resolved=False), "a repeat must find the open ticket"
        await target.note(found, alert, f"fired again ({n})")
    assert len(await admin.tickets_with_key(alert.correlation_key)) == 1
    assert await admin.comments(ticket.id) == ["fired again (1)", "fired again (2)"]


async def test_resolve_resolves_the_ticket_and_find_reports_it_resolved(rt_server, admin, target):
    alert = new_alert()
    ticket = await target.create(alert)
    await target.resolve(ticket, alert, "Resolved automatically at 2026-01-01T10:30:00Z (resolvedDateTime).")
    assert (await admin.ticket(ticket.id))["Status"] == "resolved"
    assert await target.find(alert) == Ticket(ticket.id, ticket.id, resolved=True)
    await target.resolve(ticket, alert, "resolved again")  # a repeated Resolved changes nothing


async def test_refire_with_reopen_policy_reopens_the_same_ticket(rt_server, admin, target):
    alert = new_alert()
    ticket = await target.create(alert)
    await target.resolve(ticket, alert, "resolved")
    await target.reopen(ticket, alert, "Reopened: fired again after it was resolved.")
    assert (await admin.ticket(ticket.id))["Status"] == "open"
    assert await target.find(alert) == Ticket(ticket.id, ticket.id, resolved=False)
    assert len(await admin.tickets_with_key(alert.correlation_key)) == 1


async def test_refire_with_new_policy_opens_a_second_ticket_under_the_next_key(rt_server, admin, target):
    first = new_alert()
    ticket = await target.create(first)
    await target.resolve(ticket, first, "resolved")
    second = Incident(
        **{
            **{f: getattr(first, f) for f in first.__dataclass_fields__},
            "correlation_key": f"{first.correlation_key}.2",
        }
    )
    assert await target.find(second) is None
    successor = await target.create(second)
    assert successor.id != ticket.id
    assert await target.find(first) == Ticket(ticket.id, ticket.id, resolved=True)
    assert await target.find(second) == Ticket(successor.id, successor.id, resolved=False)


async def test_two_active_tickets_with_one_key_is_an_error(rt_server, admin, target):
    key = str(uuid.uuid4())
    for _ in range(2):
        await admin.post(
            "/ticket",
            {"Queue": rt_server.queue, "Subject": "dup", "CustomFields": {rt_server.custom_field: key}},
        )
    with pytest.raises(TargetError) as info:
        await target.find(new_alert(key=key))
    assert not info.value.retryable


async def test_a_queue_without_the_custom_field_is_refused_before_any_ticket_exists(rt_server, admin):
    alert = new_alert()
    target = make_target(rt_server, queue="General")
    try:
        with pytest.raises(TargetError, match="not applied to queue 'General'") as info:
            await target.create(alert)
    finally:
        await target.close()
    assert not info.value.retryable
    assert await admin.tickets_with_key(alert.correlation_key) == []


async def test_a_status_the_lifecycle_does_not_know_is_reported_with_rts_message(rt_server, admin):
    alert = new_alert()
    target = make_target(rt_server, resolved_status="done")
    try:
        ticket = await target.create(alert)
        with pytest.raises(TargetError, match="isn't a valid status") as info:
            await target.resolve(ticket, alert, "r")
    finally:
        await target.close()
    assert not info.value.retryable
    assert (await admin.ticket(ticket.id))["Status"] == "new"


async def test_a_comment_on_a_ticket_rt_does_not_have_is_not_retryable(rt_server, target):
    with pytest.raises(TargetError) as info:
        await target.note(Ticket("999999", "999999"), new_alert(), "n")
    assert (info.value.status, info.value.retryable) == (400, False)


async def test_basic_auth_as_root_works_and_a_wrong_token_is_not_retryable(rt_server):
    alert = new_alert()
    basic = make_target(rt_server, auth={"type": "basic", "username": "root", "password_env": "RT_PASSWORD"})
    wrong = request_tracker.from_config(
        "rt-e2e",
        {"base_url": rt_server.url, "auth": {"type": "token", "token_env": "T"}, "queue": rt_server.queue},
        env={"T": "1-14-00000000000000000000000000000000"},
    )
    try:
        assert await basic.find(alert) is None
        with pytest.raises(TargetError) as info:
            await wrong.find(alert)
    finally:
        await basic.close()
        await wrong.close()
    assert (info.value.status, info.value.retryable) == (401, False)


# -- the relay itself: POST /alerts -> store -> worker -> RT -------------------------------------------

RELAY_CONFIG = "targets:\n  rt:\n" + RT_TARGET + """\
    timeout_seconds: 30
  rt_reopen:
""" + RT_TARGET + """\
    ci_binding: create_if_missing
    timeout_seconds: 30
routes:
  - match: {{alert_rule: "e2e-reopen-*"}}
    target: rt_reopen
    on_refire: reopen
  - target: rt
    on_refire: new
""" + QUICK_DELIVERY
relay = relay_fixture(RELAY_CONFIG)  # a fixture: (relay process, dev issuer)


async def test_the_relay_opens_dedups_resolves_and_opens_anew_on_refire(rt_server, admin, relay):
    process, issuer = relay
    guid = str(uuid.uuid4())
    vm = f"{SUB}/resourcegroups/rg-e2e/providers/microsoft.compute/virtualmachines/relay-{guid[:8]}"
    asset_id = await admin.add_asset(vm)
    t0, t1, t2, t3 = (f"2026-01-01T10:{m:02d}:00.000Z" for m in (0, 5, 10, 20))
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # Azure's retries and a second action group: one event
            await post_alert(http, process, issuer, alert_body(guid, "e2e-cpu", vm, t0))

        async def the_ticket() -> list[dict[str, Any]]:
            return await admin.tickets_with_key(guid)

        [ticket] = await until_rt("a ticket for the fired alert", the_ticket, process)
        stored = await admin.ticket(ticket["id"])
        assert linked_assets(stored) == [asset_id], "the ticket must refer to the alert's asset"

        await post_alert(
            http, process, issuer, alert_body(guid, "e2e-cpu", vm, t1)
        )  # fired again, still open

        async def noted() -> list[str]:
            return await admin.comments(ticket["id"])

        await until_rt("a comment for the repeat", noted, process)
        assert len(await admin.tickets_with_key(guid)) == 1, "a repeat must not open a second ticket"

        await post_alert(http, process, issuer, alert_body(guid, "e2e-cpu", vm, t1, resolved=t2))

        async def resolved() -> bool:
            return (await admin.ticket(ticket["id"]))["Status"] == "resolved"

        await until_rt("the ticket resolved", resolved, process)
        assert any(t2.replace(".000Z", "") in c for c in await admin.comments(ticket["id"])), (
            "the resolve comment must carry resolvedDateTime"
        )

        await post_alert(http, process, issuer, alert_body(guid, "e2e-cpu", vm, t3))  # on_refire: new

        async def successor() -> list[dict[str, Any]]:
            return await admin.tickets_with_key(f"{guid}.2")

        [second] = await until_rt("a second ticket for the re-fire", successor, process)
    assert second["id"] != ticket["id"]
    assert (await admin.ticket(ticket["id"]))["Status"] == "resolved", "the first ticket stays resolved"
    assert linked_assets(await admin.ticket(second["id"])) == [asset_id]


async def test_the_relay_reopens_on_refire_when_the_route_says_so(rt_server, admin, relay):
    process, issuer = relay
    guid = str(uuid.uuid4())
    vm = f"{SUB}/resourcegroups/rg-e2e/providers/microsoft.compute/virtualmachines/reopen-{guid[:8]}"
    t0, t1, t2 = (f"2026-01-01T11:{m:02d}:00.000Z" for m in (0, 5, 10))
    async with aiohttp.ClientSession() as http:
        await post_alert(http, process, issuer, alert_body(guid, "e2e-reopen-cpu", vm, t0))

        async def the_ticket() -> list[dict[str, Any]]:
            return await admin.tickets_with_key(guid)

        [ticket] = await until_rt("a ticket for the fired alert", the_ticket, process)
        [asset] = await admin.assets_named(vm)
        assert linked_assets(await admin.ticket(ticket["id"])) == [asset["id"]], "create_if_missing made it"

        await post_alert(http, process, issuer, alert_body(guid, "e2e-reopen-cpu", vm, t0, resolved=t1))

        def status_is(status: str) -> Any:
            async def check() -> bool:
                return (await admin.ticket(ticket["id"]))["Status"] == status

            return check

        await until_rt("the ticket resolved", status_is("resolved"), process)
        await post_alert(http, process, issuer, alert_body(guid, "e2e-reopen-cpu", vm, t2))
        await until_rt("the ticket reopened", status_is("open"), process)
    assert [t["id"] for t in await admin.tickets_with_key(guid)] == [ticket["id"]]
    assert await admin.tickets_with_key(f"{guid}.2") == []


# -- what the ticket says: the content an on-call engineer acts on ---------------------------------------

# RT 5's default %PriorityAsString (RT_Config.pm); RT shows the label of the highest value not above the number.
RT_PRIORITY_LABELS = {"Low": 0, "Medium": 50, "High": 100}


def rt_priority_label(priority: Any) -> str:
    n = int(priority)
    return max(((v, label) for label, v in RT_PRIORITY_LABELS.items() if n >= v), default=(0, "unknown"))[1]


async def ticket_content(admin: RTAdmin, ticket_id: str) -> str:
    """The text the ticket was created with (its Create transaction's content)."""
    history = await admin.get(f"/ticket/{ticket_id}/history?fields=Type&per_page=100")
    [create] = [item for item in history["items"] if item.get("Type") == "Create"]
    attachments = await admin.get(f"/transaction/{create['id']}/attachments?fields=Content")
    return "\n".join(str(a.get("Content", "")) for a in attachments["items"])


def sample_body(name: str, guid: str, **essentials: Any) -> bytes:
    doc = load_sample(name)
    e = doc["data"]["essentials"]
    e["alertId"] = f"{SUB}/providers/Microsoft.AlertsManagement/alerts/{guid}"
    e.update(essentials)
    return json.dumps(doc).encode()


async def test_the_ticket_says_what_on_call_needs_and_a_refire_names_the_previous_ticket(rt_server, admin, relay):
    process, issuer = relay
    guid = str(uuid.uuid4())
    vm = f"{SUB}/resourcegroups/rg-e2e/providers/microsoft.compute/virtualmachines/oncall-{guid[:8]}"
    t0, t1, t2 = (f"2026-01-01T12:{m:02d}:00.000Z" for m in (0, 5, 10))
    async with aiohttp.ClientSession() as http:
        await post_alert(http, process, issuer, alert_body(guid, "e2e-oncall-cpu", vm, t0))

        async def the_ticket() -> list[dict[str, Any]]:
            return await admin.tickets_with_key(guid)

        [first] = await until_rt("a ticket for the fired alert", the_ticket, process)
        stored = await admin.ticket(first["id"])
        content = await ticket_content(admin, first["id"])
        await post_alert(http, process, issuer, alert_body(guid, "e2e-oncall-cpu", vm, t0, resolved=t1))

        async def resolved() -> bool:
            return (await admin.ticket(first["id"]))["Status"] == "resolved"

        await until_rt("the ticket resolved", resolved, process)
        await post_alert(http, process, issuer, alert_body(guid, "e2e-oncall-cpu", vm, t2))

        async def successor() -> list[dict[str, Any]]:
            return await admin.tickets_with_key(f"{guid}.2")

        [second] = await until_rt("a second ticket for the re-fire", successor, process)
        second_content = await ticket_content(admin, second["id"])
    assert stored["Subject"] == f"[Sev1] e2e-oncall-cpu on {vm.rsplit('/', 1)[-1]}"
    assert rt_priority_label(stored["Priority"]) == "High", f"Sev1 shows as {rt_priority_label(stored['Priority'])}"
    assert "Alert rule: e2e-oncall-cpu" in content
    assert "Subscription: 0f0e0d0c-0b0a-0908-0706-050403020100 | Resource group: rg-e2e" in content
    assert "Azure portal: https://portal.azure.com/#view/Microsoft_Azure_Monitoring_Alerts/AlertDetails" in content
    assert guid in content.split("Azure portal: ", 1)[1].splitlines()[0], "the portal link is built from the alert id"
    assert "To silence it" in content and "alert processing rule" in content
    assert "previous ticket" not in content
    assert f"Fired again after its previous ticket {first['id']} was resolved" in second_content


async def test_a_log_alert_ticket_links_its_search_results_and_a_budget_alert_has_no_sev_placeholder(
    rt_server, admin, relay
):
    process, issuer = relay
    log_guid, budget_guid = str(uuid.uuid4()), str(uuid.uuid4())
    log_body = sample_body("testaction-log-v2-fired.json", log_guid, severity="Sev3")
    doc = load_sample("testaction-budget-fired.json")
    doc["data"]["essentials"]["alertId"] = f"{SUB}/providers/Microsoft.CostManagement/alerts/{budget_guid}"
    async with aiohttp.ClientSession() as http:
        await post_alert(http, process, issuer, log_body)
        await post_alert(http, process, issuer, json.dumps(doc).encode())

        async def log_ticket() -> list[dict[str, Any]]:
            return await admin.tickets_with_key(log_guid)

        [log_t] = await until_rt("a ticket for the log alert", log_ticket, process)
        log_content = await ticket_content(admin, log_t["id"])
        log_stored = await admin.ticket(log_t["id"])
        budget_key = parse_alert(doc).correlation_key

        async def budget_ticket() -> list[dict[str, Any]]:
            return await admin.tickets_with_key(budget_key)

        [budget_t] = await until_rt("a ticket for the budget alert", budget_ticket, process)
        budget = await admin.ticket(budget_t["id"])
    assert "Log search results: https://portal.azure.com" in log_content
    assert rt_priority_label(log_stored["Priority"]) == "Low", "Sev3 must show as Low"
    assert budget["Subject"] == "Cost budget Test_forcasted_budget spent $999.99 of $50.00"
    assert "Sev?" not in budget["Subject"]
