"""Soak: `relay serve` on SQLite with the defaults, fed 30 events a second (each alert fires, then
resolves 5 s later) for 15 minutes (BENCH_SOAK_SECONDS to change it), delivering to the ServiceNow fake
(50 ms a call). Reports RSS, the store's size on disk and 202 p50/p99 in the first and the last minute.

With the default retention (delivered events kept 14 days) the store grows for 14 days and then stays
flat; the soak reports the bytes each event costs, and so the size that plateau has at this rate.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.delivery import FakeThread, TimedServiceNow, alert
from bench.harness import free_port, percentile, relay_process, rss_mib, wait_http
from bench.recovery import config
from devtools.dev_issuer import DevIssuer

RATE = 30  # events a second
RESOLVE_AFTER = 5.0
SECONDS = int(os.environ.get("BENCH_SOAK_SECONDS", "900"))
WINDOW = 60.0  # the first and the last minute are compared
DEFAULT_DELIVERED_DAYS = 14


def store_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.suffix != ".lock")


async def feed(url: str, auth: str, samples: list[tuple[float, float]], seconds: float) -> int:
    """Post Fired/Resolved pairs at RATE events a second; `samples` gets (when, latency ms) per 202."""
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    start = time.monotonic()
    sent = 0
    tasks: set[asyncio.Task[None]] = set()

    async def post(http: aiohttp.ClientSession, body: bytes, delay: float) -> None:
        await asyncio.sleep(delay)
        t = time.monotonic()
        async with http.post(url, data=body, headers=headers) as r:
            if r.status != 202:
                raise RuntimeError(f"POST answered {r.status}: {await r.text()}")
        samples.append((t - start, (time.monotonic() - t) * 1000))

    async with aiohttp.ClientSession() as http:
        n = 0
        while time.monotonic() - start < seconds:
            _, fired = alert(n)
            doc = json.loads(fired)
            doc["data"]["essentials"]["monitorCondition"] = "Resolved"
            doc["data"]["essentials"]["resolvedDateTime"] = "2026-01-01T10:05:00.000Z"
            for body, delay in ((fired, 0.0), (json.dumps(doc).encode(), RESOLVE_AFTER)):
                task = asyncio.create_task(post(http, body, delay))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            sent += 2
            n += 1
            await asyncio.sleep(max(0.0, start + sent / RATE - time.monotonic()))
        await asyncio.gather(*tasks)
    return sent


def measure(issuer: DevIssuer, work: Path) -> dict:
    db = work / "soak.db"
    with FakeThread(TimedServiceNow()) as fake:
        port = free_port()
        env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{db}", "RELAY_LOG_LEVEL": "WARNING",
               "RELAY_CONFIG": str(config(work / "soak.yaml", fake)), "SN_PASSWORD": fake.password}
        relay = relay_process(env, port, work / "soak.log")
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", relay.proc)
            samples: list[tuple[float, float]] = []
            marks: dict[str, tuple[float, int]] = {}

            async def run() -> int:
                async def watch() -> None:
                    await asyncio.sleep(WINDOW)
                    marks["start"] = (rss_mib(relay.pid), store_bytes(db))

                watcher = asyncio.create_task(watch())
                sent = await feed(f"http://127.0.0.1:{port}/alerts", issuer.authorization(), samples, SECONDS)
                await watcher
                return sent

            sent = asyncio.run(run())
            marks["end"] = (rss_mib(relay.pid), store_bytes(db))
        finally:
            relay.stop()
    first = [ms for t, ms in samples if t < WINDOW]
    last = [ms for t, ms in samples if t >= SECONDS - WINDOW]
    grown = marks["end"][1] - marks["start"][1]
    events_between = RATE * (SECONDS - WINDOW)
    per_event = grown / events_between if events_between > 0 else 0.0
    return {
        "seconds": SECONDS, "rate": RATE, "events": sent, "incidents": fake.incident_count,
        "rss_mib": {"start": round(marks["start"][0], 1), "end": round(marks["end"][0], 1)},
        "rss_scope": "tree",  # rss_mib sums the relay's helper processes
        "store_mib": {"start": round(marks["start"][1] / 2**20, 1), "end": round(marks["end"][1] / 2**20, 1)},
        "store_bytes_per_event": round(per_event),
        "plateau_gib_at_default_retention": round(per_event * RATE * 86400 * DEFAULT_DELIVERED_DAYS / 2**30, 1),
        "latency_ms": {"start_p50": round(percentile(first, 50), 1), "start_p99": round(percentile(first, 99), 1),
                       "end_p50": round(percentile(last, 50), 1), "end_p99": round(percentile(last, 99), 1)},
    }


def run() -> dict:
    issuer = DevIssuer()
    with issuer.serving_in_thread(), tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        return measure(issuer, Path(tmp))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
