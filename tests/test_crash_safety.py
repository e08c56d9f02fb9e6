"""SIGKILL the relay while alerts are being posted: every alert that got a 2xx survives, exactly once."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from devtools.dev_issuer import DevIssuer
from relay.alerts import parse_alert
from relay.store import Event
from relay.store.sqlite import SqliteStore
from tests.conftest import load_sample
from tests.relay_process import RelayProcess

TOTAL = 400
KILL_AFTER = 120


def alert_body(i: int) -> bytes:
    doc = load_sample("testaction-metric-static-fired.json")
    doc["data"]["essentials"]["alertId"] = (
        f"/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/00000000-0000-4000-8000-{i:012d}"
    )
    return json.dumps(doc).encode()


async def post_all(relay: RelayProcess, auth: str, bodies: list[bytes]) -> dict[int, int]:
    """Post every body with 16 concurrent senders; SIGKILL the relay after KILL_AFTER acknowledgements."""
    results: dict[int, int] = {}
    acked = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)

    async def sender(http: aiohttp.ClientSession) -> None:
        nonlocal acked
        while not queue.empty():
            i = queue.get_nowait()
            try:
                async with http.post(f"{relay.url}/alerts", data=bodies[i],
                                     headers={"Authorization": auth, "Content-Type": "application/json"}) as resp:
                    results[i] = resp.status
                    if resp.status in (200, 202):
                        acked += 1
                        if acked == KILL_AFTER:
                            relay.kill()
            except (TimeoutError, aiohttp.ClientError):
                results[i] = 0  # connection died with the relay: not acknowledged

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(sender(http) for _ in range(16)))
    return results


def test_sigkill_under_load_loses_no_acknowledged_alert(tmp_path):
    issuer = DevIssuer()
    db = tmp_path / "relay.db"
    bodies = [alert_body(i) for i in range(TOTAL)]
    with issuer.serving_in_thread():
        env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{db}", "RELAY_LOG_LEVEL": "WARNING"}
        relay = RelayProcess(env, tmp_path / "relay.log").start()
        auth = issuer.authorization()
        results = asyncio.run(post_all(relay, auth, bodies))
        relay.kill()
        acked = {i for i, status in results.items() if status in (200, 202)}
        assert KILL_AFTER <= len(acked) < TOTAL, f"the kill must land mid-stream (acked {len(acked)} of {TOTAL})"

        # Restart on the same database: the acknowledged alerts are all there, and retries are duplicates.
        relay = RelayProcess(env, tmp_path / "relay.log", port=relay.port).start()
        retried = asyncio.run(post_all_plain(relay, auth, [bodies[i] for i in sorted(acked)]))
        relay.stop()
    assert set(retried) == {200}, f"a retry of an acknowledged alert must be a duplicate, got {set(retried)}"

    async def read() -> tuple[list[Event], int]:
        store = SqliteStore(db)
        await store.open()
        try:
            return await store.events(), await store.pending()
        finally:
            await store.close()

    events, _ = asyncio.run(read())
    keys = [e.key for e in events]
    assert len(keys) == len(set(keys)), "an alert is stored more than once"
    stored = {e.key for e in events}
    expected = {Event.from_alert(parse_alert(json.loads(bodies[i])), bodies[i]).key for i in acked}
    missing = expected - stored
    assert not missing, f"{len(missing)} acknowledged alerts were lost"
    print(f"\ncrash safety: {TOTAL} posted, {len(acked)} acknowledged before SIGKILL, "
          f"{len(events)} stored after restart, 0 lost, 0 duplicated")


async def post_all_plain(relay: RelayProcess, auth: str, bodies: list[bytes]) -> list[int]:
    async with aiohttp.ClientSession() as http:
        statuses = []
        for body in bodies:
            async with http.post(f"{relay.url}/alerts", data=body,
                                 headers={"Authorization": auth, "Content-Type": "application/json"}) as resp:
                statuses.append(resp.status)
        return statuses
