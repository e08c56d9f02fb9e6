"""The Request Tracker start-up check against a real RT 5: what it reports for a working setup, a wrong
token, a custom field RT does not have, a field not applied to the queue, and a missing queue; and that
it changes nothing in RT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.delivery.target_check import check_target
from relay.targets import Finding, request_tracker
from tests.rt_server import RunningRT

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def make_target(rt: RunningRT, token: str | None = None, **options: Any) -> request_tracker.RequestTrackerTarget:
    cfg = {
        "kind": "request_tracker",
        "base_url": rt.url,
        "auth": {"type": "token", "token_env": "RT_TOKEN"},
        "queue": rt.queue,
        "custom_field": rt.custom_field,
        "asset_catalog": rt.catalog,
        "timeout_seconds": 30,
        **options,
    }
    return request_tracker.from_config("rt-check", cfg, env={"RT_TOKEN": token or rt.token})


async def findings_of(target: request_tracker.RequestTrackerTarget) -> dict[str, Finding]:
    try:
        found = await target.check()
    finally:
        await target.close()
    return {f.check: f for f in found}


def statuses(found: dict[str, Finding]) -> dict[str, str]:
    return {name: f.status for name, f in found.items()}


async def test_a_working_setup_passes_every_probe(rt_server):
    found = await findings_of(make_target(rt_server))
    q, cf, cat = rt_server.queue, rt_server.custom_field, rt_server.catalog
    assert statuses(found) == {
        "credentials": "ok",
        f"queue {q!r}": "ok",
        f"custom field {cf!r}": "ok",
        f"custom field {cf!r} applied to queue {q!r}": "ok",
        f"asset catalog {cat!r}": "ok",
    }
    assert "RT 5" in found["credentials"].detail, found["credentials"]


async def test_a_wrong_token_fails_credentials_and_names_what_it_could_not_check(rt_server):
    found = await findings_of(make_target(rt_server, token="1-14-00000000000000000000000000000000"))
    assert found["credentials"].status == "failed"
    assert "401" in found["credentials"].detail and "credentials" in found["credentials"].detail
    rest = {name: f for name, f in found.items() if name != "credentials"}
    assert rest and all(f.status == "unchecked" for f in rest.values()), rest
    assert all("credentials were refused" in f.detail for f in rest.values())


async def test_a_custom_field_rt_does_not_have_is_reported_missing(rt_server):
    found = await findings_of(make_target(rt_server, custom_field="NoSuchAlertField"))
    field = found["custom field 'NoSuchAlertField'"]
    assert field.status == "failed" and "no ticket custom field" in field.detail
    applied = found[f"custom field 'NoSuchAlertField' applied to queue {rt_server.queue!r}"]
    assert applied.status == "unchecked" and "custom field is missing" in applied.detail
    assert found["credentials"].status == "ok" and found[f"queue {rt_server.queue!r}"].status == "ok"


async def test_a_field_not_applied_to_the_queue_is_reported(rt_server):
    # RT's own "General" queue exists, and the seeded field is applied only to the alerts queue.
    found = await findings_of(make_target(rt_server, queue="General"))
    assert found["queue 'General'"].status == "ok"
    assert found[f"custom field {rt_server.custom_field!r}"].status == "ok"
    applied = found[f"custom field {rt_server.custom_field!r} applied to queue 'General'"]
    assert applied.status == "failed" and "not applied" in applied.detail and "duplicate" in applied.detail


async def test_a_missing_queue_and_catalog_are_reported(rt_server):
    found = await findings_of(make_target(rt_server, queue="No Such Queue", asset_catalog="No Such Catalog"))
    assert found["queue 'No Such Queue'"].status == "failed"
    assert found["asset catalog 'No Such Catalog'"].status == "failed"
    assert "unchecked" == found[f"custom field {rt_server.custom_field!r} applied to queue 'No Such Queue'"].status


async def test_ci_binding_none_skips_the_catalog(rt_server):
    found = await findings_of(make_target(rt_server, ci_binding="none", asset_catalog="No Such Catalog"))
    assert not any(name.startswith("asset catalog") for name in found)
    assert all(f.status == "ok" for f in found.values())


async def test_the_check_changes_nothing_in_rt(rt_server):
    """Only reads: RT's ticket and asset counts and the queue's custom fields are as before."""
    import aiohttp

    headers = {"Authorization": f"token {rt_server.token}"}

    async def counts(session: aiohttp.ClientSession) -> tuple[int, int]:
        out = []
        for path, query in (("/tickets", "id > 0"), ("/assets", "id > 0")):
            async with session.post(f"{rt_server.url}/REST/2.0{path}", data={"query": query}, headers=headers) as r:
                out.append((await r.json())["total"])
        return out[0], out[1]

    async with aiohttp.ClientSession() as session:
        before = await counts(session)
        for options in ({}, {"queue": "General"}, {"custom_field": "Nope"}):
            await findings_of(make_target(rt_server, **options))
        assert await counts(session) == before


async def test_check_target_wraps_an_unreachable_rt_as_one_failed_finding(rt_server):
    target = make_target(rt_server, base_url="http://127.0.0.1:9")  # the discard port: refused
    try:
        check = await check_target("rt-check", target, now=0.0)
    finally:
        await target.close()
    assert check.status == "failed"
    assert [f.check for f in check.findings] == ["reachable"] and "failed" in check.findings[0].detail


async def test_check_targets_command_against_rt_reports_a_wrong_token_and_a_missing_field(rt_server, tmp_path):
    import asyncio
    import json
    import os
    import sys
    config = tmp_path / "relay.yaml"
    config.write_text(
        "targets:\n"
        f"  rt: {{kind: request_tracker, base_url: {json.dumps(rt_server.url)},\n"
        f"       queue: {json.dumps(rt_server.queue)},\n"
        f"       custom_field: {rt_server.custom_field}, ci_binding: none,\n"
        "       auth: {type: token, token_env: RT_CHECK_TOKEN}}\n"
        f"  rt-general: {{kind: request_tracker, base_url: {json.dumps(rt_server.url)}, queue: General,\n"
        "       custom_field: NoSuchAlertField, ci_binding: none, auth: {type: token, token_env: RT_CHECK_TOKEN}}\n"
        "routes:\n  - target: rt\n  - target: rt-general\n"
    )

    async def run(token: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "check-targets", str(config), cwd=REPO,
            env={**os.environ, "RT_CHECK_TOKEN": token}, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
        return proc.returncode or 0, out.decode()

    code, out = await run(rt_server.token)
    assert code == 1, out
    assert "rt (request_tracker): OK" in out and "rt-general (request_tracker): FAILED" in out
    assert "failed    custom field 'NoSuchAlertField'" in out and "failed: rt-general" in out
    code, out = await run("1-14-00000000000000000000000000000000")
    assert code == 1 and out.count("failed    credentials") == 2, out
    assert rt_server.token not in out
