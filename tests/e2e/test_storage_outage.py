"""Azure Storage goes away under two running relays and comes back: intake answers 503 (so Azure
retries) and readiness fails while it is gone, nothing acknowledged is lost, and delivery resumes
by itself when it returns."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from devtools.dev_issuer import DevIssuer
from tests.azurite import Azurite, require_azurite
from tests.e2e.cluster import (
    ACKNOWLEDGED,
    episode,
    incidents_by_correlation,
    open_shared_store,
    post_like_azure,
    relay_env,
    start_relays,
    wait_until,
    write_config,
)
from tests.fakes.servicenow import FakeServiceNow

pytestmark = pytest.mark.e2e

REPLICAS = 2
DELIVERED_BEFORE = range(0, 4)  # delivered before the outage
STUCK_BEFORE = range(4, 8)  # acknowledged, but ServiceNow is down: still pending when storage goes
DURING = range(8, 12)  # refused during the outage, retried by "Azure" afterwards
ALL = range(0, 12)


async def post_once(http: aiohttp.ClientSession, url: str, body: bytes, auth: str) -> int:
    try:
        async with http.post(f"{url}/alerts", data=body,
                             headers={"Authorization": auth, "Content-Type": "application/json"}) as resp:
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def ready(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/readyz") as resp:
        return resp.status


async def test_storage_outage_refuses_with_503_loses_nothing_acknowledged_and_recovers(tmp_path):
    require_azurite()
    azurite = Azurite(tmp_path, location=tmp_path / "azurite-data").start()  # on disk: survives a restart
    servicenow = FakeServiceNow()
    await servicenow.start()
    issuer = DevIssuer()
    relays = []
    episodes = [episode(i, tag="outage") for i in ALL]
    try:
        with issuer.serving_in_thread():
            # The default lease (issue 10: the outage tests run with it): claims held when storage
            # went away come back within about one lease after it returns.
            config = write_config(tmp_path / "relay.yaml", servicenow)
            env = relay_env(issuer, azurite.connection_string, config, servicenow)
            relays = await start_relays(env, tmp_path, REPLICAS)
            auth = issuer.authorization()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

                async def fire(i: int) -> list[int]:
                    return await post_like_azure(http, relays[i % REPLICAS].url, episodes[i][0], auth)

                for statuses in await asyncio.gather(*(fire(i) for i in DELIVERED_BEFORE)):
                    assert statuses[-1] in ACKNOWLEDGED, f"before the outage the relay answered {statuses}"

                async def opened(n: int) -> bool:
                    return len(servicenow.incidents) >= n

                await wait_until("delivering before the outage", lambda: opened(len(DELIVERED_BEFORE)), 60)

                sn_down = servicenow.inject("status", times=10**6, status=503, path="/api/now/table/incident")
                for statuses in await asyncio.gather(*(fire(i) for i in STUCK_BEFORE)):
                    assert statuses[-1] in ACKNOWLEDGED, f"storage is up, the relay answered {statuses}"

                azurite.stop()
                for r in relays:
                    async def unready(url: str = r.url) -> bool:
                        return await ready(http, url) == 503

                    await wait_until(f"{r.url}/readyz failing while storage is down", unready, 60)
                refused = await asyncio.gather(
                    *(post_once(http, relays[i % REPLICAS].url, episodes[i][0], auth) for i in DURING))
                assert set(refused) == {503}, f"storage down: must answer 503 (Azure retries it): {refused}"

                azurite.start()  # same ports, same data
                sn_down.times = 0
                for r in relays:
                    async def back(url: str = r.url) -> bool:
                        return await ready(http, url) == 200

                    await wait_until(f"{r.url}/readyz recovering by itself", back, 60)
                for statuses in await asyncio.gather(*(fire(i) for i in DURING)):  # Azure's retry
                    assert statuses[-1] in ACKNOWLEDGED, f"after the outage the relay answered {statuses}"
                resolves = await asyncio.gather(
                    *(post_like_azure(http, relays[i % REPLICAS].url, episodes[i][1], auth) for i in ALL))
                for statuses in resolves:
                    assert statuses[-1] in ACKNOWLEDGED, f"after the outage the relay answered {statuses}"

            store = await open_shared_store(azurite.connection_string)
            try:
                async def all_resolved() -> bool:
                    resolved = [r for r in servicenow.incidents.values() if r.get("state") == "6"]
                    return len(resolved) >= len(ALL) and await store.pending() == 0

                async def progress() -> str:
                    states = sorted(r.get("state", "") for r in servicenow.incidents.values())
                    return f"incident states {states}; {await store.pending()} pending"

                await wait_until("every episode resolved after the outage", all_resolved, 120, progress)
                dead = await store.dead_letters()
            finally:
                await store.close()
    finally:
        for r in relays:
            r.stop()
        await servicenow.stop()
        azurite.stop()

    grouped = incidents_by_correlation(servicenow)
    assert len(grouped) == len(ALL) and all(len(v) == 1 for v in grouped.values()), (
        f"expected one incident per episode, got {({k: len(v) for k, v in grouped.items()})}")
    assert all(r.get("state") == "6" for r in servicenow.incidents.values())
    assert dead == [], f"dead letters: {[d.error for d in dead]}"
