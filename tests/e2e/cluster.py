"""Relay processes sharing one Azure Storage (Azurite), delivering to the fake ServiceNow.

Used by the replica and storage-outage tests: alert bodies, the RELAY_CONFIG they run with, posting
the way Azure Monitor does (retrying 408/429/503/504 and dropped connections), and a polling wait.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.dev_issuer import DevIssuer
from relay.store.azure import AzureStorageStore
from tests.conftest import load_sample
from tests.fakes.servicenow import FakeServiceNow
from tests.relay_process import RelayProcess

# Azure Monitor retries these (Action groups doc, "Webhook retry behavior").
RETRIED_STATUSES = {408, 429, 503, 504}
ACKNOWLEDGED = {200, 202}
AZURE_RETRIES = 5


def episode(i: int, tag: str = "replicas") -> tuple[bytes, bytes]:
    """One firing episode of one metric alert: its Fired body and its Resolved body."""
    doc = load_sample("testaction-metric-static-fired.json")
    e = doc["data"]["essentials"]
    e["alertId"] = f"/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/{tag}-{i:06d}"
    e["alertRule"] = f"{tag}-rule-{i}"
    e["severity"] = "Sev2"
    e["firedDateTime"] = "2026-01-01T10:00:00.000Z"
    resolved = copy.deepcopy(doc)
    resolved["data"]["essentials"]["monitorCondition"] = "Resolved"
    resolved["data"]["essentials"]["resolvedDateTime"] = "2026-01-01T10:05:00.000Z"
    return json.dumps(doc).encode(), json.dumps(resolved).encode()


def write_config(path: Path, servicenow: FakeServiceNow, lease_seconds: float | None = None,
                 timeout_seconds: float = 5, max_concurrency: int | None = None) -> Path:
    """`lease_seconds` None: the relay's default lease."""
    lease = f"  lease_seconds: {lease_seconds}\n" if lease_seconds is not None else ""
    concurrency = f"    max_concurrency: {max_concurrency}\n" if max_concurrency is not None else ""
    path.write_text(f"""\
targets:
  servicenow:
    kind: servicenow
    base_url: {servicenow.url}
    auth:
      type: basic
      username: {servicenow.username}
      password_env: SN_PASSWORD
    timeout_seconds: {timeout_seconds}
{concurrency}routes:
  - target: servicenow
delivery:
  poll_seconds: 0.2
{lease}  backoff_base_seconds: 0.2
  backoff_max_seconds: 2
""")
    return path


def relay_env(issuer: DevIssuer, storage: str, config: Path, servicenow: FakeServiceNow) -> dict[str, str]:
    return {
        **issuer.relay_env(),
        "RELAY_STORE": storage,
        "RELAY_CONFIG": str(config),
        "SN_PASSWORD": servicenow.password,
        "RELAY_LOG_LEVEL": "WARNING",
    }


async def start_relays(env: dict[str, str], logs: Path, n: int) -> list[RelayProcess]:
    relays = [RelayProcess(env, logs / f"relay-{i}.log") for i in range(n)]
    await asyncio.gather(*(asyncio.to_thread(r.start) for r in relays))
    return relays


async def post_like_azure(
    http: aiohttp.ClientSession, url: str, body: bytes, auth: str, pause: float = 0.2
) -> list[int]:
    """POST as an action group does: retry what Azure retries, up to 5 times. Returns every status
    seen (0 for a dropped connection); the last one is the outcome."""
    statuses: list[int] = []
    for _ in range(1 + AZURE_RETRIES):
        try:
            async with http.post(
                f"{url}/alerts",
                data=body,
                headers={"Authorization": auth, "Content-Type": "application/json"},
            ) as resp:
                statuses.append(resp.status)
        except (aiohttp.ClientError, TimeoutError):
            statuses.append(0)
        if statuses[-1] not in RETRIED_STATUSES | {0}:
            return statuses
        await asyncio.sleep(pause)
    return statuses


async def wait_until(
    what: str,
    check: Callable[[], Awaitable[bool]],
    within: float,
    describe: Callable[[], Awaitable[str]] | None = None,
) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            state = await describe() if describe else ""
            pytest.fail(f"not {what} within {within:.0f}s. {state}")
        await asyncio.sleep(0.25)


async def open_shared_store(connection_string: str) -> AzureStorageStore:
    """A store on the relays' own queue, table and container (the default names), for inspection."""
    store = AzureStorageStore(connection_string=connection_string)
    await store.open()
    return store


def incidents_by_correlation(servicenow: FakeServiceNow) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in servicenow.incidents.values():
        grouped.setdefault(record.get("correlation_id", ""), []).append(record)
    return grouped
