"""The relay process as a whole: intake hands new events to the delivery worker at once."""

from __future__ import annotations

import asyncio
import json

from relay.app import create_app
from relay.settings import Settings
from tests.conftest import SAMPLES


async def test_accepted_alert_is_delivered_without_waiting_for_the_next_poll(aiohttp_client, issuer, tmp_path):
    out = tmp_path / "calls.jsonl"
    config = tmp_path / "relay.yaml"
    # An hour between polls: only intake's wake-up can get the event delivered within the test.
    config.write_text(
        "targets:\n  preview: {kind: dry_run, path: " + json.dumps(str(out)) + "}\n"
        "routes:\n  - target: preview\n"
        "delivery: {poll_seconds: 3600}\n"
    )
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'r.db'}",
                                  "RELAY_CONFIG": str(config)})
    client = await aiohttp_client(create_app(settings, deliver=True))
    await asyncio.sleep(0.5)  # let the worker's first (empty) look pass, so it is waiting on its poll
    resp = await client.post("/alerts", data=(SAMPLES / "testaction-metric-static-fired.json").read_bytes(),
                             headers={"Authorization": issuer.authorization(), "Content-Type": "application/json"})
    assert resp.status == 202
    for _ in range(100):
        if out.exists() and '"create"' in out.read_text():
            break
        await asyncio.sleep(0.1)
    assert out.exists() and '"create"' in out.read_text(), "the worker did not wake up for the new event"
