"""Issue 12, the listeners: a connection cap on the public port, RLIMIT_NOFILE raised at start and accept
errors logged at a bounded rate (item 8); /metrics only on its own port and bind address (item 12)."""

from __future__ import annotations

import asyncio
import logging
import resource
import urllib.error
import urllib.request
from typing import Any

import pytest
from aiohttp import web

from devtools.dev_issuer import DevIssuer
from relay.app import METRICS_ADDRESS_KEY, create_app
from relay.listener import (
    MAX_CONNECTIONS,
    RESERVED_DESCRIPTORS,
    CappedTCPSite,
    accept_error_handler,
    connection_cap,
    raise_open_files_limit,
)
from relay.settings import Settings
from tests import relay_log
from tests.faults.raw_http import RawConnection, request
from tests.relay_process import RelayProcess

CAP = 4
DEADLINE = 10.0  # guards against a hang only
CASES: dict[str, int] = {}


def count(group: str) -> None:
    CASES[group] = CASES.get(group, 0) + 1


@pytest.fixture
async def capped(issuer, tmp_path):
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}"})
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = CappedTCPSite(runner, "127.0.0.1", 0, max_connections=CAP)
    await site.start()
    yield runner, site
    await runner.cleanup()


async def until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        if predicate():
            return
        if loop.time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


async def test_connections_past_the_cap_get_503_and_are_closed_while_the_rest_are_served(capped):
    runner, site = capped
    port = site._server.sockets[0].getsockname()[1]
    idle = [await RawConnection.open(port) for _ in range(CAP)]
    await until(lambda: len(runner.server.connections) == CAP, "the idle connections to be served")
    extra = await RawConnection.open(port)
    status, _ = await extra.read_answer(DEADLINE)
    extra.close()
    assert status == 503, f"connection {CAP + 1} of a cap of {CAP} got {status}"
    assert site.refused == 1
    idle.pop().close()
    await until(lambda: len(runner.server.connections) < CAP, "a slot to free up")
    conn = await RawConnection.open(port)
    await conn.send(request("/healthz", method="GET"))
    assert await conn.status(DEADLINE) == 200, "/healthz must work again once a connection closed"
    conn.close()
    for c in idle:
        c.close()
    count("connections over the cap refused (item 8)")


@pytest.mark.parametrize(("limit", "cap"), [(1024, 1024 - RESERVED_DESCRIPTORS), (65536, MAX_CONNECTIONS), (100, 16)])
def test_connection_cap_leaves_descriptors_free(limit, cap):
    assert connection_cap(limit) == cap


def test_open_files_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-files limit ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        raised = raise_open_files_limit()
        assert raised > 256 and resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised
        assert raised == (hard if hard != resource.RLIM_INFINITY else 65536)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    count("open-files limit raised (item 8)")


class FakeLoop:
    def __init__(self) -> None:
        self.default: list[dict[str, Any]] = []

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.default.append(context)


def test_accept_errors_are_logged_once_per_interval_without_a_traceback(caplog):
    caplog.set_level(logging.ERROR, logger="relay.listener")
    now = [0.0]
    handle = accept_error_handler(interval=10, clock=lambda: now[0])
    loop = FakeLoop()
    context = {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many open files")}
    for i in range(1000):
        now[0] = i * 0.005  # 1000 failed accepts in 5 s
        handle(loop, context)  # type: ignore[arg-type]
    now[0] = 11
    handle(loop, context)  # type: ignore[arg-type]
    lines = [r for r in caplog.records if r.name == "relay.listener"]
    assert len(lines) == 2, f"{len(lines)} log records for 1001 accept errors"
    assert "999 more" in lines[1].getMessage() and all(r.exc_info is None for r in lines)
    handle(loop, {"message": "something else"})  # type: ignore[arg-type]
    assert loop.default == [{"message": "something else"}], "other loop errors must reach asyncio's handler"
    count("accept-error floods logged at a bounded rate (item 8)")


# -- item 12 --------------------------------------------------------------------------------------------

async def test_metrics_bind_to_loopback_even_when_the_relay_listens_everywhere(aiohttp_client, issuer, tmp_path):
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}",
                                  "RELAY_HOST": "0.0.0.0"})
    client = await aiohttp_client(create_app(settings))
    assert (await client.get("/metrics")).status == 404, "/metrics answered on the public port"
    [(host, _)] = client.app[METRICS_ADDRESS_KEY]
    assert host == "127.0.0.1", f"/metrics listens on {host} by default"
    count("metrics off the public port (item 12)")


def test_relay_serve_keeps_metrics_off_the_public_port_and_stops_cleanly_on_sigterm(tmp_path):
    issuer = DevIssuer()
    with issuer.serving_in_thread():
        env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}"}
        process = RelayProcess(env, tmp_path / "relay.log").start()
        try:
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{process.url}/metrics", timeout=5)
            assert err.value.code == 404
            with urllib.request.urlopen(process.metrics_url, timeout=5) as resp:
                assert b"relay_alert_requests" in resp.read()
        finally:
            process.stop()
    log = (tmp_path / "relay.log").read_text()
    assert process.proc.returncode == 0, f"relay serve exited with {process.proc.returncode}:\n{log[-2000:]}"
    assert relay_log.tracebacks(tmp_path / "relay.log") == [], log[-2000:]
    assert relay_log.count(tmp_path / "relay.log", "connections) with") == 1, "the start line names the connection cap"
    count("relay serve: metrics port and clean SIGTERM (items 8, 12)")


def test_report_listener_counts(fault_report):
    assert CASES, "run with the tests above"
    fault_report("listener hardening", "; ".join(f"{n} {group}" for group, n in sorted(CASES.items())))
