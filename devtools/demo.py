"""`make demo`: run the relay locally on embedded defaults and feed it Azure's official sample alerts.

It starts a development token issuer on loopback, starts `relay serve` on SQLite, posts every bundled
common-schema sample with a token shaped like Azure Monitor's, posts them again (Azure retries), plays
one alert's life (fired, retried, resolved, fired again), a storm collapsing into one parent
incident, shows what the relay refuses, and prints the incident calls the delivery worker made and the
tickets it opened (id, subject, link). Targets: yours when RELAY_CONFIG names a targets-and-routes file
(its secrets from the environment, as for `relay serve`); else a real Request Tracker when RT_URL and
RT_TOKEN are set; else the dry-run target (it writes the calls it would make to .demo/dry-run.jsonl).
Nothing is left running; it exits 0 when everything behaved.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from devtools.dev_issuer import DevIssuer

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "samples"
WORKDIR = ROOT / ".demo"
DEMO_GUID = "de300000-0000-4000-8000-00000000d3e0"  # the alert whose life step 3 plays


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def full_samples() -> list[Path]:
    return sorted(
        p for p in SAMPLES.glob("*.json")
        if json.loads(p.read_text()).get("schemaId") == "azureMonitorCommonAlertSchema"
    )


async def wait_ready(base: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = (WORKDIR / "relay.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise SystemExit(f"relay exited with {proc.returncode} before it was ready:\n" + "\n".join(log))
            try:
                async with http.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("relay did not become ready in time")


async def post(http: aiohttp.ClientSession, url: str, body: bytes, auth: str | None,
               content_type: str = "application/json") -> tuple[int, dict]:
    headers = {"Content-Type": content_type}
    if auth:
        headers["Authorization"] = auth
    async with http.post(url, data=body, headers=headers) as resp:
        try:
            payload = await resp.json(content_type=None)
        except ValueError:
            payload = {}
        return resp.status, payload


def demo_config() -> tuple[str | None, str]:
    """The routing file for the demo (None: the user's RELAY_CONFIG), and a one-line description of where
    incidents go."""
    if os.environ.get("RELAY_CONFIG", "").strip():
        return None, f"your targets (RELAY_CONFIG={os.environ['RELAY_CONFIG'].strip()})"
    if os.environ.get("RT_URL") and os.environ.get("RT_TOKEN"):
        queue = os.environ.get("RT_QUEUE", "Azure Alerts")
        return (
            "targets:\n"
            "  rt:\n"
            "    kind: request_tracker\n"
            f"    base_url: {json.dumps(os.environ['RT_URL'])}\n"
            "    auth: {type: token, token_env: RT_TOKEN}\n"
            f"    queue: {json.dumps(queue)}\n"
            f"    asset_catalog: {json.dumps(os.environ.get('RT_ASSET_CATALOG', 'Azure resources'))}\n"
            "    ci_binding: create_if_missing\n"
            "routes:\n"
            + storm_route("rt")
            + "  - target: rt\n",
            f"Request Tracker at {os.environ['RT_URL']} (queue {queue})",
        )
    return (
        "targets:\n"
        "  preview:\n"
        "    kind: dry_run\n"
        f"    path: {json.dumps(str(WORKDIR / 'dry-run.jsonl'))}\n"
        "routes:\n"
        + storm_route("preview")
        + "  - target: preview\n",
        f"the dry-run target (calls written to {WORKDIR / 'dry-run.jsonl'})",
    )


def episode_bodies() -> list[tuple[str, bytes]]:
    """One metric alert's life: fired, the same delivery again, resolved, then fired again later."""
    resolved = json.loads((SAMPLES / "metric-static-resolved.json").read_text())
    ess = resolved["data"]["essentials"]
    ess["alertId"] = ess["alertId"].rsplit("/", 1)[0] + "/" + DEMO_GUID
    fired = json.loads(json.dumps(resolved))
    fired["data"]["essentials"]["monitorCondition"] = "Fired"
    del fired["data"]["essentials"]["resolvedDateTime"]
    refired = json.loads(json.dumps(fired))
    refired["data"]["essentials"]["firedDateTime"] = "2019-03-22T16:00:00.0000000Z"
    return [
        ("Fired", json.dumps(fired).encode()),
        ("Fired (Azure retry)", json.dumps(fired).encode()),
        ("Resolved", json.dumps(resolved).encode()),
        ("Fired again later", json.dumps(refired).encode()),
    ]


# -- storm grouping (issue 15): a storm of one rule collapses into one parent incident ---------------

STORM_RULE = "demo-storm-cpu"
STORM_SIZE = 12
STORM_OWN = 3  # the route's open_parent_after


def storm_route(target: str) -> str:
    """The demo's grouped route (before the catch-all): alerts of STORM_RULE per resource group."""
    return (f"  - match: {{alert_rule: {STORM_RULE}}}\n"
            f"    target: {target}\n"
            f"    group: {{by: [alert_rule, resource_group], open_parent_after: {STORM_OWN}}}\n")


def storm_bodies() -> list[bytes]:
    """STORM_SIZE alerts of one rule on as many VMs of one resource group, fired within a minute."""
    bodies = []
    for i in range(STORM_SIZE):
        doc = json.loads((SAMPLES / "testaction-metric-static-fired.json").read_text())
        e = doc["data"]["essentials"]
        sub = e["alertId"].split("/providers/")[0]
        e["alertId"] = f"{sub}/providers/Microsoft.AlertsManagement/alerts/de500000-0000-4000-8000-{i:012d}"
        e["alertRule"] = STORM_RULE
        e["firedDateTime"] = f"2021-10-05T10:02:{i * 4:02d}.0000000Z"
        e["alertTargetIDs"] = [f"{sub}/resourcegroups/rg-web/providers/microsoft.compute/virtualmachines/web-{i:02d}"]
        e.pop("configurationItems", None)
        bodies.append(json.dumps(doc).encode())
    return bodies


def summarise_storm(path: Path) -> bool:
    """Print what the storm became; True when it is STORM_OWN incidents, one parent, and notes for the rest."""
    calls = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    own = [c for c in calls if c.get("call") == "create" and (c.get("correlation_key") or "").startswith("de5")]
    parent = [c for c in calls if c.get("call") == "create" and (c.get("correlation_key") or "").startswith("grp-")]
    notes = [c for c in calls if c.get("call") == "note" and (c.get("correlation_key") or "").startswith("grp-")]
    summary = (parent[0].get("incident") or {}).get("summary", "") if parent else ""
    print(f"   {STORM_SIZE} alerts -> {len(own)} incidents of their own, {len(parent)} parent "
          f"({summary or '-'}), {len(notes)} work notes on it")
    return len(own) == STORM_OWN and len(parent) == 1 and len(notes) == STORM_SIZE - STORM_OWN - 1


METRICS_URL = ""  # the demo relay's /metrics, on its own port (set when the relay starts)


async def wait_delivered(http: aiohttp.ClientSession, base: str) -> float:
    """Wait (up to a minute) until the worker has drained the queue; returns what is still pending."""
    deadline = time.monotonic() + 60
    pending = -1.0
    while time.monotonic() < deadline:
        async with http.get(METRICS_URL) as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("relay_pending_deliveries "):
                    pending = float(line.split()[-1])
        if pending == 0:
            return 0
        await asyncio.sleep(0.3)
    return pending


def deliveries(log_path: Path) -> list[dict[str, str]]:
    """The worker's delivery lines in the relay's JSON log: one per ticket opened, noted, resolved, ..."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("ticket_key") and record.get("outcome"):
            found.append(record)
    return found


def print_tickets(records: list[dict[str, str]]) -> None:
    opened = [r for r in records if r["outcome"] in ("create", "new", "adopt")]
    print(f"\n6. Tickets opened ({len(opened)})")
    if not opened:
        print("   none (see the relay log)")
    for t in opened:
        print(f"   {t.get('target', '')}: {t.get('ticket') or '-'}  {t.get('subject', '')}")
        if t.get("link"):
            print(f"      {t['link']}")


def explain_notes(records: list[dict[str, str]]) -> None:
    """Why some samples gave a note instead of a ticket: Microsoft's samples reuse placeholder alert ids."""
    notes: dict[tuple[str, str], int] = {}
    for r in records:
        if r["outcome"] == "note":
            where = (r.get("alert_key", ""), r.get("ticket", ""))
            notes[where] = notes.get(where, 0) + 1
    for (alert, ticket), count in notes.items():
        print(f"   {count} note{'s' if count != 1 else ''} on {ticket}, not new tickets: those samples carry the "
              f"alert id of the one\n   that opened it ({alert}). "
              "Microsoft's samples reuse placeholder ids; to the relay another\n"
              "   Fired of an alert that is still open is that alert firing again, so it notes the open ticket\n"
              "   (on_repeat: note). Real alerts each have their own id; "
              "`relay-dev send-alert` gives every post a fresh one.")


def summarise_dry_run(path: Path) -> list[str]:
    """Print the calls made; return those made for the demo alert of step 3, in order."""
    if not path.exists():
        print("   (no calls written)")
        return []
    calls = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    made = [c for c in calls if c.get("call") != "find"]
    counts: dict[str, int] = {}
    for c in made:
        counts[c["call"]] = counts.get(c["call"], 0) + 1
    print("   " + ", ".join(f"{n} {call}" for call, n in sorted(counts.items())))
    episode = []
    for c in made:
        if (c.get("correlation_key") or "").startswith(DEMO_GUID):
            ticket = (c.get("ticket") or {}).get("number") or ""
            print(f"   {c['call']:8} {c['correlation_key']:44} {ticket}")
            episode.append(c["call"])
    return episode


async def drive(base: str, issuer: DevIssuer) -> int:
    url = f"{base}/alerts"
    auth = issuer.authorization("2.0")
    samples = full_samples()
    accepted = 0
    async with aiohttp.ClientSession() as http:
        print(f"\n1. Posting {len(samples)} official Azure Monitor sample alerts (v2 token from the dev issuer)")
        for path in samples:
            doc = json.loads(path.read_text())
            e = doc["data"]["essentials"]
            status, _ = await post(http, url, path.read_bytes(), auth)
            accepted += status == 202
            print(f"   {status}  {e.get('monitorCondition') or '-':9} {e['monitoringService']:30} {path.name}")

        print("\n2. Posting them again, as Azure does when it retries a delivery")
        statuses = [(await post(http, url, p.read_bytes(), auth))[0] for p in samples]
        print(f"   {statuses.count(200)} answered 200 (already seen), {statuses.count(202)} stored twice")

        print("\n3. One alert's life: fired, retried, resolved, fired again")
        for label, body in episode_bodies():
            status, _ = await post(http, url, body, auth)
            print(f"   {status}  {label}")

        if os.environ.get("RELAY_CONFIG", "").strip():
            # Your routes decide grouping: a storm of made-up alerts would only open tickets in your ITSM.
            print("\n3b. The storm of the built-in demo is skipped with RELAY_CONFIG (your routes decide grouping)")
        else:
            print(f"\n3b. A storm: {STORM_SIZE} alerts of rule {STORM_RULE} in rg-web within a minute (route group:)")
            storm = [(await post(http, url, body, auth))[0] for body in storm_bodies()]
            print(f"   {storm.count(202)} accepted")

        print("\n4. What the relay refuses")
        sample = samples[0].read_bytes()
        noncommon = (SAMPLES / "noncommon-metric-static.json").read_bytes()
        checks = [
            ("no token", sample, None, "application/json"),
            ("token for another tenant", sample,
             "Bearer " + issuer.mint(overrides={"tid": "99999999-9999-4999-8999-999999999999"}), "application/json"),
            ("token without the app role", sample,
             "Bearer " + issuer.mint(overrides={"roles": []}), "application/json"),
            ("legacy (non-common) schema", noncommon, auth, "application/json"),
            ("not JSON", b"hello", auth, "text/plain"),
            ("malformed JSON", b"{", auth, "application/json"),
        ]
        for label, body, a, ctype in checks:
            status, payload = await post(http, url, body, a, ctype)
            detail = payload.get("field") or payload.get("error") or ""
            print(f"   {status}  {label:30} {detail}")

        pending = await wait_delivered(http, base)
    print(f"\n5. Incident calls made by the delivery worker ({pending:.0f} deliveries still pending)")
    dry_run = WORKDIR / "dry-run.jsonl"
    episode_ok = True
    if os.environ.get("RELAY_CONFIG", "").strip():
        print(f"   to your targets ({os.environ['RELAY_CONFIG'].strip()}): the tickets below")
    elif dry_run.exists() or not os.environ.get("RT_URL"):
        # The alert of step 3: one incident, resolved, then a new one for the new episode.
        episode_ok = summarise_dry_run(dry_run) == ["create", "resolve", "create"]
        if not episode_ok:
            print("   the demo alert did not give create, resolve, create")
        if not summarise_storm(dry_run):
            episode_ok = False
            print("   the storm did not collapse into one parent")
    else:
        print(f"   see the tickets in Request Tracker at {os.environ['RT_URL']}")
    records = deliveries(WORKDIR / "relay.log")
    print_tickets(records)
    explain_notes(records)
    print(f"\nAccepted {accepted} of {len(samples)} samples; duplicates were not stored twice.")
    print(f"Store: {WORKDIR / 'relay.db'}; relay log: {WORKDIR / 'relay.log'}")
    ok = accepted == len(samples) and statuses.count(200) == len(samples) and pending == 0 and episode_ok
    return 0 if ok else 1


def main() -> int:
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir()
    issuer = DevIssuer()
    config, destination = demo_config()
    if config is not None:
        (WORKDIR / "relay.yaml").write_text(config)
    config_path = os.environ["RELAY_CONFIG"].strip() if config is None else str(WORKDIR / "relay.yaml")
    with issuer.serving_in_thread():
        port = free_port()
        metrics_port = free_port()
        global METRICS_URL
        METRICS_URL = f"http://127.0.0.1:{metrics_port}/metrics"
        env = {
            **os.environ,
            **issuer.relay_env(),
            "RELAY_STORE": f"sqlite:///{WORKDIR / 'relay.db'}",
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": str(port),
            "RELAY_METRICS_PORT": str(metrics_port),
            # INFO in JSON: the worker's delivery lines name each ticket it opened (step 6 reads them).
            "RELAY_LOG_LEVEL": "INFO",
            "RELAY_LOG_FORMAT": "json",
            "RELAY_CONFIG": config_path,
        }
        log = (WORKDIR / "relay.log").open("w")
        print(f"Starting the relay on http://127.0.0.1:{port}: SQLite store, incidents to {destination}")
        proc = subprocess.Popen([sys.executable, "-m", "relay", "serve"], env=env, stdout=log, stderr=log)
        try:
            base = f"http://127.0.0.1:{port}"
            asyncio.run(wait_ready(base, proc))
            code = asyncio.run(drive(base, issuer))
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
