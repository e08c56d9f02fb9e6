"""A Service Health incident through the relay into a real RT 5: one ticket per incident and subscription,
the tracking id in its subject, impact and the first communication in its content, each later
communication a comment, Resolved resolving it and the RCA commenting on the resolved ticket.

The notifications are the official test-action sample with what differs between an incident's
notifications changed (stage, communication, communicationId, firedDateTime, subscription).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest

from tests.conftest import load_sample
from tests.e2e import test_request_tracker_e2e as rt_e2e
from tests.e2e.rt_relay import post_alert, until_rt
from tests.e2e.test_request_tracker_e2e import ticket_content

pytestmark = pytest.mark.e2e
relay = rt_e2e.relay  # a fixture: the relay process in front of RT (`admin`, RT's REST2, is the conftest's)

SUB_A = "0f0e0d0c-0b0a-0908-0706-050403020100"
SUB_B = "1f1e1d1c-1b1a-1918-1716-151413121110"


def notification(tracking: str, stage: str, communication: str, n: int, sub: str = SUB_A) -> bytes:
    doc = load_sample("testaction-servicehealth-fired.json")
    e = doc["data"]["essentials"]
    e["alertId"] = f"/subscriptions/{sub}/providers/Microsoft.AlertsManagement/alerts/{uuid.uuid4()}"
    e["alertTargetIDs"] = [f"/subscriptions/{sub}"]
    e["firedDateTime"] = f"2026-01-02T08:{n:02d}:00.000Z"
    props = doc["data"]["alertContext"]["properties"]
    props.update(trackingId=tracking, stage=stage, communication=communication, communicationId=f"c{n}",
                 title="Azure SQL Database connectivity issues",
                 impactedServices=[{"ServiceName": "SQL Database", "ImpactedRegions": [
                     {"RegionName": "West Europe"}, {"RegionName": "North Europe"}]}])
    return json.dumps(doc).encode()


async def test_one_incident_is_one_ticket_per_subscription_with_a_comment_per_communication(admin, relay):
    process, issuer = relay
    tracking = f"E2E-{uuid.uuid4().hex[:6].upper()}"
    key = f"sh-{tracking.lower()}-{SUB_A}"
    async with aiohttp.ClientSession() as http:
        first = notification(tracking, "Active", "<p>We are <b>investigating</b>.</p>", 1)
        await post_alert(http, process, issuer, first)

        async def the_ticket() -> list[dict[str, Any]]:
            return await admin.tickets_with_key(key)

        [ticket] = await until_rt("a ticket for the incident", the_ticket, process)
        stored = await admin.ticket(ticket["id"])
        assert stored["Subject"].startswith(f"[Sev4] Service Health {tracking}: Azure SQL Database connectivity")
        content = await ticket_content(admin, ticket["id"])
        assert "Impacted: SQL Database (West Europe, North Europe)" in content
        assert "Communication c1:\nWe are investigating." in content

        await post_alert(http, process, issuer, notification(tracking, "Active", "<p>Mitigation under way.</p>", 2))

        def comments_holding(text: str) -> Any:
            async def check() -> list[str]:
                return [c for c in await admin.comments(ticket["id"]) if text in c]
            return check

        [update] = await until_rt("a comment with the second communication",
                                  comments_holding("Mitigation under way."), process)
        assert f"Azure Service Health update for {tracking} (stage Active)" in update

        # The same incident seen by another subscription: its own ticket.
        await post_alert(http, process, issuer, notification(tracking, "Active", "<p>Seen from B.</p>", 1, SUB_B))

        async def other() -> list[dict[str, Any]]:
            return await admin.tickets_with_key(f"sh-{tracking.lower()}-{SUB_B}")

        [second] = await until_rt("a ticket for the other subscription", other, process)
        assert second["id"] != ticket["id"]

        await post_alert(http, process, issuer, notification(tracking, "Resolved", "<p>Mitigated at 09:40.</p>", 3))

        async def resolved() -> bool:
            return (await admin.ticket(ticket["id"]))["Status"] == "resolved"

        await until_rt("the ticket resolved", resolved, process)
        [resolve] = [c for c in await admin.comments(ticket["id"]) if "Mitigated at 09:40." in c]
        assert resolve.startswith(f"Resolved automatically: Azure Service Health {tracking} resolved (stage Resolved)")

        rca_body = notification(tracking, "RCA", "<p>Root cause: a bad deployment.</p>", 4)
        await post_alert(http, process, issuer, rca_body)
        [rca] = await until_rt("a comment with the RCA", comments_holding("Root cause: a bad deployment."), process)
        assert "(stage RCA)" in rca
    assert [t["id"] for t in await admin.tickets_with_key(key)] == [ticket["id"]]
    assert (await admin.ticket(ticket["id"]))["Status"] == "resolved", "the RCA comments, it does not reopen"
    assert (await admin.ticket(second["id"]))["Status"] != "resolved", "subscription B's notifications are its own"
