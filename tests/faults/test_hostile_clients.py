"""Clients that misbehave on purpose: bodies over the cap (declared or chunked), headers or bodies sent a
byte at a time, wrong content types. The relay answers, or closes, within its timeouts, never hangs on
them, and goes on serving everyone else meanwhile.

The relay's timeouts are shortened here so that this takes seconds: the body read (10 s in production)
through `relay.intake.handler.BODY_READ_TIMEOUT_SECONDS`; through the test server's runner, the keep-alive timeout
(75 s, `relay.app`), which is also aiohttp's only bound on how long request headers may take, and
aiohttp's lingering time (10 s by default): after a 408, 413 or 415 it reads and drops what the client
still sends for that long, so that the client gets the answer rather than a reset, then closes.
"""

from __future__ import annotations

import asyncio
import json

import pytest

import relay.app
import relay.intake.handler
from relay.app import create_app
from relay.intake import MAX_BODY_BYTES
from relay.settings import Settings
from tests.conftest import SAMPLES
from tests.faults.raw_http import RawConnection, exchange, request

BODY = (SAMPLES / "testaction-metric-static-fired.json").read_bytes()
BODY_TIMEOUT = 0.5
HEADER_TIMEOUT = 1.0  # the test server's keep-alive timeout
LINGERING = 1.0  # the test server's lingering time
SLOWLORIS = 20  # connections trickling headers at once
DEADLINE = 10.0  # no single wait below may last longer: a hang fails the test instead of blocking it


@pytest.fixture
async def relay_server(aiohttp_server, issuer, tmp_path, monkeypatch):
    monkeypatch.setattr(relay.intake.handler, "BODY_READ_TIMEOUT_SECONDS", BODY_TIMEOUT)
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}"})
    return await aiohttp_server(create_app(settings), keepalive_timeout=HEADER_TIMEOUT, lingering_time=LINGERING)


def alert(i: int) -> bytes:
    doc = json.loads(BODY)
    doc["data"]["essentials"]["alertId"] += f"-hostile-{i}"
    return json.dumps(doc).encode()


def post_headers(auth: str, **extra: str) -> dict[str, str]:
    return {"Authorization": auth, "Content-Type": "application/json", **extra}


async def test_body_over_the_cap_is_refused_without_waiting_for_the_rest(relay_server, issuer, fault_report):
    auth = issuer.authorization()
    # Declared too large: 413 on the headers alone, though no byte of the body was sent.
    declared = await RawConnection.open(relay_server.port)
    await declared.send(request(headers=post_headers(auth, **{"Content-Length": str(300 * 1024)})))
    declared_status = await declared.status(DEADLINE)
    declared_closed = await declared.closed_by_server(DEADLINE)
    declared.close()
    # Chunked, never finished: 413 once one byte past the cap has arrived, the end never awaited.
    chunked = await RawConnection.open(relay_server.port)
    await chunked.send(request(headers=post_headers(auth, **{"Transfer-Encoding": "chunked"})))
    over = MAX_BODY_BYTES + 1
    await chunked.send(f"{over:x}\r\n".encode() + b" " * over + b"\r\n")
    chunked_status = await chunked.status(DEADLINE)
    chunked_closed = await chunked.closed_by_server(DEADLINE)
    chunked.close()
    assert declared_status == 413, f"Content-Length over the cap: got {declared_status or 'no answer'}"
    assert chunked_status == 413, f"chunked body over the cap: got {chunked_status or 'no answer'}"
    assert declared_closed and chunked_closed, "after a 413 the connection must be closed, not kept for the rest"
    fault_report("oversized bodies", "Content-Length 300 KiB with no body sent: 413, closed after the lingering "
                 f"time; chunked, {over} bytes and no end: 413, closed after the lingering time ({LINGERING}s here)")


async def test_slow_body_gets_408_when_the_body_read_times_out(relay_server, issuer, fault_report):
    auth = issuer.authorization()
    body = alert(1)
    stalled = await RawConnection.open(relay_server.port)
    await stalled.send(request(headers=post_headers(auth, **{"Content-Length": str(len(body))}))
                       + body[:100])
    trickling = await RawConnection.open(relay_server.port)
    await trickling.send(request(headers=post_headers(auth, **{"Content-Length": str(len(body))})))

    async def trickle() -> None:
        for byte in body[:-1]:  # never the last byte
            if not await trickling.send(bytes([byte])):
                return
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        stalled_status = await stalled.status(DEADLINE)
        trickled_status = await trickling.status(DEADLINE)
    finally:
        sender.cancel()
        stalled.close()
        trickling.close()
    assert stalled_status == 408, f"a body that stops arriving: got {stalled_status or 'no answer'}"
    assert trickled_status == 408, f"a body sent a byte every 50 ms: got {trickled_status or 'no answer'}"
    fault_report("slow body", "stalled after 100 bytes: 408; trickled a byte every 50 ms: 408 (the body read "
                 f"timeout, 10 s in the relay, is {BODY_TIMEOUT}s here)")


async def test_slowloris_connections_are_closed_and_others_are_served_meanwhile(relay_server, issuer, fault_report):
    auth = issuer.authorization()
    start = request(headers=post_headers(auth)).split(b"\r\n")[0] + b"\r\nHost: 127.0.0.1\r\n"
    lorises = [await RawConnection.open(relay_server.port) for _ in range(SLOWLORIS)]
    for conn in lorises:
        await conn.send(start)

    async def trickle(conn: RawConnection) -> None:
        for i in range(int(DEADLINE / 0.2)):  # a header line every 200 ms, never the blank line that ends them
            if not await conn.send(f"X-Slow-{i}: a\r\n".encode()):
                return
            await asyncio.sleep(0.2)

    senders = [asyncio.create_task(trickle(conn)) for conn in lorises]
    try:
        # While every slow connection is open and trickling, ordinary clients are answered.
        served = [await exchange(relay_server.port, request(headers=post_headers(auth), body=alert(i)), DEADLINE)
                  for i in range(5)]
        closed = await asyncio.gather(*(conn.closed_by_server(DEADLINE) for conn in lorises))
    finally:
        for task in senders:
            task.cancel()
        for conn in lorises:
            conn.close()
    assert served == [202] * 5, f"ordinary clients were not served while slowloris connections were open: {served}"
    assert all(closed), f"{closed.count(False)} of {SLOWLORIS} slowloris connections still open after {DEADLINE}s"
    fault_report("slow headers (slowloris)", f"{SLOWLORIS} connections trickling header lines: all closed by the "
                 f"relay at its keep-alive timeout ({HEADER_TIMEOUT}s here); 5 of 5 ordinary posts meanwhile: 202")


def serving_options(monkeypatch) -> dict:  # type: ignore[no-untyped-def]
    """What `relay serve` would hand aiohttp's runner, without serving."""
    seen: dict = {}

    async def capture(app, options, host, port, max_connections):  # type: ignore[no-untyped-def]
        seen.update(options)

    monkeypatch.setattr(relay.app, "_serve", capture)
    return seen


def test_relay_serve_bounds_header_time_by_its_keepalive_timeout(monkeypatch, issuer):
    seen = serving_options(monkeypatch)
    relay.app.run(Settings.from_env({**issuer.relay_env(), "RELAY_STORE": "sqlite:///unused.db"}))
    assert seen["keepalive_timeout"] == relay.app.KEEPALIVE_TIMEOUT_SECONDS


def test_relay_serve_lets_requests_finish_for_as_long_as_the_delivery_grace(monkeypatch, issuer, tmp_path):
    seen = serving_options(monkeypatch)
    env = {**issuer.relay_env(), "RELAY_STORE": "sqlite:///unused.db"}
    relay.app.run(Settings.from_env(env))
    assert seen["shutdown_timeout"] == 20 == relay.app.SHUTDOWN_TIMEOUT_SECONDS, "the default grace is 20 s"
    config = tmp_path / "relay.yaml"
    config.write_text("targets: {d: {kind: dry_run}}\nroutes: [{target: d}]\ndelivery: {shutdown_grace_seconds: 7}\n")
    relay.app.run(Settings.from_env({**env, "RELAY_CONFIG": str(config)}))
    assert seen["shutdown_timeout"] == 7, "aiohttp must wait as long as the configured delivery grace"


WRONG_TYPES = {
    "text/plain": {"Content-Type": "text/plain"},
    "application/xml": {"Content-Type": "application/xml"},
    "form": {"Content-Type": "application/x-www-form-urlencoded"},
    "multipart": {"Content-Type": "multipart/form-data; boundary=x"},
    "no Content-Type": {},
    "application/jsonx": {"Content-Type": "application/jsonx"},
    "text/json": {"Content-Type": "text/json"},
    "application/json-seq": {"Content-Type": "application/json-seq"},
    "gzip": {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    "deflate": {"Content-Type": "application/json", "Content-Encoding": "deflate"},
    "br": {"Content-Type": "application/json", "Content-Encoding": "br"},
    "two encodings": {"Content-Type": "application/json", "Content-Encoding": "identity, gzip"},
}


async def test_wrong_content_types_and_encodings_get_415(relay_server, issuer, fault_report):
    auth = issuer.authorization()
    statuses = {}
    for label, headers in WRONG_TYPES.items():
        statuses[label] = await exchange(relay_server.port, request(headers={"Authorization": auth, **headers},
                                                                    body=alert(100)), DEADLINE)
    wrong = {label: s for label, s in statuses.items() if s != 415}
    assert not wrong, f"wrong content types not answered 415: {wrong}"
    ok = await exchange(relay_server.port, request(headers=post_headers(auth), body=alert(100)), DEADLINE)
    assert ok == 202, "the same body as application/json must be accepted (the 415s were about the type)"
    fault_report("wrong content types", f"{len(statuses)} types and encodings, all 415; the same body as "
                 "application/json: 202")
