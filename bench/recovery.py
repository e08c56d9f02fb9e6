"""Recovery: how long acknowledged alerts wait after a crash, with the default lease.

- SQLite: `relay serve` delivering to the ServiceNow fake (50 ms a call) is SIGKILLed in the middle of
  a stream of alerts, then restarted on the same database; measured from the restart until every
  acknowledged alert has its incident and the relay has nothing pending (every outcome recorded: an
  incident the dead process created is adopted, not only present at the fake).
- Azure Storage (Azurite), two replicas: one is SIGKILLed while both deliver; measured from the kill
  until every acknowledged alert has its incident (the survivor takes the dead replica's events over
  once their leases end). Not "nothing pending": the kill may land between an event's table write and
  its queue send, before the 202; Azure Monitor would post it again, this benchmark does not, and a
  sweep wakes it 5 to 10 minutes later (docs/storage.md).

Each case also counts the deliveries the relay put off for a dead process's create intent (a kill
between an intent's commit and its create leaving the process: the restart holds that key for one call
timeout, docs/lifecycle.md "After a crash"), read from the relay's log.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from bench.delivery import FakeThread, TimedServiceNow, alert
from bench.delivery import config as delivery_config
from bench.harness import free_port, relay_process, wait_http
from devtools.dev_issuer import DevIssuer

ALERTS = 400
KILL_AFTER = 240  # acknowledgements before the SIGKILL: mid-stream, with deliveries in flight
SENDERS = 16
PAUSE = 0.15  # between one sender's posts: about 100 alerts a second in all, delivered as they come


def config(path: Path, fake: TimedServiceNow) -> Path:
    # Defaults everywhere but the target's slots (the lease, retries and polling are what a user gets).
    return delivery_config(path, fake, max_concurrency=16, timeout_seconds=None)


async def stream(urls: list[str], auth: str, bodies: list[tuple[str, bytes]], fake: TimedServiceNow,
                 kill: Any) -> tuple[set[str], float]:
    """Post every alert (round-robin over `urls`); call `kill()` after KILL_AFTER acknowledgements.
    Returns (acknowledged alert ids, when the kill happened)."""
    acked: set[str] = set()
    killed_at = 0.0
    queue = list(reversed(bodies))
    headers = {"Authorization": auth, "Content-Type": "application/json"}

    async def sender(n: int, http: aiohttp.ClientSession) -> None:
        nonlocal killed_at
        while queue:
            guid, body = queue.pop()
            url = urls[(n + len(queue)) % len(urls)]
            try:
                async with http.post(url, data=body, headers=headers) as r:
                    if r.status == 202:
                        acked.add(guid)
            except (aiohttp.ClientError, TimeoutError):
                pass  # the relay died under it: not acknowledged
            if not killed_at and len(acked) >= KILL_AFTER:
                killed_at = time.monotonic()
                kill()
            await asyncio.sleep(PAUSE)  # a stream, not a burst: the kill lands while deliveries run

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await asyncio.gather(*(sender(n, http) for n in range(SENDERS)))
    return acked, killed_at


def pending(metrics_url: str) -> int:
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:  # noqa: S310 (loopback)
        text = resp.read().decode()
    return int(float(re.search(r"^relay_pending_deliveries (\S+)$", text, re.MULTILINE).group(1)))


def wait_applied(fake: TimedServiceNow, acked: set[str], within: float, metrics_url: str | None = None) -> float:
    """When every acknowledged alert has its incident (and, given `metrics_url`, that relay has nothing
    pending)."""
    deadline = time.monotonic() + within
    while not acked <= set(fake.created_at) or (metrics_url and pending(metrics_url)):
        if time.monotonic() > deadline:
            missing = len(acked - set(fake.created_at))
            waiting = f", {pending(metrics_url)} deliveries pending" if metrics_url else ""
            raise RuntimeError(f"after {within:.0f}s: {missing} acknowledged alerts without an incident{waiting}")
        time.sleep(0.05)
    return time.monotonic()


def held_for_a_crashed_intent(log: Path) -> int:
    """Retries the relay logged for a create intent it must respect (the dead process's, after a kill)."""
    return log.read_text().count("another delivery is opening the incident")


def duplicates(fake: TimedServiceNow) -> int:
    keys = [r.get("correlation_id") for r in fake.incidents.values()]
    return len(keys) - len(set(keys))


def sqlite_sigkill(issuer: DevIssuer, work: Path) -> dict:
    with FakeThread(TimedServiceNow()) as fake:
        port, metrics_port = free_port(), free_port()
        env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{work / 'kill.db'}", "RELAY_LOG_LEVEL": "WARNING",
               "RELAY_CONFIG": str(config(work / "kill.yaml", fake)), "SN_PASSWORD": fake.password,
               "RELAY_METRICS_PORT": str(metrics_port)}
        relay = relay_process(env, port, work / "kill-1.log")
        wait_http(f"http://127.0.0.1:{port}/readyz", relay.proc)
        url = f"http://127.0.0.1:{port}/alerts"
        acked, killed_at = asyncio.run(stream([url], issuer.authorization(), [alert(i) for i in range(ALERTS)],
                                              fake, relay.proc.kill))
        relay.proc.wait(30)
        missing_at_kill = len(acked - set(fake.created_at))
        restarted = time.monotonic()
        relay = relay_process(env, port, work / "kill-2.log")
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", relay.proc)
            done = wait_applied(fake, acked, 600, f"http://127.0.0.1:{metrics_port}/metrics")
        finally:
            relay.stop()
        return {"alerts_acknowledged": len(acked), "without_incident_at_restart": missing_at_kill,
                "restart_to_all_applied_seconds": round(done - restarted, 1),
                "kill_to_all_applied_seconds": round(done - killed_at, 1), "duplicates": duplicates(fake),
                "held_for_a_crashed_intent": held_for_a_crashed_intent(work / "kill-2.log")}


def azurite_replica_death(issuer: DevIssuer, work: Path) -> dict:
    from tests.azurite import Azurite  # the benchmark needs Azurite from npm, as the tests do

    azurite = Azurite(work).start()
    try:
        with FakeThread(TimedServiceNow()) as fake:
            env = {**issuer.relay_env(), "RELAY_STORE": azurite.connection_string, "RELAY_LOG_LEVEL": "WARNING",
                   "RELAY_CONFIG": str(config(work / "replicas.yaml", fake)), "SN_PASSWORD": fake.password}
            ports, metrics_ports = [free_port(), free_port()], [free_port(), free_port()]
            relays = [relay_process({**env, "RELAY_METRICS_PORT": str(m)}, p, work / f"replica-{i}.log")
                      for i, (p, m) in enumerate(zip(ports, metrics_ports, strict=True))]
            try:
                for p, r in zip(ports, relays, strict=True):
                    wait_http(f"http://127.0.0.1:{p}/readyz", r.proc)
                urls = [f"http://127.0.0.1:{p}/alerts" for p in ports]
                acked, killed_at = asyncio.run(stream(urls, issuer.authorization(),
                                                      [alert(i) for i in range(ALERTS)], fake,
                                                      relays[0].proc.kill))
                done = wait_applied(fake, acked, 600)
            finally:
                for r in relays:
                    r.stop()
            return {"alerts_acknowledged": len(acked), "kill_to_all_applied_seconds": round(done - killed_at, 1),
                    "duplicates": duplicates(fake),
                    "held_for_a_crashed_intent": held_for_a_crashed_intent(work / "replica-1.log")}
    finally:
        azurite.stop()


def run() -> dict:
    issuer = DevIssuer()
    with issuer.serving_in_thread(), tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        work = Path(tmp)
        return {"sqlite_sigkill": sqlite_sigkill(issuer, work),
                "azurite_replica_death": azurite_replica_death(issuer, work)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
