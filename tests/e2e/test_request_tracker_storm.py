"""Storm grouping end to end through the real Request Tracker 5: POST /alerts -> store -> worker -> RT.

A storm of 30 alerts of one rule gives one parent ticket, the first alerts' tickets and the linked children
as RT members of it (MemberOf), the rest as comments on the parent; the parent resolves with the last alert.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from tests.e2e.rt_relay import QUICK_DELIVERY, RT_TARGET, SUB, RTAdmin, alert_body, post_alert, relay_fixture, until_rt

pytestmark = pytest.mark.e2e

STORM_CONFIG = "targets:\n  rt:\n" + RT_TARGET + """\
    ci_binding: none
    timeout_seconds: 30
routes:
  - target: rt
    group:
      by: [alert_rule, resource_group]
      open_parent_after: 5
      children: link
      max_children: 10
""" + QUICK_DELIVERY
relay = relay_fixture(STORM_CONFIG)  # a fixture: (relay process, dev issuer)


def parents_of(ticket: dict[str, Any]) -> list[str]:
    return [str(link["id"]) for link in ticket["_hyperlinks"] if link.get("ref") == "parent"]


@pytest.mark.timeout(900)  # some 250 REST2 calls to a real RT, on a shared CI machine
async def test_a_storm_of_30_alerts_gives_one_parent_with_its_children_linked(rt_server, admin: RTAdmin, relay):
    process, issuer = relay
    rule = f"e2e-storm-{uuid.uuid4().hex[:8]}"
    guids = [str(uuid.uuid4()) for _ in range(30)]
    vm = f"{SUB}/resourcegroups/rg-storm/providers/microsoft.compute/virtualmachines/vm-"
    fired = [f"2026-01-01T11:02:{i:02d}.000Z" for i in range(30)]
    async with aiohttp.ClientSession() as http:
        for guid, when in zip(guids, fired, strict=True):
            await post_alert(http, process, issuer, alert_body(guid, rule, vm + guid[:8], when))
        await post_alert(http, process, issuer, alert_body(guids[0], rule, vm + guids[0][:8], fired[0]))  # a retry

        async def own_tickets() -> list[dict[str, Any]] | None:
            found = [t for g in guids for t in await admin.tickets_with_key(g)]
            return found if len(found) >= 15 else None

        own = await until_rt("15 tickets of their own (5 first alerts, 10 children)", own_tickets, process, 180)

        async def the_parent() -> list[dict[str, Any]] | None:
            form = {"query": f"Subject LIKE 'alerts of rule {rule}'", "fields": "Subject,Status"}
            async with admin.session.post(f"{rt_server.url}/REST/2.0/tickets", data=form,
                                          headers=admin.headers) as resp:
                items = (await resp.json())["items"]
            return items or None

        [parent] = await until_rt("one parent ticket", the_parent, process)

        async def all_linked() -> bool:
            for t in own:
                if parents_of(await admin.ticket(t["id"])) != [str(parent["id"])]:
                    return False
            return True

        await until_rt("every own and child ticket a member of the parent", all_linked, process, 120)

        async def notes_for_the_rest() -> bool:
            return sum("joined as alert" in c for c in await admin.comments(parent["id"])) >= 24

        await until_rt("the later alerts noted on the parent", notes_for_the_rest, process, 120)
        assert len(own) == 15, f"{len(own)} tickets of their own; 5 first alerts + 10 children expected"

        async def counted() -> str | None:
            subject = (await admin.ticket(parent["id"]))["Subject"]
            return subject if subject.startswith("30 alerts of rule ") else None

        subject = await until_rt("the parent's subject counting all 30 alerts", counted, process)
        assert subject.endswith(f"of rule {rule} in rg-storm since 11:02 UTC"), subject

        for guid, when in zip(guids, fired, strict=True):
            await post_alert(http, process, issuer,
                             alert_body(guid, rule, vm + guid[:8], when, resolved="2026-01-01T11:30:00.000Z"))

        async def parent_resolved() -> bool:
            return (await admin.ticket(parent["id"]))["Status"] == "resolved"

        await until_rt("the parent resolved once every alert had", parent_resolved, process, 180)
    statuses = {(await admin.ticket(t["id"]))["Status"] for t in own}
    assert statuses == {"resolved"}, f"member tickets left {statuses}"
