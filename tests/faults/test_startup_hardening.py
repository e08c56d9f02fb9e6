"""Issue 12, Info: start-up does not wait on a hanging metadata endpoint (it serves, reports not ready
and keeps trying), and the SQLite store and the dry-run output are created 0600."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest
from aiohttp import web

from devtools.dev_issuer import DevIssuer
from relay.intake.signing_keys import FIRST_LOAD_WAIT_SECONDS, SigningKeys
from relay.store.base import Event
from relay.store.sqlite import SqliteStore
from relay.targets import Incident
from relay.targets.dry_run import DryRunTarget
from tests.conftest import SAMPLES

CASES: dict[str, int] = {}


class HangingIssuer:
    """Metadata that never answers until `release` is set; then the dev issuer's documents."""

    def __init__(self, issuer: DevIssuer) -> None:
        self.issuer = issuer
        self.release = asyncio.Event()
        self.base = ""

    def app(self) -> web.Application:
        app = web.Application()

        async def meta(request: web.Request) -> web.Response:
            await self.release.wait()
            return web.json_response({**self.issuer.metadata(), "issuer": f"{self.base}/{self.issuer.tenant_id}/v2.0",
                                      "jwks_uri": f"{self.base}/keys"})

        async def keys(request: web.Request) -> web.Response:
            return web.json_response(self.issuer.jwks())

        app.router.add_get("/meta", meta)
        app.router.add_get("/keys", keys)
        return app


@pytest.mark.parametrize("wait", [0.2, None], ids=["shortened wait", "default wait"])
async def test_start_returns_despite_a_hanging_metadata_endpoint_and_loads_later(aiohttp_server, wait):
    hanging = HangingIssuer(DevIssuer())
    server = await aiohttp_server(hanging.app())
    hanging.base = str(server.make_url("")).rstrip("/")
    keys = SigningKeys(f"{hanging.base}/meta", hanging.issuer.tenant_id)
    try:
        await (keys.start() if wait is None else keys.start(first_load_wait=wait))
        assert not keys.loaded, "start() should not have waited for the hanging endpoint to answer"
        hanging.release.set()
        for _ in range(1500):  # up to 30 s: a guard against a hang, not a speed target
            if keys.loaded:
                break
            await asyncio.sleep(0.02)
    finally:
        await keys.stop()
    assert keys.loaded, "the first load must go on in the background"
    group = "start not blocked by a hanging key endpoint"
    CASES[group] = CASES.get(group, 0) + 1


def test_the_default_first_load_wait_is_short():
    assert FIRST_LOAD_WAIT_SECONDS <= 2


def mode(path: os.PathLike | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_sqlite_store_files_are_created_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        store = SqliteStore(tmp_path / "relay.db")
        await store.open()
        body = (SAMPLES / "testaction-metric-static-fired.json").read_bytes()
        from relay.alerts import parse_alert_json

        await store.accept(Event.from_alert(parse_alert_json(body), body))
        files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("relay.db"))
        modes = {p.name: oct(mode(p)) for p in files}
        await store.close()
    finally:
        os.umask(old)
    assert "relay.db" in modes and all(m == "0o600" for m in modes.values()), f"store files readable by others: {modes}"
    CASES["store files 0600"] = len(modes)


async def test_dry_run_output_is_created_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        target = DryRunTarget("dry", path=str(tmp_path / "out.jsonl"))
        await target.create(Incident(correlation_key="k", summary="s", description="d", severity="Sev1"))
        await target.close()
    finally:
        os.umask(old)
    assert mode(tmp_path / "out.jsonl") == 0o600
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["call"] == "create"
    CASES["dry-run output 0600"] = 1


def test_report_startup_counts(fault_report):
    assert CASES, "run with the tests above"
    fault_report("start-up and files", "; ".join(f"{n} {group}" for group, n in sorted(CASES.items())))
