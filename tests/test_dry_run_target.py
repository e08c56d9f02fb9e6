"""The dry-run target (what the relay does without RELAY_CONFIG): each call it would make, one JSON line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from relay.app import create_app
from relay.settings import Settings
from relay.targets import Incident, Ticket, build_target
from relay.targets.dry_run import DryRunTarget, from_config
from relay.targets.target_config import TargetConfigError
from tests.conftest import SAMPLES, scrape

INCIDENT = Incident(correlation_key="abc-123", summary="[Sev1] cpu on vm-1", description="details",
                    severity="Sev1", fields={"impact": "1"}, configuration_items=("vm-1",), fired_at="t0")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_calls_are_written_as_json_lines_to_the_path(tmp_path):
    out = tmp_path / "dry.jsonl"
    target = from_config("dry", {"kind": "dry_run", "path": str(out)})
    assert await target.find(INCIDENT) is None
    ticket = await target.create(INCIDENT)
    await target.note(ticket, INCIDENT, "fired again")
    await target.resolve(ticket, INCIDENT, "resolved at t1")
    await target.close()
    records = lines(out)
    assert [r["call"] for r in records] == ["find", "create", "note", "resolve"]
    create = records[1]
    assert create["target"] == "dry" and create["correlation_key"] == "abc-123"
    assert create["incident"]["summary"] == "[Sev1] cpu on vm-1"
    assert create["incident"]["fields"] == {"impact": "1"}
    assert create["incident"]["configuration_items"] == ["vm-1"]
    assert records[3]["text"] == "resolved at t1" and records[3]["ticket"]["id"] == ticket.id


async def test_find_answers_like_a_real_target_after_create(tmp_path):
    target = from_config("dry", {"kind": "dry_run", "path": str(tmp_path / "x.jsonl")})
    ticket = await target.create(INCIDENT)
    assert await target.find(INCIDENT) == ticket
    await target.resolve(ticket, INCIDENT, "done")
    found = await target.find(INCIDENT)
    assert found is not None and found.resolved
    await target.close()


async def test_without_a_path_lines_go_to_stdout(capsys):
    target = from_config("dry", {"kind": "dry_run"})
    await target.note(Ticket("dry-1"), INCIDENT, "hello")
    await target.close()
    record = json.loads(capsys.readouterr().out)
    assert record == {"target": "dry", "call": "note", "correlation_key": "abc-123",
                      "ticket": {"id": "dry-1", "number": None}, "text": "hello"}


def test_options_it_does_not_take_are_refused():
    with pytest.raises(TargetConfigError, match="target 'dry': base_url is not a known option"):
        from_config("dry", {"kind": "dry_run", "base_url": "https://x"})


def test_registry_builds_it():
    assert isinstance(build_target("d", {"kind": "dry_run"}, env={}), DryRunTarget)


async def test_relay_without_config_delivers_accepted_alerts_to_a_dry_run(tmp_path, issuer, aiohttp_client, capsys):
    """End to end in one process: POST /alerts with a token, the worker writes what it would send."""
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}"})
    client = await aiohttp_client(create_app(settings, deliver=True))
    auth = issuer.authorization()
    for name in ("testaction-metric-static-fired.json",):
        body = (SAMPLES / name).read_bytes()
        resp = await client.post("/alerts", data=body, headers={"Authorization": auth,
                                                                 "Content-Type": "application/json"})
        assert resp.status == 202
    records: list[dict] = []
    for _ in range(2000):
        records += [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
        if any(r["call"] == "create" for r in records):
            break
        await asyncio.sleep(0.005)
    create = next(r for r in records if r["call"] == "create")
    assert create["target"] == "dry_run"
    assert create["correlation_key"] == "eeeeeeee-4444-5555-6666-ffffffffffff"
    assert create["incident"]["summary"] == "[Sev4] test-metricAlertRule on test-storageAccount"
    # The worker counts the outcome once it is recorded in the store, just after the create is written.
    counted = 'relay_deliveries_total{outcome="create",target="dry_run"} 1.0'
    for _ in range(2000):
        metrics = await scrape(client)
        if counted in metrics:
            break
        await asyncio.sleep(0.005)
    assert counted in metrics


async def test_relay_with_a_config_file_writes_to_the_configured_path(tmp_path, issuer, aiohttp_client):
    out = tmp_path / "requests.jsonl"
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(f"targets:\n  preview:\n    kind: dry_run\n    path: {out}\nroutes:\n  - target: preview\n")
    env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}", "RELAY_CONFIG": str(cfg)}
    client = await aiohttp_client(create_app(Settings.from_env(env), deliver=True))
    body = (SAMPLES / "testaction-metric-static-fired.json").read_bytes()
    resp = await client.post("/alerts", data=body, headers={"Authorization": issuer.authorization(),
                                                             "Content-Type": "application/json"})
    assert resp.status == 202
    for _ in range(2000):
        if out.exists() and "create" in out.read_text():
            break
        await asyncio.sleep(0.005)
    assert [r["call"] for r in lines(out)] == ["find", "create"]
