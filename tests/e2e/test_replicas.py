"""Three relays share one Azurite: an alert stream posted across all three at once, with duplicates
and Fired/Resolved pairs, ends as exactly one incident per firing episode, each one resolved."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from devtools.dev_issuer import DevIssuer
from relay.alerts import parse_alert
from relay.store import Event
from tests.azurite import DEV_KEY, Azurite, require_azurite
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

EPISODES = 30
REPLICAS = 3
# Each notification arrives twice (Azure's retries, several action groups), on two replicas at once.
COPIES = 2


def key_of(body: bytes) -> str:
    return Event.from_alert(parse_alert(json.loads(body)), body).key


async def test_three_replicas_open_one_incident_per_episode_and_apply_every_resolve(tmp_path):
    require_azurite()
    azurite = Azurite(tmp_path).start()  # its own: the relays use the default queue and table names
    servicenow = FakeServiceNow()
    await servicenow.start()
    issuer = DevIssuer()
    relays = []
    episodes = [episode(i) for i in range(EPISODES)]
    try:
        with issuer.serving_in_thread():
            config = write_config(tmp_path / "relay.yaml", servicenow)
            env = relay_env(issuer, azurite.connection_string, config, servicenow)
            env["RELAY_LOG_LEVEL"] = "INFO"  # so that the start-up lines are checked for the account key
            relays = await start_relays(env, tmp_path, REPLICAS)
            auth = issuer.authorization()

            async def notify(i: int, http: aiohttp.ClientSession) -> None:
                for n, body in enumerate(episodes[i]):  # Fired, then Resolved
                    targets = [relays[(i + n + c) % REPLICAS] for c in range(COPIES)]
                    posts = (post_like_azure(http, r.url, body, auth) for r in targets)
                    outcomes = await asyncio.gather(*posts)
                    for statuses in outcomes:
                        assert statuses[-1] in ACKNOWLEDGED, f"episode {i}: the relay answered {statuses}"

            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
                await asyncio.gather(*(notify(i, http) for i in range(EPISODES)))

            store = await open_shared_store(azurite.connection_string)
            try:
                async def all_resolved() -> bool:
                    resolved = [r for r in servicenow.incidents.values() if r.get("state") == "6"]
                    return len(resolved) >= EPISODES and await store.pending() == 0

                async def progress() -> str:
                    states = [r.get("state") for r in servicenow.incidents.values()]
                    return (f"{len(states)} incidents, states {sorted(states)}; "
                            f"{await store.pending()} pending; "
                            f"dead letters: {[d.error for d in await store.dead_letters()]}")

                await wait_until("every episode resolved in ServiceNow", all_resolved, 180, progress)
                stored = {e.key for e in await store.events()}
                dead = await store.dead_letters()
            finally:
                await store.close()
    finally:
        for r in relays:
            r.stop()
        await servicenow.stop()
        azurite.stop()

    grouped = incidents_by_correlation(servicenow)
    doubled = {k: [r["number"] for r in v] for k, v in grouped.items() if len(v) > 1}
    assert not doubled, f"one firing episode opened several incidents: {doubled}"
    assert len(grouped) == EPISODES, f"{EPISODES} episodes, {len(grouped)} incidents"
    unresolved = [r["number"] for r in servicenow.incidents.values() if r.get("state") != "6"]
    assert not unresolved, f"resolves not applied: {unresolved}"
    expected = {key_of(body) for pair in episodes for body in pair}
    assert expected <= stored, f"{len(expected - stored)} acknowledged notifications are not in the store"
    assert dead == [], f"dead letters: {[d.error for d in dead]}"
    for r in relays:
        assert DEV_KEY not in r.log_path.read_text(), f"{r.log_path.name} holds the storage account key"
