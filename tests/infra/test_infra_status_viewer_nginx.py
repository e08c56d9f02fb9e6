"""The status viewer's nginx server block, run for real (Debian's nginx) in front of a stand-in for the
relay's admin port on loopback: it forwards the status page and nothing else, only reads, and never
passes the operator's sign-in cookie or tokens on. (Skipped, or failed under REQUIRE_E2E=1, without nginx.)"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from infra.status_viewer import STATUS_PATH, nginx_config
from tests.conftest import skip_or_fail
from tests.rt_server import free_port

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


class AdminPort:
    """What the relay's admin port serves: /status (and below it) and /metrics; it records every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, dict(request.headers)))
        if request.path == "/metrics":
            return web.Response(text="relay_auth_failures_total 3\n")
        if request.path == STATUS_PATH or request.path.startswith(STATUS_PATH + "/"):
            return web.Response(text=f"status page {request.path}", content_type="text/html")
        return web.Response(status=404, text="relay: not found")


@pytest.fixture
async def admin() -> AsyncIterator[tuple[AdminPort, int]]:
    port = AdminPort()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", port.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    number = free_port()
    await web.TCPSite(runner, "127.0.0.1", number).start()
    yield port, number
    await runner.cleanup()


@pytest.fixture
def viewer(admin: tuple[AdminPort, int], tmp_path: Path) -> Iterator[str]:
    if NGINX is None:
        skip_or_fail("nginx is not installed (Debian: apt-get install nginx-light); .ci/run installs it")
    _, upstream_port = admin
    listen = free_port()
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "default.conf").write_text(nginx_config("127.0.0.1", upstream_port,
                                                                   listen=f"127.0.0.1:{listen}"))
    # The official image's nginx.conf in miniature: an http block that includes conf.d/*.conf.
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log warn;\n"
        "events {}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/body;\n  proxy_temp_path {tmp_path}/proxy;\n"
        f"  include {tmp_path}/conf.d/*.conf;\n}}\n"
    )
    check = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, f"nginx refuses the rendered config:\n{check.stderr}"
    process = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{listen}"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def get(base: str, path: str, method: str = "GET", **kw: Any) -> tuple[int, str, Any]:
    for _ in range(100):  # nginx takes a moment to bind
        try:
            async with aiohttp.ClientSession() as session, session.request(
                method, base + path, allow_redirects=False, **kw
            ) as resp:
                return resp.status, await resp.text(), resp.headers
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nginx did not listen at {base}")


async def test_the_status_page_and_its_subpaths_are_forwarded(viewer, admin):
    port, _ = admin
    status, body, _ = await get(viewer, STATUS_PATH)
    assert (status, body) == (200, f"status page {STATUS_PATH}")
    status, body, _ = await get(viewer, f"{STATUS_PATH}/alerts/abc?x=1")
    assert (status, body) == (200, f"status page {STATUS_PATH}/alerts/abc")
    status, _, headers = await get(viewer, "/")
    assert status == 302 and headers["Location"].endswith(STATUS_PATH)
    assert {path for _, path, _ in port.seen} == {STATUS_PATH, f"{STATUS_PATH}/alerts/abc"}


@pytest.mark.parametrize("path", ["/metrics", "/alerts", "/statusx", "/status/../metrics", "/%2e%2e/metrics",
                                  "/healthz", "/readyz"])
async def test_nothing_but_the_status_page_reaches_the_admin_port(viewer, admin, path):
    port, _ = admin
    status, body, _ = await get(viewer, path)
    assert status == 404 and "relay_auth_failures_total" not in body
    assert all(p != "/metrics" for _, p, _ in port.seen), f"{path} reached /metrics"
    assert all(p.startswith(STATUS_PATH) for _, p, _ in port.seen), port.seen


async def test_only_reads_are_forwarded(viewer, admin):
    port, _ = admin
    for method in ("POST", "PUT", "DELETE"):
        status, _, _ = await get(viewer, STATUS_PATH, method=method, data=b"x")
        assert status == 403, method
    assert port.seen == []


async def test_the_sign_in_cookie_and_tokens_are_not_passed_on(viewer, admin):
    port, _ = admin
    headers = {"Cookie": "AppServiceAuthSession=secret-session", "Authorization": "Bearer secret-token",
               "X-MS-TOKEN-AAD-ID-TOKEN": "secret-id-token", "X-MS-TOKEN-AAD-ACCESS-TOKEN": "secret-access"}
    status, _, _ = await get(viewer, STATUS_PATH, headers=headers)
    assert status == 200
    (_, _, forwarded), = port.seen
    assert not any("secret" in value for value in forwarded.values()), forwarded
