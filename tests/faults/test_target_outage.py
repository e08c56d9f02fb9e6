"""ServiceNow goes down under the relay (503 with and without Retry-After, hung calls past the timeout,
dropped connections, 429), then recovers: every alert is delivered once, in order, and no retry comes
sooner than the Retry-After the target asked for."""

from __future__ import annotations

import json
from pathlib import Path

from relay.alerts import parse_alert
from relay.app import TARGET_CHECKS_KEY, create_app
from relay.delivery.lifecycle import ticket_keys
from relay.settings import Settings
from tests.e2e.cluster import episode, incidents_by_correlation, wait_until
from tests.faults.scenarios import assert_served_once, retry_after_violations, serve_outage
from tests.faults.servicenow_timeline import TimedServiceNow

ALERTS = 12
TIMEOUT_SECONDS = 0.5  # the target's per-call timeout
HANG_SECONDS = 2.0  # a hung call answers (and applies) only this long after it came, well past the timeout
RETRY_AFTER = "1"
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

    async def checked_at_start() -> None:
        # The outage begins once the start-up target check (read-only, no alert's) has had its answers,
        # so that every faulty answer goes to an alert's call.
        async def checked() -> bool:
            return bool(app[TARGET_CHECKS_KEY])

        await wait_until("checked at start", checked, 10)
        for kind, kw, times in OUTAGE:
            servicenow.inject(kind, times=times, **kw)

    def all_resolved() -> bool:
        grouped = incidents_by_correlation(servicenow)
        return all(k in grouped and grouped[k][0].get("state") == "6" for k in keys)

    try:
        dead = await serve_outage(
            app, aiohttp_server, issuer.authorization(), episodes, servicenow, target="ServiceNow",
            hang_seconds=HANG_SECONDS, before_posting=checked_at_start, all_resolved=all_resolved,
            progress=lambda: f"incident states {sorted(r.get('state', '?') for r in servicenow.incidents.values())}")
    finally:
        await servicenow.stop()

    grouped = incidents_by_correlation(servicenow)
    assert_served_once(servicenow, dead, {k: [r["number"] for r in v] for k, v in grouped.items()}, keys)
    out_of_order = {k: servicenow.applied_to(k) for k in keys if servicenow.applied_to(k) != ["created", "resolved"]}
    assert not out_of_order, f"ServiceNow did not see each alert opened, then resolved: {out_of_order}"
    checked, early, shortest = retry_after_violations(servicenow, every_call_names_its_alert=True)
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
