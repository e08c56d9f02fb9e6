"""Issue 15 end to end through the real relay and a real Request Tracker 5, with the scheduler's default pace:
a maintenance window that ends with its alert still firing opens that alert's ticket then (once), and a
flapping alert keeps one ticket open until its held resolve is delivered."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from devtools.dev_issuer import DevIssuer
from tests.e2e.rt_relay import RT_TARGET, SUB, alert_body, post_alert, relay_for_rt, until_rt
from tests.relay_process import RelayProcess
from tests.rt_server import RunningRT

pytestmark = pytest.mark.e2e

HOLD_SECONDS = 90  # the four events take RT a while on a busy machine; the hold must outlast them
WINDOW_SECONDS = 60  # from the relay's start: long enough for it to start and take the alerts on a busy machine

CONFIG = "targets:\n  rt:\n" + RT_TARGET + """\
routes:
  - match: {{alert_rule: "e2e-flap-*"}}
    target: rt
    flapping: {{window_seconds: 600, transitions: 3, hold_resolve_seconds: {hold}}}
  - target: rt
maintenance:
  - name: e2e-patching
    scope: {{alert_rule: "e2e-maint-*"}}
    schedule: {{start: "{start}", end: "{end}", time_zone: Europe/Berlin}}
"""


@pytest.fixture
async def relay(rt_server: RunningRT, tmp_path) -> AsyncIterator[tuple[RelayProcess, DevIssuer, datetime]]:
    now = datetime.now(UTC)
    end = now + timedelta(seconds=WINDOW_SECONDS)
    # Times with their offset spelled out: the window's time_zone applies only to times without one.
    start, end_text = (now - timedelta(minutes=5)).isoformat(), end.isoformat()
    async with relay_for_rt(rt_server, tmp_path, CONFIG, log_level="DEBUG", start=start, end=end_text,
                            hold=HOLD_SECONDS) as (process, issuer):
        yield process, issuer, end


async def test_a_window_ending_with_its_alert_still_firing_opens_its_ticket_then(rt_server, admin, relay):
    process, issuer, end = relay
    firing, gone, outside = (str(uuid.uuid4()) for _ in range(3))
    vm = f"{SUB}/resourcegroups/rg-e2e/providers/microsoft.compute/virtualmachines/maint-{firing[:8]}"
    fired = (datetime.now(UTC) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    resolved = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    async with aiohttp.ClientSession() as http:
        await post_alert(http, process, issuer, alert_body(firing, "e2e-maint-cpu", vm, fired))
        await post_alert(http, process, issuer, alert_body(gone, "e2e-maint-disk", vm, fired))
        await post_alert(http, process, issuer, alert_body(gone, "e2e-maint-disk", vm, fired, resolved=resolved))
        await post_alert(http, process, issuer, alert_body(outside, "e2e-other-cpu", vm, fired))

        async def outside_ticket() -> list:
            return await admin.tickets_with_key(outside)

        # An alert out of the window's scope is not held back: by the time its ticket exists, the others
        # (accepted before it, same relay) were decided too.
        await until_rt("the ticket of the alert outside the window's scope", outside_ticket, process)
        assert datetime.now(UTC) < end, "the relay took too long to start for this test's window"
        assert await admin.tickets_with_key(firing) == [], "a ticket was opened inside the window"

        async def firing_ticket() -> list:
            return await admin.tickets_with_key(firing)

        [ticket] = await until_rt("the ticket opened at the window's end", firing_ticket, process,
                                  limit=WINDOW_SECONDS + 60)
        assert datetime.now(UTC) >= end, "the ticket opened before the window ended"
        await asyncio.sleep(8)  # more scheduler runs (every 5 s): still one ticket, and none for `gone`
    assert len(await admin.tickets_with_key(firing)) == 1
    assert (await admin.ticket(ticket["id"]))["Status"] != "resolved"
    assert await admin.tickets_with_key(gone) == [], "an alert that resolved inside the window got a ticket"


async def test_a_flapping_alert_keeps_its_ticket_open_until_the_held_resolve_is_delivered(rt_server, admin, relay):
    process, issuer, _ = relay
    guid = str(uuid.uuid4())
    vm = f"{SUB}/resourcegroups/rg-e2e/providers/microsoft.compute/virtualmachines/flap-{guid[:8]}"
    base = datetime.now(UTC) - timedelta(seconds=5)
    t = [(base + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.000Z") for i in range(4)]
    async with aiohttp.ClientSession() as http:
        await post_alert(http, process, issuer, alert_body(guid, "e2e-flap-cpu", vm, t[0]))
        await post_alert(http, process, issuer, alert_body(guid, "e2e-flap-cpu", vm, t[0], resolved=t[1]))
        await post_alert(http, process, issuer, alert_body(guid, "e2e-flap-cpu", vm, t[2]))
        await post_alert(http, process, issuer, alert_body(guid, "e2e-flap-cpu", vm, t[2], resolved=t[3]))

        async def second() -> list:
            return await admin.tickets_with_key(f"{guid}.2")

        [ticket] = await until_rt("the second ticket (before the alert counted as flapping)", second, process)

        async def flapping_noted() -> bool:
            return any("flapping" in c for c in await admin.comments(ticket["id"]))

        await until_rt("the flapping note", flapping_noted, process)
        held_until = base + timedelta(seconds=3 + HOLD_SECONDS)
        assert datetime.now(UTC) < held_until, "the relay took too long for this test's hold"
        assert (await admin.ticket(ticket["id"]))["Status"] != "resolved", "the fourth change must be held"

        async def resolved() -> bool:
            return (await admin.ticket(ticket["id"]))["Status"] == "resolved"

        await until_rt("the held resolve delivered", resolved, process, limit=HOLD_SECONDS + 60)
        assert datetime.now(UTC) >= held_until, "the resolve was not held"
    assert len(await admin.tickets_with_key(f"{guid}.3")) == 0
