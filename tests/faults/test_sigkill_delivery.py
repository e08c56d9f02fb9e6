"""SIGKILL `relay serve` while 16 senders post alerts and its worker is delivering them to ServiceNow,
restart it on the same database, let it drain: every acknowledged alert is delivered, exactly once."""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp

from devtools.dev_issuer import DevIssuer
from relay.alerts import parse_alert
from relay.delivery.lifecycle import ticket_keys
from relay.store.sqlite import SqliteStore
from tests import relay_log
from tests.e2e.cluster import ACKNOWLEDGED, episode, incidents_by_correlation, relay_env, wait_until, write_config
from tests.faults.servicenow_timeline import TimedServiceNow
from tests.relay_process import RelayProcess

ALERTS = 200
RESOLVED_EVERY = 2  # every second alert also resolves: 300 notifications in all
SENDERS = 16
KILL_AFTER = 110  # acknowledgements before the SIGKILL
CREATE_SECONDS = 0.1
# The lease is the default (30 s): what a delivery cut off by the kill waits before it is retried, at most.


def correlation_id(body: bytes) -> str:
    return ticket_keys(parse_alert(json.loads(body)), "alert")[0].key


async def post_stream(relay: RelayProcess, auth: str,
                      episodes: list[tuple[bytes, bytes | None]]) -> tuple[dict[tuple[int, str], int], float]:
    """Each sender takes an alert, posts its Fired and, once acknowledged, its Resolved. SIGKILL after
    KILL_AFTER acknowledgements; what is posted after that fails. Returns ({(i, condition): status}, when
    the relay was killed)."""
    results: dict[tuple[int, str], int] = {}
    killed_at = float("inf")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(episodes)):
        queue.put_nowait(i)
    acked = 0
    headers = {"Authorization": auth, "Content-Type": "application/json"}

    async def post(http: aiohttp.ClientSession, i: int, condition: str, body: bytes) -> bool:
        nonlocal acked, killed_at
        try:
            async with http.post(f"{relay.url}/alerts", data=body, headers=headers) as resp:
                results[i, condition] = resp.status
        except (TimeoutError, aiohttp.ClientError):
            results[i, condition] = 0  # the connection died with the relay: not acknowledged
        if results[i, condition] in ACKNOWLEDGED:
            acked += 1
            if acked == KILL_AFTER:
                relay.kill()
                killed_at = time.monotonic()
            return True
        return False

    async def sender(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            fired, resolved = episodes[i]
            if await post(http, i, "Fired", fired) and resolved is not None:
                await post(http, i, "Resolved", resolved)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await asyncio.gather(*(sender(http) for _ in range(SENDERS)))
    return results, killed_at


async def pending_deliveries(http: aiohttp.ClientSession, relay: RelayProcess) -> int:
    async with http.get(relay.metrics_url) as resp:
        text = await resp.text()
    return int(float(re.search(r"^relay_pending_deliveries (\S+)$", text, re.MULTILINE).group(1)))


async def test_sigkill_under_load_delivers_every_acknowledged_alert_exactly_once(tmp_path, fault_report):
    pairs = [episode(i, "sigkill") for i in range(ALERTS)]
    episodes = [(fired, resolved if i % RESOLVED_EVERY == 0 else None) for i, (fired, resolved) in enumerate(pairs)]
    keys = [correlation_id(fired) for fired, _ in episodes]
    db = tmp_path / "relay.db"
    servicenow = TimedServiceNow()
    # Every create takes a while, so that the kill lands while some are in flight: those complete at
    # ServiceNow after the relay died, unrecorded, and the restarted relay must find them, not create again.
    servicenow.inject("slow", delay=CREATE_SECONDS, method="POST", path="/table/incident", times=ALERTS)
    await servicenow.start()
    issuer = DevIssuer()
    relay = None
    try:
        with issuer.serving_in_thread():
            config = write_config(tmp_path / "relay.yaml", servicenow)
            env = {**relay_env(issuer, f"sqlite:///{db}", config, servicenow), "RELAY_LOG_LEVEL": "INFO"}
            relay = RelayProcess(env, tmp_path / "relay.log")
            await asyncio.to_thread(relay.start)
            results, killed_at = await post_stream(relay, issuer.authorization(), episodes)
            relay.kill()

            relay = RelayProcess(env, tmp_path / "relay.log", port=relay.port)
            restarted_at = time.monotonic()
            await asyncio.to_thread(relay.start)
            acked = {k for k, status in results.items() if status in ACKNOWLEDGED}
            fired = {i for i, condition in acked if condition == "Fired"}
            resolved = {i for i, condition in acked if condition == "Resolved"}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

                async def drained() -> bool:
                    done = all(keys[i] in incidents_by_correlation(servicenow) for i in fired)
                    return done and await pending_deliveries(http, relay) == 0

                async def progress() -> str:
                    return (f"{len(servicenow.incidents)} incidents for {len(fired)} acknowledged alerts; "
                            f"{await pending_deliveries(http, relay)} deliveries pending")

                await wait_until("drained after the restart", drained, 120, progress)
                recovered_in = time.monotonic() - restarted_at
            relay.stop()
            relay = None
    finally:
        if relay is not None:
            relay.kill()
        await servicenow.stop()

    store = SqliteStore(db)
    await store.open()
    try:
        events = await store.events()
        dead = await store.dead_letters()
    finally:
        await store.close()

    posted = len(results)
    assert KILL_AFTER <= len(acked) < posted, f"the kill must land mid-stream ({len(acked)} of {posted} acknowledged)"
    grouped = incidents_by_correlation(servicenow)
    doubled = {k: [r["number"] for r in v] for k, v in grouped.items() if len(v) > 1}
    assert not doubled, f"one firing episode opened several incidents: {doubled}"
    lost = sorted(keys[i] for i in fired if keys[i] not in grouped)
    assert not lost, f"{len(lost)} acknowledged alerts never reached ServiceNow: {lost[:5]}"
    unresolved = sorted(keys[i] for i in resolved if grouped[keys[i]][0].get("state") != "6")
    assert not unresolved, f"{len(unresolved)} acknowledged resolves were not applied: {unresolved[:5]}"
    assert dead == [], f"dead letters: {[d.error for d in dead]}"
    twice = servicenow.steps_twice()
    assert not twice, f"a step was applied twice to one incident: {twice}"
    stored = {e.key for e in events}
    assert len(stored) == len(events), "an alert is stored more than once"
    adopted = relay_log.count(tmp_path / "relay.log", ": adopted ")
    creating_at_kill = sum(1 for a in servicenow.timeline
                           if a.method == "POST" and a.started <= killed_at <= a.ended)
    fault_report(
        "sigkill under load with delivery",
        f"{posted} posted, {len(acked)} acknowledged ({len(fired)} fired, {len(resolved)} resolved), "
        f"{creating_at_kill} creates in flight at the kill, {len(events)} stored, {len(grouped)} incidents delivered, "
        f"{sum(1 for v in grouped.values() if v[0].get('state') == '6')} resolved, "
        f"{adopted} adopted after the restart, 0 lost, 0 duplicates, 0 steps twice, 0 dead letters, "
        f"all applied {recovered_in:.1f}s after the restart (default lease)",
    )
