"""The fault scenarios every target's fault tests run, written once and given the target's fake:

- SIGKILL `relay serve` while senders post alerts and its worker delivers them, restart it on the same
  database, let it drain (ServiceNow: test_sigkill_delivery.py; Jira and PagerDuty: test_new_targets_faults.py);
- a target outage served to a relay in this process: every Fired then every Resolved posted, waited for
  until every alert is resolved and every hung call has landed (ServiceNow: test_target_outage.py; the
  others: test_new_targets_faults.py), then checked for once-only delivery and honoured Retry-After.

A fake here is one of tests/faults/servicenow_timeline.py or tests/faults/new_targets.py: it keeps a
`timeline` of answered calls, `calls_for(alert)`, `in_flight`, and the `faults` it was given.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from relay.intake import STORE_KEY
from relay.store import DeadLetter
from tests.e2e.cluster import ACKNOWLEDGED, wait_until
from tests.relay_process import RelayProcess

SENDERS = 16
# The fake stamps with time.monotonic(), the store schedules retries with time.time(): allow for the two
# clocks' difference over a second, nothing more.
CLOCKS_SLACK = 0.005


async def post_stream(relay: RelayProcess, auth: str, episodes: list[tuple[bytes, bytes | None]],
                      kill_after: int) -> tuple[dict[tuple[int, str], int], float]:
    """Each of SENDERS senders takes an alert, posts its Fired and, once acknowledged, its Resolved. SIGKILL
    after `kill_after` acknowledgements; what is posted after that fails. Returns ({(i, condition): status},
    when the relay was killed)."""
    results: dict[tuple[int, str], int] = {}
    killed_at = float("inf")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(episodes)):
        queue.put_nowait(i)
    acked = 0
    headers = {"Authorization": auth, "Content-Type": "application/json"}

    async def post(http: aiohttp.ClientSession, i: int, condition: str, body: bytes) -> bool:
        nonlocal acked, killed_at
        try:
            async with http.post(f"{relay.url}/alerts", data=body, headers=headers) as resp:
                results[i, condition] = resp.status
        except (TimeoutError, aiohttp.ClientError):
            results[i, condition] = 0  # the connection died with the relay: not acknowledged
        if results[i, condition] in ACKNOWLEDGED:
            acked += 1
            if acked == kill_after:
                relay.kill()
                killed_at = time.monotonic()
            return True
        return False

    async def sender(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            fired, resolved = episodes[i]
            if await post(http, i, "Fired", fired) and resolved is not None:
                await post(http, i, "Resolved", resolved)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await asyncio.gather(*(sender(http) for _ in range(SENDERS)))
    return results, killed_at


async def pending_deliveries(http: aiohttp.ClientSession, relay: RelayProcess) -> int:
    async with http.get(relay.metrics_url) as resp:
        text = await resp.text()
    return int(float(re.search(r"^relay_pending_deliveries (\S+)$", text, re.MULTILINE).group(1)))


@dataclass(frozen=True)
class Restarted:
    """What a SIGKILL mid-stream and the restart gave."""

    results: dict[tuple[int, str], int]  # {(alert index, condition): HTTP status, 0 for a dropped connection}
    killed_at: float  # time.monotonic() of the kill
    recovered_in: float  # seconds from the restart until every acknowledged alert was delivered

    @property
    def acked(self) -> set[tuple[int, str]]:
        return {k for k, status in self.results.items() if status in ACKNOWLEDGED}

    @property
    def fired(self) -> set[int]:
        return {i for i, condition in self.acked if condition == "Fired"}

    @property
    def resolved(self) -> set[int]:
        return {i for i, condition in self.acked if condition == "Resolved"}


async def sigkill_mid_stream_and_restart(env: dict[str, str], log_path: Any, episodes: list[tuple[bytes, bytes | None]],
                                         auth: str, *, kill_after: int, delivered: Callable[[set[int]], bool],
                                         opened: Callable[[], str]) -> Restarted:
    """Start `relay serve` with `env`, post `episodes` with SIGKILL after `kill_after` acknowledgements,
    restart it on the same port and database, and wait until `delivered(acknowledged Fired indices)` and
    nothing is pending. `opened()` says what the target holds, for the message if it never drains."""
    relay = RelayProcess(env, log_path)
    try:
        await asyncio.to_thread(relay.start)
        results, killed_at = await post_stream(relay, auth, episodes, kill_after)
        relay.kill()
        relay = RelayProcess(env, log_path, port=relay.port)
        restarted_at = time.monotonic()
        await asyncio.to_thread(relay.start)
        fired = Restarted(results, killed_at, 0.0).fired
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def drained() -> bool:
                return delivered(fired) and await pending_deliveries(http, relay) == 0

            async def progress() -> str:
                return (f"{opened()} for {len(fired)} acknowledged alerts; "
                        f"{await pending_deliveries(http, relay)} deliveries pending")

            await wait_until("drained after the restart", drained, 120, progress)
            recovered_in = time.monotonic() - restarted_at
        relay.stop()
    finally:
        relay.kill()  # a no-op once stopped
    return Restarted(results, killed_at, recovered_in)


async def serve_outage(app: web.Application, aiohttp_server: Any, auth: str, episodes: list[tuple[bytes, bytes]],
                       fake: Any, *, target: str, all_resolved: Callable[[], bool], progress: Callable[[], str],
                       hang_seconds: float, before_posting: Callable[[], Awaitable[None]] | None = None,
                       ) -> list[DeadLetter]:
    """Serve `app` (a relay with its worker), post every Fired then every Resolved (both wait in the store,
    so the order is the worker's to keep), wait until `all_resolved()` with nothing pending and every hung
    call to `fake` has landed; returns the dead letters."""
    server = await aiohttp_server(app)
    store = app[STORE_KEY]
    if before_posting is not None:
        await before_posting()
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for n in (0, 1):
            for pair in episodes:
                async with http.post(server.make_url("/alerts"), data=pair[n], headers=headers) as resp:
                    assert resp.status in ACKNOWLEDGED, await resp.text()

    async def resolved() -> bool:
        return all_resolved() and await store.pending() == 0

    async def state() -> str:
        left = sum(f.times for f in fake.faults)
        return f"{progress()}; {await store.pending()} pending; {left} faults not yet served"

    await wait_until(f"every alert resolved in {target} after the outage", resolved, 90, state)

    async def nothing_in_flight() -> bool:
        return fake.in_flight == 0

    # A hung call still lands after the relay gave up on it: wait for those, then look for duplicates.
    await wait_until("every hung call landed", nothing_in_flight, hang_seconds + 5)
    return await store.dead_letters()


def assert_served_once(fake: Any, dead: list[DeadLetter], incidents: Mapping[str, Sequence[str]],
                       keys: Sequence[str]) -> None:
    """The whole outage was served, and yet: no dead letter, one incident per alert (`incidents`: the
    target's incidents by correlation key) and no step applied twice."""
    assert all(f.times == 0 for f in fake.faults), "the whole outage must have been served"
    assert dead == [], f"dead letters: {[d.error for d in dead]}"
    doubled = {k: list(v) for k, v in incidents.items() if len(v) > 1}
    assert not doubled, f"the outage made the relay open an incident twice: {doubled}"
    twice = fake.steps_twice()
    assert not twice, f"the outage made the relay apply a step twice: {twice}"
    assert sorted(incidents) == sorted(keys)


def retry_after_violations(fake: Any, *, every_call_names_its_alert: bool) -> tuple[int, list[str], float]:
    """(answers carrying Retry-After that were followed by another call for the same alert, the calls that
    came too early, the shortest pause seen after such an answer). A target whose start-up probes name no
    alert passes every_call_names_its_alert=False: their answers are not followed."""
    checked, early, shortest = 0, [], float("inf")
    for answer in fake.timeline:
        if answer.status not in (429, 503) or answer.retry_after is None:
            continue
        if answer.correlation_id is None:
            assert not every_call_names_its_alert, f"cannot tell which alert {answer.method} {answer.path} was for"
            continue
        later = [c for c in fake.calls_for(answer.correlation_id) if c.started > answer.ended]
        if not later:
            continue
        checked += 1
        pause = later[0].started - answer.ended
        shortest = min(shortest, pause)
        if pause < float(answer.retry_after) - CLOCKS_SLACK:
            early.append(f"{answer.correlation_id}: {later[0].method} {later[0].path} {pause:.3f}s after an "
                         f"HTTP {answer.status} with Retry-After: {answer.retry_after}")
    return checked, early, shortest


def assert_applied_once_after_restart(run: Restarted, keys: Sequence[str], incidents: Mapping[str, Sequence[str]],
                                      resolved: Callable[[str], bool], dead: list[DeadLetter], fake: Any, *,
                                      target: str, kill_after: int) -> None:
    """After `sigkill_mid_stream_and_restart`: the kill landed mid-stream, and every acknowledged Fired has
    one incident (`incidents`: the target's by correlation key), every acknowledged Resolved was applied
    (`resolved(key)`), nothing dead-lettered and no step applied twice."""
    acked, posted = len(run.acked), len(run.results)
    assert kill_after <= acked < posted, f"the kill must land mid-stream ({acked} of {posted} acknowledged)"
    doubled = {k: list(v) for k, v in incidents.items() if len(v) > 1}
    assert not doubled, f"one firing episode opened several incidents: {doubled}"
    lost = sorted(keys[i] for i in run.fired if keys[i] not in incidents)
    assert not lost, f"{len(lost)} acknowledged alerts never reached {target}: {lost[:5]}"
    unresolved = sorted(keys[i] for i in run.resolved if not resolved(keys[i]))
    assert not unresolved, f"{len(unresolved)} acknowledged resolves were not applied: {unresolved[:5]}"
    assert dead == [], f"dead letters: {[d.error for d in dead]}"
    twice = fake.steps_twice()
    assert not twice, f"a step was applied twice to one incident: {twice}"
