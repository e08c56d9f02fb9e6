"""ServiceNow goes down under the relay (503 with and without Retry-After, hung calls past the timeout,
dropped connections, 429), then recovers: every alert is delivered once, in order, and no retry comes
sooner than the Retry-After the target asked for."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from relay.alerts import parse_alert
from relay.app import TARGET_CHECKS_KEY, create_app
from relay.delivery.lifecycle import ticket_keys
from relay.intake import STORE_KEY
from relay.settings import Settings
from tests.e2e.cluster import ACKNOWLEDGED, episode, incidents_by_correlation, wait_until
from tests.faults.servicenow_timeline import TimedServiceNow

ALERTS = 12
TIMEOUT_SECONDS = 0.5  # the target's per-call timeout
HANG_SECONDS = 2.0  # a hung call answers (and applies) only this long after it came, well past the timeout
RETRY_AFTER = "1"
# The fake stamps with time.monotonic(), the store schedules retries with time.time(): allow for the two
# clocks' difference over a second, nothing more.
CLOCKS_SLACK = 0.005
# The outage, in the order the target serves it: each fault answers that many calls, whichever they are;
# the first one only the first creates (a create that hangs and then lands is the case that can duplicate).
OUTAGE = [
    ("slow", {"delay": HANG_SECONDS, "method": "POST", "path": "/table/incident"}, 2),
    ("status", {"status": 503, "retry_after": RETRY_AFTER}, 3),
    ("status", {"status": 503}, 3),
    ("slow", {"delay": HANG_SECONDS}, 3),
    ("reset", {}, 3),
    ("status", {"status": 429, "retry_after": RETRY_AFTER}, 2),
]


def write_outage_config(path: Path, servicenow: TimedServiceNow) -> Path:
    # ci_binding none: every call then names its alert, so the timeline can follow each one.
    path.write_text(f"""\
targets:
  servicenow:
    kind: servicenow
    base_url: {servicenow.url}
    auth:
      type: basic
      username: {servicenow.username}
      password_env: SN_PASSWORD
    timeout_seconds: {TIMEOUT_SECONDS}
    ci_binding: none
routes:
  - target: servicenow
delivery:
  poll_seconds: 0.05
  backoff_base_seconds: 0.05
  backoff_max_seconds: 0.4
  circuit_failures: 3
  circuit_open_seconds: 0.3
  max_attempts: 200
  shutdown_grace_seconds: 1
""")
    return path


def retry_after_violations(servicenow: TimedServiceNow) -> tuple[int, list[str], float]:
    """(answers carrying Retry-After that were followed by another call for the same alert, the calls
    that came too early, the shortest pause seen after such an answer)."""
    checked, early, shortest = 0, [], float("inf")
    for answer in servicenow.timeline:
        if answer.status not in (429, 503) or answer.retry_after is None:
            continue
        assert answer.correlation_id is not None, f"cannot tell which alert {answer.method} {answer.path} was for"
        later = [c for c in servicenow.calls_for(answer.correlation_id) if c.started > answer.ended]
        if not later:
            continue
        checked += 1
        pause = later[0].started - answer.ended
        shortest = min(shortest, pause)
        if pause < float(answer.retry_after) - CLOCKS_SLACK:
            early.append(f"{answer.correlation_id}: {later[0].method} {later[0].path} {pause:.3f}s after an "
                         f"HTTP {answer.status} with Retry-After: {answer.retry_after}")
    return checked, early, shortest


async def test_target_outage_then_recovery_delivers_all_in_order_once_honouring_retry_after(
    aiohttp_server, issuer, tmp_path, monkeypatch, fault_report
):
    servicenow = TimedServiceNow()
    await servicenow.start()
    monkeypatch.setenv("SN_PASSWORD", servicenow.password)
    config = write_outage_config(tmp_path / "relay.yaml", servicenow)
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}",
                                  "RELAY_CONFIG": str(config)})
    app = create_app(settings, deliver=True)
    episodes = [episode(i, "outage") for i in range(ALERTS)]
    keys = [ticket_keys(parse_alert(json.loads(fired)), "alert")[0].key for fired, _ in episodes]
    try:
        server = await aiohttp_server(app)
        store = app[STORE_KEY]
        # The outage begins once the start-up target check (read-only, no alert's) has had its answers,
        # so that every faulty answer goes to an alert's call.
        async def checked() -> bool:
            return bool(app[TARGET_CHECKS_KEY])

        await wait_until("checked at start", checked, 10)
        for kind, kw, times in OUTAGE:
            servicenow.inject(kind, times=times, **kw)
        headers = {"Authorization": issuer.authorization(), "Content-Type": "application/json"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            # Every Fired, then every Resolved: both wait in the store, so the order is the worker's to keep.
            for n in (0, 1):
                for pair in episodes:
                    async with http.post(server.make_url("/alerts"), data=pair[n], headers=headers) as resp:
                        assert resp.status in ACKNOWLEDGED, await resp.text()

        async def all_resolved() -> bool:
            grouped = incidents_by_correlation(servicenow)
            return (all(k in grouped and grouped[k][0].get("state") == "6" for k in keys)
                    and await store.pending() == 0)

        async def progress() -> str:
            states = sorted(r.get("state", "?") for r in servicenow.incidents.values())
            left = sum(f.times for f in servicenow.faults)
            return f"incident states {states}; {await store.pending()} pending; {left} faults not yet served"

        await wait_until("every alert resolved in ServiceNow after the outage", all_resolved, 60, progress)
        async def nothing_in_flight() -> bool:
            return servicenow.in_flight == 0

        # A hung call still lands after the relay gave up on it: wait for those, then look for duplicates.
        await wait_until("every hung call landed", nothing_in_flight, HANG_SECONDS + 5)
        dead = await store.dead_letters()
    finally:
        await servicenow.stop()

    assert all(f.times == 0 for f in servicenow.faults), "the whole outage must have been served"
    assert dead == [], f"dead letters: {[d.error for d in dead]}"
    grouped = incidents_by_correlation(servicenow)
    doubled = {k: [r["number"] for r in v] for k, v in grouped.items() if len(v) > 1}
    assert not doubled, f"the outage made the relay open an incident twice: {doubled}"
    twice = servicenow.steps_twice()
    assert not twice, f"the outage made the relay apply a step twice: {twice}"
    assert sorted(grouped) == sorted(keys)
    out_of_order = {k: servicenow.applied_to(k) for k in keys if servicenow.applied_to(k) != ["created", "resolved"]}
    assert not out_of_order, f"ServiceNow did not see each alert opened, then resolved: {out_of_order}"
    checked, early, shortest = retry_after_violations(servicenow)
    assert checked >= 1, "no answer carrying Retry-After was followed by a retry: the check proved nothing"
    assert not early, "retried sooner than Retry-After: " + "; ".join(early)

    names = ("hung create", "503+Retry-After", "503", "hung", "reset", "429+Retry-After")
    served = ", ".join(f"{times} {name}" for name, (_, _, times) in zip(names, OUTAGE, strict=True))
    failed = sum(1 for a in servicenow.timeline if a.status == 0 or a.status >= 400)
    fault_report(
        "target outage",
        f"{ALERTS} alerts ({2 * ALERTS} notifications) through {served}; {len(servicenow.timeline)} calls, "
        f"{failed} failed; {len(grouped)} incidents, all resolved, opened before resolved for {len(keys)} of "
        f"{len(keys)}, 0 duplicates, 0 steps twice, 0 dead letters; "
        f"Retry-After honoured on {checked} of {checked} retries "
        f"(shortest pause {shortest:.2f}s for {RETRY_AFTER}s)",
    )
