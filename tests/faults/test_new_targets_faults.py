"""The SIGKILL and target-outage fault tests, for Jira Service Management and PagerDuty (the ServiceNow
ones are in test_sigkill_delivery.py and test_target_outage.py): every acknowledged alert delivered
once, every resolve applied, no step twice, and no retry sooner than a Retry-After."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

import tests.faults.test_sigkill_delivery as sigkill
from devtools.dev_issuer import DevIssuer
from relay.alerts import parse_alert
from relay.app import create_app
from relay.delivery.lifecycle import ticket_keys
from relay.intake import STORE_KEY
from relay.settings import Settings
from relay.store.sqlite import SqliteStore
from tests import relay_log
from tests.e2e.cluster import ACKNOWLEDGED, episode, wait_until
from tests.faults.new_targets import KINDS, timed_fake
from tests.faults.test_sigkill_delivery import pending_deliveries, post_stream
from tests.faults.test_target_outage import CLOCKS_SLACK
from tests.relay_process import RelayProcess

ALERTS = 10
TIMEOUT_SECONDS = 0.5
HANG_SECONDS = 2.0
RETRY_AFTER = "1"
# The outage in the order the target serves it (as the ServiceNow one): a hung create first, then 503
# with and without Retry-After, hung calls, resets and 429 with Retry-After.
OUTAGE = [
    ("slow", {"delay": HANG_SECONDS, "method": "POST"}, 2),
    ("status", {"status": 503, "retry_after": RETRY_AFTER}, 3),
    ("status", {"status": 503}, 3),
    ("slow", {"delay": HANG_SECONDS}, 3),
    ("reset", {}, 3),
    ("status", {"status": 429, "retry_after": RETRY_AFTER}, 2),
]
KILL_ALERTS = 120
KILL_AFTER = 90  # acknowledgements before the SIGKILL
CREATE_SECONDS = 0.3  # every create (Jira) or event (PagerDuty) takes this long: the kill lands mid-call


def config_text(fake, timeout: float, delivery: str) -> str:  # type: ignore[no-untyped-def]
    return f"targets:\n{fake.target_block(timeout)}routes:\n  - target: itsm\ndelivery:\n{delivery}"


def key_of(body: bytes) -> str:
    return ticket_keys(parse_alert(json.loads(body)), "alert")[0].key


def early_retries(fake) -> tuple[int, list[str]]:  # type: ignore[no-untyped-def]
    checked, early = 0, []
    for answer in fake.timeline:
        if answer.status not in (429, 503) or answer.retry_after is None or answer.correlation_id is None:
            continue
        later = [c for c in fake.calls_for(answer.correlation_id) if c.started > answer.ended]
        if not later:
            continue
        checked += 1
        pause = later[0].started - answer.ended
        if pause < float(answer.retry_after) - CLOCKS_SLACK:
            early.append(f"{answer.correlation_id}: {later[0].method} {later[0].path} {pause:.3f}s after "
                         f"HTTP {answer.status} with Retry-After: {answer.retry_after}")
    return checked, early


@pytest.mark.parametrize("kind", KINDS)
async def test_target_outage_then_recovery_delivers_all_once_honouring_retry_after(
    kind, aiohttp_server, issuer, tmp_path, monkeypatch, fault_report
):
    fake = timed_fake(kind)
    await fake.start()
    for name, value in fake.env().items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "relay.yaml"
    config.write_text(config_text(fake, TIMEOUT_SECONDS, """\
  poll_seconds: 0.05
  backoff_base_seconds: 0.05
  backoff_max_seconds: 0.4
  circuit_failures: 3
  circuit_open_seconds: 0.3
  max_attempts: 200
  shutdown_grace_seconds: 1
"""))
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}",
                                  "RELAY_CONFIG": str(config)})
    app = create_app(settings, deliver=True)
    for fault, kw, times in OUTAGE:
        fake.inject(fault, times=times, **kw)
    episodes = [episode(i, f"outage-{kind}") for i in range(ALERTS)]
    keys = [key_of(fired) for fired, _ in episodes]
    try:
        server = await aiohttp_server(app)
        store = app[STORE_KEY]
        headers = {"Authorization": issuer.authorization(), "Content-Type": "application/json"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for n in (0, 1):
                for pair in episodes:
                    async with http.post(server.make_url("/alerts"), data=pair[n], headers=headers) as resp:
                        assert resp.status in ACKNOWLEDGED, await resp.text()

        async def all_resolved() -> bool:
            grouped = fake.tickets_by_key()
            return all(k in grouped and fake.resolved(k) for k in keys) and await store.pending() == 0

        async def progress() -> str:
            left = sum(f.times for f in fake.faults)
            return f"{len(fake.tickets_by_key())} keys opened; {await store.pending()} pending; {left} faults left"

        await wait_until(f"every alert resolved in {kind} after the outage", all_resolved, 90, progress)

        async def nothing_in_flight() -> bool:
            return fake.in_flight == 0

        await wait_until("every hung call landed", nothing_in_flight, HANG_SECONDS + 5)
        dead = await store.dead_letters()
    finally:
        await fake.stop()

    assert all(f.times == 0 for f in fake.faults), "the whole outage must have been served"
    assert dead == [], f"dead letters: {[d.error for d in dead]}"
    grouped = fake.tickets_by_key()
    doubled = {k: v for k, v in grouped.items() if len(v) > 1}
    assert not doubled, f"the outage made the relay open an incident twice: {doubled}"
    assert sorted(grouped) == sorted(keys)
    twice = fake.steps_twice()
    assert not twice, f"the outage made the relay apply a step twice: {twice}"
    checked, early = early_retries(fake)
    assert checked >= 1, "no answer carrying Retry-After was followed by a retry: the check proved nothing"
    assert not early, "retried sooner than Retry-After: " + "; ".join(early)
    failed = sum(1 for a in fake.timeline if a.status == 0 or a.status >= 400)
    fault_report(
        f"target outage ({kind})",
        f"{ALERTS} alerts ({2 * ALERTS} notifications); {len(fake.timeline)} calls, {failed} failed; "
        f"{len(grouped)} incidents, all resolved, 0 duplicates, 0 steps twice, 0 dead letters; "
        f"Retry-After honoured on {checked} of {checked} retries",
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_sigkill_mid_delivery_then_restart_delivers_every_acknowledged_alert_once(
    kind, tmp_path, monkeypatch, fault_report
):
    pairs = [episode(i, f"sigkill-{kind}") for i in range(KILL_ALERTS)]
    episodes = [(fired, resolved if i % 2 == 0 else None) for i, (fired, resolved) in enumerate(pairs)]
    keys = [key_of(fired) for fired, _ in episodes]
    db = tmp_path / "relay.db"
    fake = timed_fake(kind)
    # Every create takes a while, so that the kill lands while some are in flight: they land after the
    # relay died, unrecorded, and the restarted relay must adopt them (Jira) or send them again under the
    # same dedup_key (PagerDuty), never open a second incident.
    create_path = "/rest/api/3/issue" if kind == "jira_service_management" else "/v2/enqueue"
    fake.inject("slow", delay=CREATE_SECONDS, method="POST", path=create_path, times=KILL_ALERTS)
    await fake.start()
    issuer = DevIssuer()
    relay = None
    try:
        with issuer.serving_in_thread():
            config = tmp_path / "relay.yaml"
            config.write_text(config_text(fake, 5, "  poll_seconds: 0.2\n  backoff_base_seconds: 0.2\n"
                                                   "  backoff_max_seconds: 2\n"))
            env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{db}", "RELAY_CONFIG": str(config),
                   "RELAY_LOG_LEVEL": "INFO", **fake.env()}
            relay = RelayProcess(env, tmp_path / "relay.log")
            await asyncio.to_thread(relay.start)
            monkeypatch.setattr(sigkill, "KILL_AFTER", KILL_AFTER)  # post_stream kills after this many
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
                    grouped = fake.tickets_by_key()
                    return all(keys[i] in grouped for i in fired) and await pending_deliveries(http, relay) == 0

                async def progress() -> str:
                    return (f"{len(fake.tickets_by_key())} keys opened for {len(fired)} acknowledged alerts; "
                            f"{await pending_deliveries(http, relay)} deliveries pending")

                await wait_until("drained after the restart", drained, 120, progress)
                recovered_in = time.monotonic() - restarted_at
            relay.stop()
            relay = None
    finally:
        if relay is not None:
            relay.kill()
        await fake.stop()

    store = SqliteStore(db)
    await store.open()
    try:
        dead = await store.dead_letters()
    finally:
        await store.close()
    assert KILL_AFTER <= len(acked) < len(results), f"the kill must land mid-stream ({len(acked)} acknowledged)"
    grouped = fake.tickets_by_key()
    doubled = {k: v for k, v in grouped.items() if len(v) > 1}
    assert not doubled, f"one firing episode opened several incidents: {doubled}"
    lost = sorted(keys[i] for i in fired if keys[i] not in grouped)
    assert not lost, f"{len(lost)} acknowledged alerts never reached {kind}: {lost[:5]}"
    unresolved = sorted(keys[i] for i in resolved if not fake.resolved(keys[i]))
    assert not unresolved, f"{len(unresolved)} acknowledged resolves were not applied: {unresolved[:5]}"
    assert dead == [], f"dead letters: {[d.error for d in dead]}"
    twice = fake.steps_twice()
    assert not twice, f"a step was applied twice to one incident: {twice}"
    in_flight = sum(1 for a in fake.timeline if a.method == "POST" and a.path.endswith(("/issue", "/enqueue"))
                    and a.started <= killed_at <= a.ended)
    adopted = relay_log.count(tmp_path / "relay.log", ": adopted ")
    fault_report(
        f"sigkill under load with delivery ({kind})",
        f"{len(results)} posted, {len(acked)} acknowledged ({len(fired)} fired, {len(resolved)} resolved), "
        f"{in_flight} creates/triggers in flight at the kill, {len(grouped)} incidents, "
        f"{adopted} adopted, "
        f"0 lost, 0 duplicates, 0 steps twice, 0 dead letters, all applied {recovered_in:.1f}s after the restart "
        "(default lease)",
    )
