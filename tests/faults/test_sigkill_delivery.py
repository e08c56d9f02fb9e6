"""SIGKILL `relay serve` while 16 senders post alerts and its worker is delivering them to ServiceNow,
restart it on the same database, let it drain: every acknowledged alert is delivered, exactly once."""

from __future__ import annotations

import json

from devtools.dev_issuer import DevIssuer
from relay.alerts import parse_alert
from relay.delivery.lifecycle import ticket_keys
from relay.store.sqlite import SqliteStore
from tests import relay_log
from tests.e2e.cluster import episode, incidents_by_correlation, relay_env, write_config
from tests.faults.scenarios import assert_applied_once_after_restart, sigkill_mid_stream_and_restart
from tests.faults.servicenow_timeline import TimedServiceNow

ALERTS = 200
RESOLVED_EVERY = 2  # every second alert also resolves: 300 notifications in all (16 senders)
KILL_AFTER = 110  # acknowledgements before the SIGKILL
CREATE_SECONDS = 0.1
# The lease is the default (30 s): what a delivery cut off by the kill waits before it is retried, at most.


def correlation_id(body: bytes) -> str:
    return ticket_keys(parse_alert(json.loads(body)), "alert")[0].key


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
    try:
        with issuer.serving_in_thread():
            config = write_config(tmp_path / "relay.yaml", servicenow)
            env = {**relay_env(issuer, f"sqlite:///{db}", config, servicenow), "RELAY_LOG_LEVEL": "INFO"}
            run = await sigkill_mid_stream_and_restart(
                env, tmp_path / "relay.log", episodes, issuer.authorization(), kill_after=KILL_AFTER,
                delivered=lambda fired: all(keys[i] in incidents_by_correlation(servicenow) for i in fired),
                opened=lambda: f"{len(servicenow.incidents)} incidents")
    finally:
        await servicenow.stop()

    store = SqliteStore(db)
    await store.open()
    try:
        events = await store.events()
        dead = await store.dead_letters()
    finally:
        await store.close()

    grouped = incidents_by_correlation(servicenow)
    assert_applied_once_after_restart(
        run, keys, {k: [r["number"] for r in v] for k, v in grouped.items()},
        lambda key: grouped[key][0].get("state") == "6", dead, servicenow, target="ServiceNow", kill_after=KILL_AFTER)
    stored = {e.key for e in events}
    assert len(stored) == len(events), "an alert is stored more than once"
    adopted = relay_log.count(tmp_path / "relay.log", ": adopted ")
    creating_at_kill = sum(1 for a in servicenow.timeline
                           if a.method == "POST" and a.started <= run.killed_at <= a.ended)
    fault_report(
        "sigkill under load with delivery",
        f"{len(run.results)} posted, {len(run.acked)} acknowledged ({len(run.fired)} fired, "
        f"{len(run.resolved)} resolved), "
        f"{creating_at_kill} creates in flight at the kill, {len(events)} stored, {len(grouped)} incidents delivered, "
        f"{sum(1 for v in grouped.values() if v[0].get('state') == '6')} resolved, "
        f"{adopted} adopted after the restart, 0 lost, 0 duplicates, 0 steps twice, 0 dead letters, "
        f"all applied {run.recovered_in:.1f}s after the restart (default lease)",
    )
