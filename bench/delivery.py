"""Delivery: incidents per second against the ServiceNow fake answering in 50 ms, end-to-end latency
from 202 to incident created at 100 alerts per second, and the time to drain 10,000 queued events
once a target outage ends. The relay runs as `relay serve` on SQLite; the fake runs in this process.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import free_port, percentile, relay_process, wait_http
from devtools.dev_issuer import DevIssuer
from tests.conftest import load_sample
from tests.fakes.servicenow import FakeServiceNow

FAKE_LATENCY_SECONDS = 0.05
MAX_CONCURRENCY = 32
THROUGHPUT_ALERTS = 1_000
LATENCY_RATE = 100
LATENCY_SECONDS = 10
BACKLOG = 10_000
# The backlog drains at the storm's setting (bench/storm.py): at 2 calls of ~50 ms, 32 slots could open
# at most ~320 incidents/s, and 10,000 in 30 s needs 333/s.
BACKLOG_CONCURRENCY = 64


# The clause a correlation lookup starts with (find: `=`; search by key prefix: STARTSWITH).
_CORRELATION = re.compile(r"correlation_id(?:=|STARTSWITH)(?P<key>[^^]+)")


class TimedServiceNow(FakeServiceNow):
    """The ServiceNow fake, answering every call after 50 ms, noting when each incident is created.

    Incidents are indexed by correlation key, as a real instance indexes `correlation_id`: the test
    fake filters every stored row for each query, so with 10,000 incidents its own cost, not the
    relay's, would set the figures."""

    def __init__(self) -> None:
        super().__init__()
        self.created_at: dict[str, float] = {}
        self._by_key: dict[str, list[dict[str, str]]] = {}  # base key (before a `.N` suffix) -> incidents
        self.outage: Any = None  # the 503 fault FakeThread puts first; its `times` > 0 while the target is down

    def _new_record(self, table: str, values: dict[str, str], by: str = "admin") -> dict[str, str]:
        record = super()._new_record(table, values, by)
        if table == "incident":
            key = values.get("correlation_id", "")
            self.created_at.setdefault(key, time.monotonic())
            self._by_key.setdefault(key.lower().split(".")[0], []).append(record)
        return record

    def _apply_query(self, rows: list[dict[str, str]], query: str, readable: frozenset[str]) -> list[dict[str, str]]:
        m = _CORRELATION.match(query)
        if m and "correlation_id" in readable:  # only incidents carry correlation_id
            rows = self._by_key.get(m["key"].lower().split(".")[0], [])
        return super()._apply_query(rows, query, readable)

    @property
    def incident_count(self) -> int:
        return len(self.created_at)


class FakeThread:
    """Runs the fake on its own event loop, so the load generator cannot slow its answers."""

    def __init__(self, fake: TimedServiceNow) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> TimedServiceNow:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)
        # Every call waits 50 ms; during an outage (`fake.outage.times` raised above 0) every call answers
        # 503 instead. The fake applies the first matching fault with times left, so the outage goes first:
        # injected after the slow fault it would never apply (the backlog figure was once measured so).
        self.fake.outage = self.fake.inject("status", times=0, status=503)
        self.fake.inject("slow", times=10**9, delay=FAKE_LATENCY_SECONDS)
        return self.fake

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def alert(i: int) -> tuple[str, bytes]:
    doc = load_sample("testaction-metric-static-fired.json")
    guid = f"00000000-0000-4000-8000-{i:012d}"
    doc["data"]["essentials"]["alertId"] = f"/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/{guid}"
    return guid, json.dumps(doc).encode()


def config(path: Path, fake: FakeServiceNow, *, max_concurrency: int | None = MAX_CONCURRENCY,
           timeout_seconds: float | None = 5, **delivery: Any) -> Path:
    """RELAY_CONFIG for `relay serve` with the one ServiceNow target on `fake`; None leaves a target
    setting at its default, and `delivery` settings go under `delivery:` (none: every default)."""
    target = "".join(f"    {k}: {v}\n" for k, v in (("timeout_seconds", timeout_seconds),
                                                      ("max_concurrency", max_concurrency)) if v is not None)
    section = "delivery:\n" + "".join(f"  {k}: {v}\n" for k, v in delivery.items()) if delivery else ""
    path.write_text(f"""\
targets:
  servicenow:
    kind: servicenow
    base_url: {fake.url}
    auth: {{type: basic, username: {fake.username}, password_env: SN_PASSWORD}}
{target}routes:
  - target: servicenow
{section}""")
    return path


async def post(http: aiohttp.ClientSession, url: str, body: bytes, auth: str) -> float:
    async with http.post(url, data=body, headers={"Authorization": auth, "Content-Type": "application/json"}) as r:
        if r.status != 202:
            raise RuntimeError(f"POST answered {r.status}: {await r.text()}")
    return time.monotonic()


async def post_all(url: str, auth: str, bodies: list[tuple[str, bytes]], concurrency: int = 32) -> dict[str, float]:
    acked: dict[str, float] = {}
    queue = list(reversed(bodies))

    async def sender(http: aiohttp.ClientSession) -> None:
        while queue:
            guid, body = queue.pop()
            acked[guid] = await post(http, url, body, auth)

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(sender(http) for _ in range(concurrency)))
    return acked


async def post_at_rate(url: str, auth: str, bodies: list[tuple[str, bytes]], rate: float) -> dict[str, float]:
    acked: dict[str, float] = {}
    start = time.monotonic()

    async def one(http: aiohttp.ClientSession, guid: str, body: bytes) -> None:
        acked[guid] = await post(http, url, body, auth)

    async with aiohttp.ClientSession() as http:
        tasks = []
        for n, (guid, body) in enumerate(bodies):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(http, guid, body)))
        await asyncio.gather(*tasks)
    return acked


def wait_for(fake: TimedServiceNow, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while fake.incident_count < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {fake.incident_count} of {count} incidents within {within:.0f}s")
        time.sleep(0.05)


def run_relay(issuer: DevIssuer, fake: FakeServiceNow, work: Path, name: str, *,
              max_concurrency: int = MAX_CONCURRENCY, **delivery: Any) -> tuple[Any, str]:
    port = free_port()
    env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{work / name}.db", "RELAY_LOG_LEVEL": "WARNING",
           "RELAY_CONFIG": str(config(work / f"{name}.yaml", fake, max_concurrency=max_concurrency,
                                      poll_seconds=1, **delivery)), "SN_PASSWORD": fake.password}
    relay = relay_process(env, port, work / f"{name}.log")
    wait_http(f"http://127.0.0.1:{port}/readyz", relay.proc)
    return relay, f"http://127.0.0.1:{port}/alerts"


def measure(issuer: DevIssuer, work: Path) -> dict:
    results: dict = {"fake_latency_ms": FAKE_LATENCY_SECONDS * 1000, "max_concurrency": MAX_CONCURRENCY}
    auth = issuer.authorization()

    with FakeThread(TimedServiceNow()) as fake:
        relay, url = run_relay(issuer, fake, work, "throughput")
        try:
            acked = asyncio.run(post_all(url, auth, [alert(i) for i in range(THROUGHPUT_ALERTS)]))
            wait_for(fake, THROUGHPUT_ALERTS, 300)
            first, last = min(acked.values()), max(fake.created_at.values())
            results["throughput"] = {"alerts": THROUGHPUT_ALERTS, "seconds": round(last - first, 2),
                                     "incidents_per_second": round(THROUGHPUT_ALERTS / (last - first), 1),
                                     "calls_per_incident": round(len(fake.calls) / THROUGHPUT_ALERTS, 2)}
        finally:
            relay.stop()

    with FakeThread(TimedServiceNow()) as fake:
        relay, url = run_relay(issuer, fake, work, "latency")
        try:
            n = LATENCY_RATE * LATENCY_SECONDS
            acked = asyncio.run(post_at_rate(url, auth, [alert(i) for i in range(n)], LATENCY_RATE))
            wait_for(fake, n, 120)
            lat = [(fake.created_at[g] - t) * 1000 for g, t in acked.items()]
            results["latency"] = {"rate": LATENCY_RATE, "alerts": n, "p50_ms": round(percentile(lat, 50), 1),
                                  "p99_ms": round(percentile(lat, 99), 1), "max_ms": round(max(lat), 1)}
        finally:
            relay.stop()

    # Backlog: the target is down (503) while 10,000 alerts arrive; then it comes back.
    with FakeThread(TimedServiceNow()) as fake:
        settings = {"backoff_base_seconds": 1, "backoff_max_seconds": 5, "circuit_open_seconds": 2}
        relay, url = run_relay(issuer, fake, work, "backlog", max_concurrency=BACKLOG_CONCURRENCY, **settings)
        try:
            fake.outage.times = 10**9
            acked = asyncio.run(post_all(url, auth, [alert(i) for i in range(BACKLOG)]))
            time.sleep(2)
            if fake.incident_count:
                raise RuntimeError(f"{fake.incident_count} incidents opened during the outage: no backlog to drain")
            refused = len(fake.calls)
            fake.outage.times = 0  # the outage ends
            back = time.monotonic()
            wait_for(fake, BACKLOG, 900)
            drained = max(fake.created_at.values()) - back
            results["backlog"] = {"events": len(acked), "drain_seconds": round(drained, 1),
                                  "calls_refused_during_outage": refused,
                                  "incidents_per_second": round(BACKLOG / drained, 1), "delivery": settings,
                                  "max_concurrency": BACKLOG_CONCURRENCY}
        finally:
            relay.stop()
    return results


def run() -> dict:
    issuer = DevIssuer()
    with issuer.serving_in_thread(), tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        return measure(issuer, Path(tmp))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
