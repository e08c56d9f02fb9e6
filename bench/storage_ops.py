"""Azure Storage operations per event, counted on Azurite by the store's own request hook
(`AzureStorageStore.operations`): one Fired then its Resolved, step by step; a storm of distinct alerts
accepted at once and delivered in claim batches; a large body; an idle poll; and one expire pass.
Operations are what Azure bills and what its per-account and per-queue scalability targets count.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from relay.store.azure import INLINE_BODY_LIMIT, AzureStorageStore
from relay.store.base import Event, Retention, idempotency_key
from tests.azurite import Azurite, unique_names

STORM_ALERTS = 200
SENDERS = 32  # accepts at once, as in the storm
CLAIM_BATCH = 32
LEASE = 30.0
ALERT = "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.AlertsManagement/alerts/{}"


def _event(alert: str, condition: str = "Fired", at: str = "2026-01-01T00:00:00Z", body: bytes | None = None) -> Event:
    alert_id = ALERT.format(alert)
    body = body if body is not None else json.dumps({"alertId": alert_id, "monitorCondition": condition}).encode()
    return Event(idempotency_key(alert_id, condition, at), alert_id, condition, at, body)


def _named(diff: Counter[tuple[str, str]]) -> dict[str, int]:
    return {f"{service} {op}": n for (service, op), n in sorted(diff.items())}


class _Steps:
    def __init__(self, store: AzureStorageStore) -> None:
        self.store = store
        self.last = store.operations.snapshot()

    def take(self) -> Counter[tuple[str, str]]:
        now = self.store.operations.snapshot()
        diff, self.last = now - self.last, now
        return diff


async def _accept_all(store: AzureStorageStore, events: list[Event]) -> None:
    senders = asyncio.Semaphore(SENDERS)

    async def one(e: Event) -> None:
        async with senders:
            await store.accept(e)

    await asyncio.gather(*(one(e) for e in events))


async def _drain(store: AzureStorageStore) -> int:
    delivered = 0
    while claims := await store.claim(CLAIM_BATCH, LEASE):
        for c in claims:
            await store.complete(c)
        delivered += len(claims)
    return delivered


async def measure(connection_string: str) -> dict[str, Any]:
    store = AzureStorageStore(connection_string=connection_string, names=unique_names())
    await store.open()
    store._next_sweep = float("inf")  # the 5-minute sweep is a background cost, reported on its own
    try:
        steps = _Steps(store)
        single: dict[str, dict[str, int]] = {}
        fired, resolved = _event("single"), _event("single", "Resolved", "2026-01-01T00:05:00Z")
        await store.accept(fired)
        single["accept Fired"] = _named(steps.take())
        [c] = await store.claim(10, LEASE)
        single["claim"] = _named(steps.take())
        await store.renew(c, LEASE)
        single["renew (every 10 s while a delivery runs)"] = _named(steps.take())
        await store.complete(c)
        single["complete"] = _named(steps.take())
        await store.accept(resolved)
        single["accept Resolved"] = _named(steps.take())
        [c] = await store.claim(10, LEASE)
        await store.complete(c)
        single["claim + complete Resolved"] = _named(steps.take())
        await store.claim(10, LEASE)
        single["idle poll"] = _named(steps.take())

        big = _event("big", body=os.urandom(INLINE_BODY_LIMIT + 1))
        await store.accept(big)
        [c] = await store.claim(10, LEASE)
        await store.complete(c)
        big_total = sum(steps.take().values())

        storm = [_event(f"storm-{i}") for i in range(STORM_ALERTS)]
        await _accept_all(store, storm)
        storm_accept = sum(steps.take().values())
        assert await _drain(store) == STORM_ALERTS
        storm_deliver = sum(steps.take().values())
        storm_resolved = [_event(f"storm-{i}", "Resolved", "2026-01-01T00:05:00Z") for i in range(STORM_ALERTS)]
        await _accept_all(store, storm_resolved)
        resolved_accept = sum(steps.take().values())
        assert await _drain(store) == STORM_ALERTS
        resolved_deliver = sum(steps.take().values())

        retain = Retention(delivered_seconds=0, dead_letter_seconds=0, ticket_seconds=0)
        gone = await store.expire(time.time() + 1, retain)
        expire_ops = sum(steps.take().values())
        await store.sweep()
        sweep_ops = sum(steps.take().values())
    finally:
        await store.close()
    fired_total = sum(single["accept Fired"].values()) + sum(single["claim"].values()) + sum(
        single["complete"].values())
    resolved_total = sum(single["accept Resolved"].values()) + sum(single["claim + complete Resolved"].values())
    return {
        "single": single,
        "fired_total": fired_total,
        "resolved_total": resolved_total,
        "large_body_fired_total": big_total,
        "storm": {
            "alerts": STORM_ALERTS,
            "claim_batch": CLAIM_BATCH,
            "fired_accept_per_event": round(storm_accept / STORM_ALERTS, 2),
            "fired_delivery_per_event": round(storm_deliver / STORM_ALERTS, 2),
            "resolved_accept_per_event": round(resolved_accept / STORM_ALERTS, 2),
            "resolved_delivery_per_event": round(resolved_deliver / STORM_ALERTS, 2),
        },
        "expire": {"events_deleted": gone.events, "blobs_deleted": gone.blobs, "operations": expire_ops},
        "sweep_operations_empty_queue": sweep_ops,
    }


def run() -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-azurite-"))
    azurite = Azurite(workdir).start()
    try:
        return asyncio.run(measure(azurite.connection_string))
    finally:
        azurite.stop()


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
