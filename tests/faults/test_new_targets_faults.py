"""The SIGKILL and target-outage fault tests, for Jira Service Management and PagerDuty: the scenarios of
the ServiceNow ones (test_sigkill_delivery.py, test_target_outage.py), shared in tests/faults/scenarios.py,
run against each target's fake: every acknowledged alert delivered once, every resolve applied, no step
twice, and no retry sooner than a Retry-After."""

from __future__ import annotations

import json

import pytest

from devtools.dev_issuer import DevIssuer
from relay.alerts import parse_alert
from relay.app import create_app
from relay.delivery.lifecycle import ticket_keys
from relay.settings import Settings
from relay.store.sqlite import SqliteStore
from tests import relay_log
from tests.e2e.cluster import episode
from tests.faults.new_targets import KINDS, timed_fake
from tests.faults.scenarios import (
    assert_applied_once_after_restart,
    assert_served_once,
    retry_after_violations,
    serve_outage,
    sigkill_mid_stream_and_restart,
)

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
        dead = await serve_outage(
            app, aiohttp_server, issuer.authorization(), episodes, fake, target=kind, hang_seconds=HANG_SECONDS,
            all_resolved=lambda: all(k in fake.tickets_by_key() and fake.resolved(k) for k in keys),
            progress=lambda: f"{len(fake.tickets_by_key())} keys opened")
    finally:
        await fake.stop()

    grouped = fake.tickets_by_key()
    assert_served_once(fake, dead, grouped, keys)
    # The start-up target check's probes name no alert: their answers are not followed.
    checked, early, _ = retry_after_violations(fake, every_call_names_its_alert=False)
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
    kind, tmp_path, fault_report
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
    try:
        with issuer.serving_in_thread():
            config = tmp_path / "relay.yaml"
            config.write_text(config_text(fake, 5, "  poll_seconds: 0.2\n  backoff_base_seconds: 0.2\n"
                                                   "  backoff_max_seconds: 2\n"))
            env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{db}", "RELAY_CONFIG": str(config),
                   "RELAY_LOG_LEVEL": "INFO", **fake.env()}
            run = await sigkill_mid_stream_and_restart(
                env, tmp_path / "relay.log", episodes, issuer.authorization(), kill_after=KILL_AFTER,
                delivered=lambda fired: all(keys[i] in fake.tickets_by_key() for i in fired),
                opened=lambda: f"{len(fake.tickets_by_key())} keys opened")
    finally:
        await fake.stop()
    store = SqliteStore(db)
    await store.open()
    try:
        dead = await store.dead_letters()
    finally:
        await store.close()
    grouped = fake.tickets_by_key()
    assert_applied_once_after_restart(run, keys, grouped, fake.resolved, dead, fake, target=kind,
                                      kill_after=KILL_AFTER)
    in_flight = sum(1 for a in fake.timeline if a.method == "POST" and a.path.endswith(("/issue", "/enqueue"))
                    and a.started <= run.killed_at <= a.ended)
    adopted = relay_log.count(tmp_path / "relay.log", ": adopted ")
    fault_report(
        f"sigkill under load with delivery ({kind})",
        f"{len(run.results)} posted, {len(run.acked)} acknowledged ({len(run.fired)} fired, "
        f"{len(run.resolved)} resolved), "
        f"{in_flight} creates/triggers in flight at the kill, {len(grouped)} incidents, "
        f"{adopted} adopted, "
        f"0 lost, 0 duplicates, 0 steps twice, 0 dead letters, all applied {run.recovered_in:.1f}s after the restart "
        "(default lease)",
    )
