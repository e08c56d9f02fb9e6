"""`relay serve` runs its delivery worker in a child process (RELAY_DELIVERY_PROCESS=separate, the default):
it delivers through the child, woken by intake's accepts; a killed child is restarted and what it held is
delivered without waiting for its lease; SIGTERM stops both; the child's metrics and circuits are the
relay's; the child never outlives the relay."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from devtools.dev_issuer import DevIssuer
from relay.child_process import exit_description, read_frame
from relay.delivery_process import (
    METRICS,
    RESTART_DELAYS_SECONDS,
    STATE,
    ChildMetrics,
    restart_delay,
    serve_child,
)
from relay.settings import Settings
from tests import relay_log
from tests.e2e.cluster import episode, relay_env
from tests.faults.servicenow_timeline import TimedServiceNow
from tests.relay_process import RelayProcess

# Default lease (30 s): a restarted child that waited for the dead one's lease would take that long.
DEFAULT_LEASE_SECONDS = 30.0
# Far longer than any test waits: a delivery that comes sooner was woken by the accept, not by a poll.
POLL_SECONDS = 60
# A create the dead child left in flight may still land until its call times out: the next child waits
# that long (not the lease) before it searches and adopts. The fake's slow create lands within it.
CALL_TIMEOUT_SECONDS = 4
SLOW_CREATE_SECONDS = 2.5


# -- pure pieces ---------------------------------------------------------------------------------------

def test_a_crash_loop_backs_off_and_a_child_that_ran_a_while_restarts_at_once():
    assert restart_delay(1) == RESTART_DELAYS_SECONDS[0]
    delays = [restart_delay(n) for n in range(1, 10)]
    assert delays == sorted(delays), f"the backoff must not shrink while the child keeps dying: {delays}"
    assert delays[-1] == RESTART_DELAYS_SECONDS[-1]


def test_exit_description_names_the_signal():
    assert exit_description(-signal.SIGKILL) == "signal SIGKILL"
    assert exit_description(1) == "exit code 1"


def test_the_childs_metric_families_come_out_of_the_parents_registry_as_the_child_wrote_them():
    child = CollectorRegistry()
    Counter("relay_deliveries", "d", ["target", "outcome"], registry=child).labels("sn", "create").inc(3)
    Histogram("relay_target_call_seconds", "c", ["target", "call"], registry=child).labels("sn", "create").observe(0.2)
    parent = CollectorRegistry()
    Counter("relay_alerts", "a", registry=parent).inc()
    collected = ChildMetrics()
    parent.register(collected)  # type: ignore[arg-type]
    collected.update(generate_latest(child))
    text = generate_latest(parent).decode()
    families = [f.name for f in text_string_to_metric_families(text)]
    # (the text format shows each counter's and histogram's `_created` as a gauge family of its own)
    assert sorted(families) == ["relay_alerts", "relay_alerts_created", "relay_deliveries", "relay_deliveries_created",
                                "relay_target_call_seconds", "relay_target_call_seconds_created"], families
    assert 'relay_deliveries_total{outcome="create",target="sn"} 3.0' in text
    assert 'relay_target_call_seconds_count{call="create",target="sn"} 1.0' in text
    collected.update(None)  # the child did not answer: its families are left out, not shown stale
    assert "relay_deliveries" not in generate_latest(parent).decode()


async def test_the_child_answers_its_parent_and_stops_when_the_parents_end_closes(tmp_path):
    """In-process: the child's side of the socket pair, and the end of file that means its parent is gone
    (where PR_SET_PDEATHSIG does not exist, this is what stops an orphan)."""
    ours, theirs = socket.socketpair()
    settings = Settings(tenant_id="11111111-2222-4333-8444-555555555555", audiences=("api://x",),
                        store_url=f"sqlite:///{tmp_path / 'relay.db'}")
    child = asyncio.create_task(serve_child(theirs, settings, {}))
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    hello = json.loads(await asyncio.wait_for(read_frame(reader), 30))
    assert hello["pid"] == os.getpid() and hello["owner"], hello
    writer.write(STATE + METRICS)  # two questions at once: answered in order
    assert json.loads(await read_frame(reader)) == {"circuits": {"dry_run": "closed"}}
    assert b'relay_circuit_state{target="dry_run"} 0.0' in await read_frame(reader)
    writer.close()
    await asyncio.wait_for(child, 10)  # it stopped by itself: its parent's end closed


# -- `relay serve` as a process --------------------------------------------------------------------------

def config(path: Path, servicenow: TimedServiceNow, poll_seconds: float | None) -> Path:
    """poll_seconds None: the default delivery settings (a poll every second, the 30 s lease)."""
    delivery = f"delivery:\n  poll_seconds: {poll_seconds}\n" if poll_seconds is not None else ""
    path.write_text(f"""\
targets:
  servicenow:
    kind: servicenow
    base_url: {servicenow.url}
    auth:
      type: basic
      username: {servicenow.username}
      password_env: SN_PASSWORD
    timeout_seconds: {CALL_TIMEOUT_SECONDS}
routes:
  - target: servicenow
{delivery}""")
    return path


async def get(url: str) -> str:
    """Without blocking the loop: the ServiceNow fake answers on it."""
    async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return await resp.text()


async def delivery_process(relay: RelayProcess) -> dict:
    """/readyz's details on the delivery process: state, pid, restarts."""
    return json.loads(await get(f"{relay.url}/readyz"))["details"]["delivery_process"]


async def child_pid(relay: RelayProcess) -> int:
    details = await delivery_process(relay)
    assert details["pid"] and relay.proc is not None and details["pid"] != relay.proc.pid, f"no child: {details}"
    return details["pid"]


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def eventually(check, what: str, within: float):  # type: ignore[no-untyped-def]
    """`check()`'s first true value (awaited when it is a coroutine), polled for `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} within {within}s")


async def post(url: str, body: bytes, auth: str) -> int:
    async with aiohttp.ClientSession() as http, http.post(
            f"{url}/alerts", data=body, headers={"Authorization": auth, "Content-Type": "application/json"}) as resp:
        return resp.status


@pytest.fixture
async def servicenow():
    fake = TimedServiceNow()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def issuer():
    issuer = DevIssuer()
    with issuer.serving_in_thread():
        yield issuer


def start_relay(tmp_path: Path, issuer: DevIssuer, servicenow: TimedServiceNow, poll_seconds: float | None):
    relay_config = config(tmp_path / "relay.yaml", servicenow, poll_seconds)
    env = {**relay_env(issuer, f"sqlite:///{tmp_path / 'relay.db'}", relay_config, servicenow),
           "RELAY_LOG_LEVEL": "INFO"}
    return RelayProcess(env, tmp_path / "relay.log").start()


@pytest.fixture
def relay(tmp_path, issuer, servicenow):
    """`relay serve` whose worker polls every POLL_SECONDS: only a wake-up delivers promptly."""
    process = start_relay(tmp_path, issuer, servicenow, POLL_SECONDS)
    yield process
    process.stop()


@pytest.fixture
def relay_at_defaults(tmp_path, issuer, servicenow):
    process = start_relay(tmp_path, issuer, servicenow, None)
    yield process
    process.stop()


async def test_relay_serve_delivers_through_its_delivery_process_woken_by_the_accept(relay, issuer, servicenow):
    pid = await child_pid(relay)
    fired, _ = episode(1, "split")
    assert await post(relay.url, fired, issuer.authorization()) == 202
    await eventually(lambda: servicenow.incidents, "an incident (the child is woken by the accept, "
                     f"not by its {POLL_SECONDS} s poll)", 15)
    assert len(servicenow.incidents) == 1
    assert await child_pid(relay) == pid, "the delivery process was restarted"
    assert alive(pid)


async def test_the_delivery_processs_metrics_and_circuits_are_on_the_relays_metrics_port(relay, issuer, servicenow):
    fired, _ = episode(2, "split")
    assert await post(relay.url, fired, issuer.authorization()) == 202
    await eventually(lambda: servicenow.incidents, "an incident", 15)
    text = await get(relay.metrics_url)
    families = [f.name for f in text_string_to_metric_families(text)]  # raises on invalid exposition
    assert len(families) == len(set(families)), f"a family shown twice: {sorted(families)}"
    for name in ("relay_alert_requests", "relay_deliveries", "relay_target_call_seconds", "relay_circuit_state",
                 "relay_deliveries_in_flight", "relay_pending_deliveries"):
        assert name in families, f"{name} missing from /metrics: {sorted(families)}"
    assert 'relay_deliveries_total{outcome="create",target="servicenow"} 1.0' in text
    assert 'relay_circuit_state{target="servicenow"} 0.0' in text
    status_url = relay.metrics_url.removesuffix("/metrics") + "/status"
    page = await get(status_url)
    assert "No delivery worker is running" not in page, "the status page did not read the child's circuits"
    assert "<td>servicenow</td>" in page and "closed" in page, "the circuits section lacks the child's target"


async def test_a_killed_delivery_process_is_restarted_and_its_alert_delivered_without_waiting_for_the_lease(
        relay_at_defaults, issuer, servicenow, tmp_path):
    relay = relay_at_defaults
    servicenow.inject("slow", delay=SLOW_CREATE_SECONDS, method="POST", path="/table/incident", times=1)
    pid = await child_pid(relay)
    fired, _ = episode(3, "split")
    assert await post(relay.url, fired, issuer.authorization()) == 202
    await eventually(lambda: servicenow.calls_to("/table/incident", "POST"), "the create in flight at ServiceNow", 15)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    async def restarted() -> bool:
        return (await delivery_process(relay))["restarts"] == 1

    await eventually(restarted, "the delivery process restarted", 15)
    assert await child_pid(relay) != pid
    # The slow create lands at ServiceNow after the kill, unrecorded: the new child must find it, not open
    # a second one, and must not wait out the dead child's lease.
    def delivered() -> bool:
        return any(" adopted " in m or ": create " in m for m in relay_log.messages(tmp_path / "relay.log"))

    await eventually(delivered, "the alert delivered by the restarted child", DEFAULT_LEASE_SECONDS / 2)
    took = time.monotonic() - killed
    assert took < DEFAULT_LEASE_SECONDS / 2, f"delivered {took:.1f}s after the kill: it waited for the lease"
    await asyncio.sleep(1)
    assert len(servicenow.incidents) == 1, f"{len(servicenow.incidents)} incidents for one alert"
    log = (tmp_path / "relay.log").read_text()
    assert "died after" in log and "released 1 leases" in log, log[-2000:]


async def test_sigterm_stops_the_relay_and_its_delivery_process_cleanly(relay, tmp_path):
    pid = await child_pid(relay)
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(relay.proc.wait, 30)
    assert code == 0, f"relay serve exited with {code}"
    assert not alive(pid), "the delivery process outlived the relay"
    assert relay_log.tracebacks(tmp_path / "relay.log") == []
    assert "died after" not in (tmp_path / "relay.log").read_text(), "a stopping child was taken for a crash"


async def test_the_delivery_process_exits_when_the_relay_is_killed(relay):
    pid = await child_pid(relay)
    relay.kill()
    await eventually(lambda: not alive(pid), "the delivery process gone after its relay was SIGKILLed", 10)
