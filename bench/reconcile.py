"""How long one reconciliation pass over 10,000 listed alerts takes: the real Alerts Management SDK over
HTTPS (test CA) against the fake (tests/fakes/alerts_management.py) on loopback, 250 alerts a page
(40 pages through nextLink), into a real SQLite store. Three passes: the first stores every event (all
missed: 10,000 Fired, half of them also Resolved), the second finds every key already held (the steady
state), the third after a quarter more alerts fired. Reports seconds per pass and alerts per second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from relay.delivery.routing import ReconcileSettings
from relay.reconcile import Reconciler, azure_client_factory
from relay.store.sqlite import SqliteStore
from tests.fakes.alerts_management import FakeAlertsManagement
from tests.test_alerts_management_fake import StaticCredential

ALERTS = 10_000
SUB = "11111111-2222-3333-4444-555555555555"
RULE = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Insights/metricAlerts/rule-{{}}"
RULES = [RULE.format(i) for i in range(20)]


async def measure(workdir: Path) -> dict[str, Any]:
    fake = FakeAlertsManagement()
    await fake.start()
    store = SqliteStore(workdir / "relay.db")
    await store.open()
    now = dt.datetime.now(dt.UTC)
    try:
        for i in range(ALERTS):
            alert = fake.add_alert(SUB, RULES[i % len(RULES)], now - dt.timedelta(seconds=8 * 3600 * i / ALERTS + 60))
            if i % 2 == 0:
                fake.resolve(alert["id"], now - dt.timedelta(seconds=30))
        settings = ReconcileSettings(subscriptions=(SUB,), rule_ids=tuple(r.lower() for r in RULES))
        clients = azure_client_factory(StaticCredential(), base_url=fake.url, connection_verify=fake.ca_path)
        reconciler = Reconciler(store, settings, clients)
        passes = {}
        for label in ("all_missed", "all_held"):
            started = time.perf_counter()
            result = await reconciler.run_once()
            passes[label] = {"seconds": round(time.perf_counter() - started, 3), **result.as_dict()}
        for i in range(ALERTS // 4):
            fake.add_alert(SUB, RULES[i % len(RULES)], now - dt.timedelta(seconds=30))
        started = time.perf_counter()
        result = await reconciler.run_once()
        passes["quarter_new"] = {"seconds": round(time.perf_counter() - started, 3), **result.as_dict()}
        await reconciler.close()
        pages = len(fake.calls_to("/alerts", "GET"))
    finally:
        await store.close()
        await fake.stop()
    return {
        "listed_alerts": ALERTS,
        "page_size": 250,
        "list_calls": pages,
        "passes": passes,
        "alerts_per_second_all_held": round(ALERTS / passes["all_held"]["seconds"]),
        "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
    }


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp:
        return asyncio.run(measure(Path(tmp)))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
