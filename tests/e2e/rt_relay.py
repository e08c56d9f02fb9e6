"""The relay in front of the session's real Request Tracker 5, for the end-to-end tests: `relay serve` as a
process with a RELAY_CONFIG pointed at RT and a dev token issuer, the raw REST2 client that checks RT
independently of the code under test, and the calls that post alerts and wait for RT."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.dev_issuer import DevIssuer
from tests.conftest import load_sample
from tests.relay_process import RelayProcess
from tests.rt_server import RunningRT

SUB = "/subscriptions/0f0e0d0c-0b0a-0908-0706-050403020100"
# A RELAY_CONFIG target's options naming the session's RT, indented under `targets: <name>:`; the tests'
# configs splice it in and relay_for_rt fills it in.
RT_TARGET = """\
    kind: request_tracker
    base_url: {url}
    auth: {{type: token, token_env: RT_TOKEN}}
    queue: {queue}
    custom_field: {cf}
    asset_catalog: {catalog}
"""
# A worker that polls and backs off quickly, so that a test waits on RT rather than on the relay.
QUICK_DELIVERY = """\
delivery:
  poll_seconds: 0.1
  backoff_base_seconds: 0.2
  backoff_max_seconds: 2
"""


class RTAdmin:
    """Raw REST2 calls for arranging and checking, independent of the code under test."""

    def __init__(self, rt: RunningRT, session: aiohttp.ClientSession) -> None:
        self.rt = rt
        self.session = session
        self.headers = {"Authorization": f"token {rt.token}"}

    async def get(self, path: str) -> Any:
        async with self.session.get(f"{self.rt.url}/REST/2.0{path}", headers=self.headers) as resp:
            assert resp.status == 200, f"GET {path}: {resp.status} {await resp.text()}"
            return await resp.json()

    async def post(self, path: str, body: Any) -> Any:
        async with self.session.post(
            f"{self.rt.url}/REST/2.0{path}", json=body, headers=self.headers
        ) as resp:
            assert resp.status == 201, f"POST {path}: {resp.status} {await resp.text()}"
            return await resp.json()

    async def tickets_with_key(self, key: str) -> list[dict[str, Any]]:
        form = {"query": f"'CF.{{{self.rt.custom_field}}}' = '{key}'", "fields": "Status"}
        async with self.session.post(
            f"{self.rt.url}/REST/2.0/tickets", data=form, headers=self.headers
        ) as resp:
            assert resp.status == 200, await resp.text()
            return (await resp.json())["items"]

    async def ticket(self, ticket_id: str) -> dict[str, Any]:
        return await self.get(f"/ticket/{ticket_id}")

    async def comments(self, ticket_id: str) -> list[str]:
        history = await self.get(f"/ticket/{ticket_id}/history?fields=Type,Data&per_page=100")
        texts = []
        for item in history["items"]:
            if item.get("Type") == "Comment":
                attachments = await self.get(f"/transaction/{item['id']}/attachments?fields=Content")
                # in a collection RT gives the content as text (only /attachment/:id gives Base64)
                texts.extend(str(a.get("Content", "")).strip() for a in attachments["items"])
        return texts

    async def add_asset(self, name: str) -> str:
        return (await self.post("/asset", {"Name": name, "Catalog": self.rt.catalog}))["id"]

    async def assets_named(self, name: str) -> list[dict[str, Any]]:
        form = {"query": f"Catalog = '{self.rt.catalog}' AND Name = '{name}'", "fields": "Name"}
        async with self.session.post(
            f"{self.rt.url}/REST/2.0/assets", data=form, headers=self.headers
        ) as resp:
            return (await resp.json())["items"]


def filled_in(config: str, rt: RunningRT, **fill: Any) -> str:
    """`config` with its {url}, {queue}, {cf} and {catalog} naming `rt`, any other field from `fill`."""
    return config.format(url=rt.url, queue=rt.queue, cf=rt.custom_field, catalog=rt.catalog, **fill)


@asynccontextmanager
async def relay_for_rt(rt: RunningRT, tmp_path: Path, config: str, *, log_level: str = "INFO",
                       **fill: Any) -> AsyncIterator[tuple[RelayProcess, DevIssuer]]:
    """`relay serve` on a SQLite store of its own under `tmp_path`, trusting a dev token issuer, with the
    RELAY_CONFIG `config`: its {url}, {queue}, {cf} and {catalog} name the session's RT (its targets read
    the token from RT_TOKEN), any other field comes from `fill`."""
    path = tmp_path / "relay.yaml"
    path.write_text(filled_in(config, rt, **fill))
    issuer = DevIssuer()
    with issuer.serving_in_thread():
        env = {
            **issuer.relay_env(),
            "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}",
            "RELAY_CONFIG": str(path),
            "RT_TOKEN": rt.token,
            "RELAY_LOG_LEVEL": log_level,
        }
        process = RelayProcess(env, tmp_path / "relay.log")
        await asyncio.to_thread(process.start)
        try:
            yield process, issuer
        finally:
            process.stop()


def relay_fixture(config: str) -> Any:
    """A pytest fixture giving (relay process, dev issuer) for `relay_for_rt` with `config`: a module
    assigns it to `relay`."""

    @pytest.fixture
    async def relay(rt_server: RunningRT, tmp_path: Path) -> AsyncIterator[tuple[RelayProcess, DevIssuer]]:
        async with relay_for_rt(rt_server, tmp_path, config) as running:
            yield running

    return relay


def alert_body(guid: str, rule: str, vm: str, fired: str, resolved: str | None = None) -> bytes:
    doc = load_sample("testaction-metric-static-fired.json")
    e = doc["data"]["essentials"]
    e["alertId"] = f"{SUB}/providers/Microsoft.AlertsManagement/alerts/{guid}"
    e["alertRule"] = rule
    e["severity"] = "Sev1"
    e["alertTargetIDs"] = [vm]
    e["configurationItems"] = [vm.rsplit("/", 1)[-1]]
    e["firedDateTime"] = fired
    e["monitorCondition"] = "Resolved" if resolved else "Fired"
    if resolved:
        e["resolvedDateTime"] = resolved
    return json.dumps(doc).encode()


async def post_alert(
    http: aiohttp.ClientSession, relay: RelayProcess, issuer: DevIssuer, body: bytes
) -> None:
    headers = {"Authorization": issuer.authorization(), "Content-Type": "application/json"}
    async with http.post(f"{relay.url}/alerts", data=body, headers=headers) as resp:
        assert resp.status in (200, 202), f"the relay refused an alert: {resp.status} {await resp.text()}"


async def until_rt(what: str, check: Any, relay: RelayProcess, limit: float = 90.0) -> Any:
    """Poll RT until `check()` returns something truthy; `limit` only guards against a hang."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            log_tail = "\n".join(relay.log_path.read_text(errors="replace").splitlines()[-25:])
            pytest.fail(f"RT never showed {what}; relay log tail:\n{log_tail}")
        await asyncio.sleep(0.25)
