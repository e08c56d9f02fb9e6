"""Storm: 4,000 distinct Fired alerts on one resource (one CI), posted at once by 32 senders through
the real intake (signed tokens), while `relay serve` on SQLite delivers them to the ServiceNow fake
answering every call after 50 ms (target `max_concurrency: 64`). Reports incidents per second,
ServiceNow calls per incident, the intake's p99 during the storm, and duplicates (must be 0).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench.delivery import FAKE_LATENCY_SECONDS, FakeThread, TimedServiceNow, config, wait_for
from bench.harness import ROOT, free_port, percentile, relay_process, wait_http
from bench.storm_sender import SENDERS
from devtools.dev_issuer import DevIssuer
from tests.conftest import load_sample

ALERTS = 4_000
MAX_CONCURRENCY = 64
SAMPLE = "testaction-metric-static-fired.json"  # one storage account: one CI for every alert


def storm_alerts() -> tuple[str, list[bytes]]:
    """The resource every alert is about, and 4,000 bodies that differ only in their alert id."""
    doc = load_sample(SAMPLE)
    essentials = doc["data"]["essentials"]
    resource = essentials["alertTargetIDs"][0]
    bodies = []
    for i in range(ALERTS):
        essentials["alertId"] = (
            f"/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/00000000-0000-4000-9000-{i:012d}"
        )
        bodies.append(json.dumps(doc).encode())
    return resource, bodies


def call_means_ms(metrics_url: str) -> dict[str, float]:
    """The mean duration of each kind of target call as the relay timed it (relay_target_call_seconds)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:  # noqa: S310 (loopback)
        text = resp.read().decode()
    found: dict[str, dict[str, float]] = {}
    pattern = r'^relay_target_call_seconds_(sum|count)\{[^}]*call="(\w+)"[^}]*\} (\S+)$'
    for part, call, value in re.findall(pattern, text, re.M):
        found.setdefault(call, {})[part] = float(value)
    return {call: round(v["sum"] / v["count"] * 1000, 1) for call, v in found.items() if v.get("count")}


def measure(issuer: DevIssuer, work: Path) -> dict[str, Any]:
    resource, bodies = storm_alerts()
    with FakeThread(TimedServiceNow()) as fake:
        fake.add_ci("test-storageAccount", object_id=resource)
        port, metrics_port = free_port(), free_port()
        env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{work / 'storm.db'}", "RELAY_LOG_LEVEL": "WARNING",
               "RELAY_CONFIG": str(config(work / "storm.yaml", fake, max_concurrency=MAX_CONCURRENCY)),
               "SN_PASSWORD": fake.password,
               "RELAY_METRICS_PORT": str(metrics_port)}
        relay = relay_process(env, port, work / "storm.log")
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", relay.proc)
            (work / "bodies.jsonl").write_bytes(b"\n".join(bodies) + b"\n")
            sent = subprocess.run(
                [sys.executable, "-m", "bench.storm_sender", f"http://127.0.0.1:{port}/alerts",
                 str(work / "bodies.jsonl")],
                env={**os.environ, "STORM_AUTHORIZATION": issuer.authorization()}, cwd=ROOT,
                capture_output=True, text=True, timeout=600, check=False)
            if sent.returncode != 0:
                raise RuntimeError(f"the storm's senders failed: {sent.stderr[-2000:]}")
            storm = json.loads(sent.stdout)
            start, timings = storm["start"], [tuple(t) for t in storm["timings"]]
            wait_for(fake, ALERTS, 600)
            last = max(fake.created_at.values())
            # Intake latency while the worker was delivering: requests answered before the last incident.
            during = [(answered - sent) * 1000 for sent, answered in timings if answered <= last]
            incidents = Counter(r.get("correlation_id") for r in fake.incidents.values())
            calls = Counter(f"{c.method} {c.path.rsplit('/', 1)[-1]}" for c in fake.calls)
            # With 64 slots and 2 calls of ~50 ms, delivery alone could open ~640 incidents/s: compare.
            means = call_means_ms(f"http://127.0.0.1:{metrics_port}/metrics")
            return {
                "alerts": ALERTS,
                "senders": SENDERS,
                "max_concurrency": MAX_CONCURRENCY,
                "fake_latency_ms": FAKE_LATENCY_SECONDS * 1000,
                "seconds": round(last - start, 2),
                "incidents_per_second": round(ALERTS / (last - start), 1),
                "calls_per_incident": round(len(fake.calls) / ALERTS, 3),
                "calls": dict(calls),
                "call_mean_ms": means,
                "intake_seconds": round(max(a for _, a in timings) - start, 2),
                "intake_p50_ms": round(percentile(during, 50), 1),
                "intake_p99_ms": round(percentile(during, 99), 1),
                "incidents": len(fake.incidents),
                "duplicates": sum(n - 1 for n in incidents.values()),
                "bound_to_the_ci": sum(1 for r in fake.incidents.values() if r.get("cmdb_ci")),
            }
        finally:
            relay.stop()


def run() -> dict[str, Any]:
    issuer = DevIssuer()
    with issuer.serving_in_thread(), tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        return measure(issuer, Path(tmp))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
