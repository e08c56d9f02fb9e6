"""A webhook receiver that records what arrives: the stand-in for a vendor's own Azure Monitor endpoint
(ServiceNow's Event Management connector, a BMC Helix Integration Studio flow) behind the forward target.

Like those endpoints it answers 200 with a small JSON body; the shared fault injection of `FakeServer`
(429 with Retry-After, 5xx, slow answers, resets, a hibernating instance's HTML) applies to it too.
"""

from __future__ import annotations

from aiohttp import web

from tests.fakes import FakeServer


class RecordingReceiver(FakeServer):
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self._accept)

    async def _accept(self, request: web.Request) -> web.Response:
        return web.json_response({"result": {"status": "received"}})

    def bodies(self) -> list[bytes]:
        return [c.body for c in self.calls if c.method == "POST"]
