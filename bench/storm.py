"""Storm: 4,000 distinct Fired alerts on one resource (one CI), posted at once by 32 senders (wrk)
through the real intake (signed tokens), while `relay serve` on SQLite delivers them to the ServiceNow fake
answering every call after 50 ms (target `max_concurrency: 64`). Reports incidents per second,
ServiceNow calls per incident, the intake's p99 during the storm, and duplicates (must be 0).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench.delivery import FAKE_LATENCY_SECONDS, FakeThread, TimedServiceNow, config, wait_for
from bench.harness import WrkResult, free_port, relay_process, start_wrk, stop_wrk, wait_http
from devtools.dev_issuer import DevIssuer
from tests.conftest import load_sample

ALERTS = 4_000
MAX_CONCURRENCY = 64
SENDERS = 32
STORM_SECONDS_MAX = 300  # wrk's -d: its threads stop once they have posted their alerts
SAMPLE = "testaction-metric-static-fired.json"  # one storage account: one CI for every alert


ID_SLOT = "XXXXXXXXXXXX"  # where each alert's number goes in the body template

# wrk posts the storm: 32 connections over 2 threads, each thread ALERTS / 2 distinct alerts (ids
# numbered per thread), then stops. A request past a thread's share (its last connections' final
# round) repeats that thread's last alert: a duplicate (200), never an extra alert.
STORM_LUA = """
local body = [==[%(body)s]==]
local per_thread = %(per_thread)d
local counter = 0
local answered = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
request = function()
  counter = counter + 1
  local n = math.min(counter, per_thread)
  local b = string.gsub(body, "%(slot)s", string.format("%%012d", tid * per_thread + n - 1), 1)
  return wrk.format("POST", "/alerts", {["Content-Type"] = "application/json",
                                         ["Authorization"] = "%(authorization)s"}, b)
end
response = function(status, headers, body)
  answered = answered + 1
  if answered == per_thread then
    -- wrk runs until its -d: this thread's mark tells the benchmark to stop it now (SIGINT: wrk prints)
    local mark = io.open("%(marks)s" .. tid, "w")
    mark:write("done")
    mark:close()
    wrk.thread:stop()  -- every alert of this thread is sent: send no more
  end
end
"""
WRK_THREADS = 2


def storm_alerts() -> tuple[str, str]:
    """The resource every alert is about, and the body of every alert, with ID_SLOT for its number."""
    doc = load_sample(SAMPLE)
    essentials = doc["data"]["essentials"]
    essentials["alertId"] = ("/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/"
                             f"00000000-0000-4000-9000-{ID_SLOT}")
    return essentials["alertTargetIDs"][0], json.dumps(doc)


def post_storm(url: str, authorization: str, body: str, work: Path) -> tuple[float, float, WrkResult]:
    """wrk posts the ALERTS alerts: (when it started, when every alert was answered, its figures, with
    the latency measured by wrk, in C)."""
    script, marks = work / "storm.lua", work / "thread-done-"
    script.write_text(STORM_LUA % {"body": body, "per_thread": ALERTS // WRK_THREADS, "slot": ID_SLOT,
                                   "authorization": authorization, "marks": marks})
    start = time.monotonic()
    wrk = start_wrk(url, script, connections=SENDERS, seconds=STORM_SECONDS_MAX, threads=WRK_THREADS)
    while not all(Path(f"{marks}{t}").exists() for t in range(WRK_THREADS)):
        if wrk.poll() is not None or time.monotonic() - start > STORM_SECONDS_MAX:
            raise RuntimeError(f"wrk ended before posting the storm: {wrk.communicate()[0][-2000:]}")
        time.sleep(0.01)
    answered = time.monotonic()
    return start, answered, stop_wrk(wrk)


def accepted(metrics_url: str) -> int:
    """How many alerts the relay accepted (relay_alert_requests_total{outcome="accepted"})."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:  # noqa: S310 (loopback)
        text = resp.read().decode()
    m = re.search(r'^relay_alert_requests_total\{outcome="accepted"\} (\S+)$', text, re.M)
    return int(float(m.group(1))) if m else 0


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
    resource, body = storm_alerts()
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
            start, answered, intake = post_storm(f"http://127.0.0.1:{port}/alerts", issuer.authorization(), body,
                                                 work)
            # wrk may leave a request of its last round unsent: what counts is what the relay accepted.
            alerts = accepted(f"http://127.0.0.1:{metrics_port}/metrics")
            if alerts < ALERTS * 0.99:
                raise RuntimeError(f"the relay accepted only {alerts} of the storm's {ALERTS} alerts")
            wait_for(fake, alerts, 600)
            last = max(fake.created_at.values())
            incidents = Counter(r.get("correlation_id") for r in fake.incidents.values())
            calls = Counter(f"{c.method} {c.path.rsplit('/', 1)[-1]}" for c in fake.calls)
            # With 64 slots and 2 calls of ~50 ms, delivery alone could open ~640 incidents/s: compare.
            means = call_means_ms(f"http://127.0.0.1:{metrics_port}/metrics")
            return {
                "alerts": alerts,
                "senders": SENDERS,
                "max_concurrency": MAX_CONCURRENCY,
                "fake_latency_ms": FAKE_LATENCY_SECONDS * 1000,
                "seconds": round(last - start, 2),
                "incidents_per_second": round(alerts / (last - start), 1),
                "calls_per_incident": round(len(fake.calls) / alerts, 3),
                "calls": dict(calls),
                "call_mean_ms": means,
                # Every request is answered before the last incident opens: all of intake is "during".
                "intake_seconds": round(answered - start, 2),
                "intake_requests": intake.requests,
                "intake_non_2xx": intake.non_2xx + intake.errors,
                "intake_p50_ms": round(intake.p50_ms, 1),
                "intake_p99_ms": round(intake.p99_ms, 1),
                "incidents": len(fake.incidents),
                "duplicates": sum(n - 1 for n in incidents.values()),
                "bound_to_the_ci": sum(1 for r in fake.incidents.values() if r.get("cmdb_ci")),
            }
        finally:
            relay.stop()


# A storm lasts ~7 s, and on this shared 2-core machine one run's intake p99 varied from 12 to 28 ms
# with nothing changed (2026-12-03): the figures are the run with the median p99 of RUNS, and every
# run's p99 and incidents/s are kept beside them.
RUNS = 3


def run() -> dict[str, Any]:
    issuer = DevIssuer()
    runs = []
    with issuer.serving_in_thread():
        for n in range(RUNS):
            with tempfile.TemporaryDirectory(prefix=f"bench-storm-{n}-") as tmp:
                runs.append(measure(issuer, Path(tmp)))
    median = sorted(runs, key=lambda r: r["intake_p99_ms"])[len(runs) // 2]
    return {**median, "runs": len(runs), "runs_intake_p99_ms": [r["intake_p99_ms"] for r in runs],
            "runs_incidents_per_second": [r["incidents_per_second"] for r in runs],
            "runs_duplicates": [r["duplicates"] for r in runs]}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
