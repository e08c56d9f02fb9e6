"""In-process fakes of vendor APIs, written from the vendors' documentation, failure modes included.

Each fake is an aiohttp server on 127.0.0.1 that records every call (`calls`) and can be told to
misbehave for the next matching calls (`inject`): an HTTP status (429 with Retry-After, 5xx), a
slow answer, a connection reset before or after the request is applied, or the HTML page a
hibernating instance answers with status 200.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

HIBERNATING_HTML = (
    "<html><head><title>Instance Hibernating page</title></head>"
    "<body><h1>Your instance is hibernating</h1><p>Log in to wake it up.</p></body></html>"
)


@dataclass(frozen=True)
class Call:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))


@dataclass
class Fault:
    """What to do to the next `times` calls whose path contains `path` (and whose method is `method`)."""

    kind: str  # "status", "slow", "reset", "reset_after", "html"
    times: int = 1
    path: str = ""
    method: str | None = None
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    body: Any = field(default=None)

    def matches(self, request: web.Request) -> bool:
        return self.path in request.path and (self.method is None or self.method == request.method)


class FakeServer:
    """Base of the vendor fakes: start/stop on a free loopback port, call recording, fault injection."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> str:
        app = web.Application(middlewares=[self._record_and_misbehave])
        self.routes(app)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- failure modes ---------------------------------------------------------------------------

    def inject(
        self, kind: str, *, times: int = 1, path: str = "", method: str | None = None, **kw: Any
    ) -> Fault:
        """Misbehave on the next `times` matching calls. Kinds:

        - "status": answer `status` (default 503) with an optional `retry_after` header value;
        - "slow": wait `delay` seconds, then answer normally;
        - "reset": drop the connection before the request is applied;
        - "reset_after": apply the request, then drop the connection instead of answering;
        - "html": answer 200 with a hibernating instance's HTML page.
        """
        fault = Fault(kind=kind, times=times, path=path, method=method, **kw)
        self.faults.append(fault)
        return fault

    def calls_to(self, path: str, method: str | None = None) -> list[Call]:
        return [c for c in self.calls if path in c.path and (method is None or c.method == method)]

    def error_body(self, status: int) -> Any:
        """The vendor's error body for an injected status (overridden per vendor)."""
        return {"error": f"injected {status}"}

    @web.middleware
    async def _record_and_misbehave(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        body = await request.read()
        self.calls.append(
            Call(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        fault = next((f for f in self.faults if f.times > 0 and f.matches(request)), None)
        if fault is None:
            return await handler(request)
        fault.times -= 1
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            return await handler(request)
        if fault.kind == "reset":
            return self._reset(request)
        if fault.kind == "reset_after":
            await handler(request)
            return self._reset(request)
        if fault.kind == "html":
            return web.Response(status=200, text=HIBERNATING_HTML, content_type="text/html")
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            payload = fault.body if fault.body is not None else self.error_body(fault.status)
            return web.json_response(payload, status=fault.status, headers=headers)
        raise AssertionError(f"unknown fault kind {fault.kind!r}")

    @staticmethod
    def _reset(request: web.Request) -> web.Response:
        transport = request.transport
        if transport is not None:
            transport.abort()
        return web.Response(status=500)
