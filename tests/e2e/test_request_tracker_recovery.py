"""Idempotent steps and store-loss recovery against a real Request Tracker 5, through the worker.

A loopback proxy between the relay and RT passes every request on and, when told, drops the connection
after RT has answered one (the write landed, its answer was lost). A retried resolve, reopen or note
must change the ticket once; a fresh store must resolve RT's open tickets and adopt rather than twin.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.alerts import parse_alert_json
from relay.delivery.lifecycle import Policy, step_marker
from relay.delivery.metrics import DeliveryMetrics
from relay.delivery.routing import DeliverySettings, RelayConfig, Route, TargetConfig
from relay.delivery.worker import Worker
from relay.store import Event
from relay.store.sqlite import SqliteStore
from relay.targets import request_tracker
from tests.conftest import load_sample
from tests.e2e.rt_relay import SUB, RTAdmin
from tests.rt_server import RunningRT

pytestmark = pytest.mark.e2e

T0, T1, T2 = "2026-02-01T10:00:00.000Z", "2026-02-01T10:05:00.000Z", "2026-02-01T10:20:00.000Z"


class LosingProxy:
    """Forwards to RT; `lose(path_part, method)` drops the connection after RT answered the next match."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.armed: list[tuple[str, str]] = []
        self.lost = 0
        self.sent: list[tuple[str, str]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    def lose(self, path_part: str, method: str) -> None:
        self.armed.append((path_part, method))

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        self.sent.append((request.method, request.path))
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body,
                                         headers=headers) as upstream:
            payload = await upstream.read()
            status, content_type = upstream.status, upstream.headers.get("Content-Type", "application/json")
        match = next((a for a in self.armed if a[0] in request.path and a[1] == request.method), None)
        if match is not None:
            self.armed.remove(match)
            self.lost += 1
            if request.transport is not None:
                request.transport.abort()  # RT applied it; the relay never hears
            return web.Response(status=500)
        return web.Response(status=status, body=payload, headers={"Content-Type": content_type})


def body_of(guid: str, fired: str, resolved: str | None = None) -> bytes:
    doc = load_sample("testaction-metric-static-fired.json")
    e = doc["data"]["essentials"]
    e["alertId"] = f"{SUB}/providers/Microsoft.AlertsManagement/alerts/{guid}"
    e["alertRule"] = "e2e-recovery"
    e["firedDateTime"] = fired
    e["monitorCondition"] = "Resolved" if resolved else "Fired"
    if resolved:
        e["resolvedDateTime"] = resolved
    return json.dumps(doc).encode()


@pytest.fixture
async def proxy(rt_server: RunningRT) -> AsyncIterator[LosingProxy]:
    p = LosingProxy(rt_server.url)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def relay(rt_server: RunningRT, proxy: LosingProxy, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a worker on a store of its own (a new file each call: a lost or replaced store)."""
    running: list[tuple[SqliteStore, Worker]] = []

    async def start(policy: Policy | None = None) -> SqliteStore:
        store = SqliteStore(tmp_path / f"relay-{len(running)}.db")
        await store.open()
        target = request_tracker.from_config("rt", {
            "kind": "request_tracker", "base_url": proxy.url, "auth": {"type": "token", "token_env": "RT_TOKEN"},
            "queue": rt_server.queue, "custom_field": rt_server.custom_field, "asset_catalog": rt_server.catalog,
            "ci_binding": "none", "timeout_seconds": 30}, env={"RT_TOKEN": rt_server.token})
        settings = replace(DeliverySettings(), poll_seconds=0.05, backoff_base_seconds=0.05, backoff_max_seconds=0.2)
        config = RelayConfig(
            targets={"rt": TargetConfig(name="rt", kind="request_tracker", block={}, timeout_seconds=30)},
            routes=(Route(target="rt", policy=policy or Policy()),),
            delivery=settings,
        )
        worker = Worker(store, config, {"rt": target}, metrics=DeliveryMetrics())
        await worker.start()
        running.append((store, worker))
        return store

    yield start
    for store, worker in running:
        await worker.stop(grace_seconds=1)
        await store.close()


async def accept(store: SqliteStore, body: bytes) -> Event:
    event = Event.from_alert(parse_alert_json(body), body)
    assert await store.accept(event)
    return event


async def drained(store: SqliteStore, what: str) -> None:
    import asyncio

    deadline = asyncio.get_running_loop().time() + 120
    while await store.pending():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"gave up waiting: {what}")
        await asyncio.sleep(0.05)


async def one_ticket(admin: RTAdmin, key: str) -> str:
    tickets = await admin.tickets_with_key(key)
    assert len(tickets) == 1, f"{len(tickets)} tickets carry {key}"
    return str(tickets[0]["id"])


async def test_resolve_note_and_reopen_retried_after_lost_answers_change_the_real_ticket_once(
        rt_server, admin, proxy, relay):
    guid = str(uuid.uuid4())
    store = await relay(Policy(on_refire="reopen"))
    await accept(store, body_of(guid, T0))
    await drained(store, "the ticket is opened")
    ticket = await one_ticket(admin, guid)

    proxy.lose("/comment", "POST")  # the note (a new episode while open) lands, its answer is lost
    note = await accept(store, body_of(guid, T1))
    await drained(store, "the note is delivered")
    comments = await admin.comments(ticket)
    assert [c for c in comments if step_marker(note.key) in c] == comments and len(comments) == 1, comments

    proxy.lose("/comment", "POST")  # the resolve (comment + status) lands, its answer is lost
    resolve = await accept(store, body_of(guid, T1, resolved=T2))
    await drained(store, "the resolve is delivered")
    assert (await admin.ticket(ticket))["Status"] == "resolved"
    comments = await admin.comments(ticket)
    assert sum(step_marker(resolve.key) in c for c in comments) == 1, f"the resolve was posted twice: {comments}"

    proxy.lose("/comment", "POST")  # the reopen lands, its answer is lost
    reopen = await accept(store, body_of(guid, "2026-02-01T11:00:00.000Z"))
    await drained(store, "the reopen is delivered")
    assert (await admin.ticket(ticket))["Status"] == "open"
    comments = await admin.comments(ticket)
    assert sum(step_marker(reopen.key) in c for c in comments) == 1, f"the reopen was posted twice: {comments}"
    assert len(comments) == 3 and proxy.lost == 3
    assert await admin.tickets_with_key(f"{guid}.2") == []


async def test_a_fresh_store_resolves_open_real_tickets_and_adopts_them_instead_of_twins(
        rt_server, admin, proxy, relay):
    resolving, adopting, refiring, never = (str(uuid.uuid4()) for _ in range(4))
    first = await relay()
    for guid in (resolving, adopting, refiring):
        await accept(first, body_of(guid, T0))
    await accept(first, body_of(refiring, T0, resolved=T1))
    await drained(first, "the first store's tickets are opened")
    opened = {g: await one_ticket(admin, g) for g in (resolving, adopting, refiring)}

    fresh = await relay()  # the store is lost: a new one knows nothing of those tickets
    await accept(fresh, body_of(resolving, T0, resolved=T1))
    await accept(fresh, body_of(adopting, T2))
    await accept(fresh, body_of(refiring, T2))
    await accept(fresh, body_of(never, T0, resolved=T1))
    await drained(fresh, "the fresh store's events are delivered")

    assert (await admin.ticket(opened[resolving]))["Status"] == "resolved", "the open ticket was left open"
    assert await one_ticket(admin, adopting) == opened[adopting], "a twin was opened instead of adopting"
    assert (await admin.ticket(opened[adopting]))["Status"] != "resolved"
    assert (await admin.ticket(opened[refiring]))["Status"] == "resolved"
    await one_ticket(admin, f"{refiring}.2")  # the new episode continues after the highest key
    assert await admin.tickets_with_key(never) == [], "a Resolved that never fired opened a ticket"
    record = await fresh.get_ticket("rt", adopting)
    assert record is not None and record.data["ticket_id"] == opened[adopting]
