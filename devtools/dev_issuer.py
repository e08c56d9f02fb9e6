"""A development token issuer for `make demo` and the tests; never part of the relay's serving code.

It plays Entra ID on loopback: an RSA test key, OpenID metadata and a JWKS served over HTTP, and
tokens shaped like the ones Azure Monitor's action groups send (v1 or v2), with any claim or header
overridable so tests can forge every kind of bad token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

DEV_TENANT_ID = "11111111-2222-4333-8444-555555555555"
DEV_CLIENT_ID = "66666666-7777-4888-9999-000000000000"
DEV_APP_ID_URI = f"api://{DEV_CLIENT_ID}"
AZURE_MONITOR_APP_ID = "461e8683-5575-4561-ac7f-899cc907d62a"
AZNS_SP_OBJECT_ID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
ROLE = "ActionGroupsSecureWebhook"
TOKEN_PATH = "/token"  # the dev issuer's own token endpoint (POST, ?version=1.0|2.0), for relay-dev


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class DevIssuer:
    def __init__(self, tenant_id: str = DEV_TENANT_ID, client_id: str = DEV_CLIENT_ID, kid: str = "dev-key-1") -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.kid = kid
        self.key = new_rsa_key()
        self.extra_keys: dict[str, rsa.RSAPrivateKey] = {}
        self.base_url = ""
        self.metadata_requests = 0
        self.jwks_requests = 0
        self.fail_requests = False  # simulate an Entra outage
        self._runner: web.AppRunner | None = None

    # -- documents -------------------------------------------------------------------------------

    @property
    def metadata_url(self) -> str:
        return f"{self.base_url}/{self.tenant_id}/v2.0/.well-known/openid-configuration"

    @property
    def v1_issuer(self) -> str:
        return f"https://sts.windows.net/{self.tenant_id}/"

    @property
    def v2_issuer(self) -> str:
        # While serving, the issuer is on its own host, as the relay requires of the metadata's issuer.
        return f"{self.base_url or 'https://login.microsoftonline.com'}/{self.tenant_id}/v2.0"

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in {self.kid: self.key, **self.extra_keys}.items():
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            jwk.update({"kid": kid, "use": "sig", "x5t": kid})
            keys.append(jwk)
        return {"keys": keys}

    def metadata(self) -> dict[str, Any]:
        # Entra's tenant-specific v2 metadata names the issuer with the tenant already substituted.
        return {
            "issuer": self.v2_issuer,
            "jwks_uri": f"{self.base_url}/{self.tenant_id}/discovery/v2.0/keys",
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def rotate(self, kid: str) -> None:
        """Add a second signing key, as Entra does during a rollover."""
        self.extra_keys[kid] = new_rsa_key()

    # -- tokens ----------------------------------------------------------------------------------

    def claims(self, version: str = "2.0", lifetime: int = 3600, now: float | None = None) -> dict[str, Any]:
        now = int(now if now is not None else time.time())
        common = {
            "tid": self.tenant_id,
            "oid": AZNS_SP_OBJECT_ID,
            "sub": AZNS_SP_OBJECT_ID,
            "roles": [ROLE],
            "iat": now - 5,
            "nbf": now - 5,
            "exp": now + lifetime,
            "ver": version,
        }
        if version == "1.0":
            return {**common, "iss": self.v1_issuer, "aud": DEV_APP_ID_URI, "appid": AZURE_MONITOR_APP_ID,
                    "appidacr": "2"}
        return {**common, "iss": self.v2_issuer, "aud": self.client_id, "azp": AZURE_MONITOR_APP_ID, "azpacr": "2"}

    def mint(
        self,
        version: str = "2.0",
        *,
        overrides: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        headers: dict[str, Any] | None = None,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = None,
        lifetime: int = 3600,
    ) -> str:
        """A signed token like Azure Monitor's; `overrides`/`drop` change claims, `headers` the header."""
        payload = self.claims(version, lifetime)
        payload.update(overrides or {})
        for name in drop:
            payload.pop(name, None)
        hdr = {"kid": kid or self.kid, **(headers or {})}
        if kid in self.extra_keys and key is None:
            key = self.extra_keys[kid]
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers=hdr)

    def authorization(self, version: str = "2.0") -> str:
        return f"Bearer {self.mint(version)}"

    def relay_env(self) -> dict[str, str]:
        """The RELAY_* variables that make a relay trust this issuer."""
        return {
            "RELAY_TENANT_ID": self.tenant_id,
            "RELAY_AUDIENCES": f"{DEV_APP_ID_URI},{self.client_id}",
            "RELAY_OPENID_CONFIG_URL": self.metadata_url,
            # Any free port for /metrics, so that relays of parallel tests and demos never collide on 9090.
            "RELAY_METRICS_PORT": "0",
        }

    # -- serving ---------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        async def metadata(request: web.Request) -> web.Response:
            self.metadata_requests += 1
            if self.fail_requests:
                return web.Response(status=503)
            return web.json_response(self.metadata())

        async def keys(request: web.Request) -> web.Response:
            self.jwks_requests += 1
            if self.fail_requests:
                return web.Response(status=503)
            return web.json_response(self.jwks())

        async def token(request: web.Request) -> web.Response:
            # `relay-dev send-alert` asks the running issuer for a token: only it holds the signing key.
            version = request.query.get("version", "2.0")
            if version not in ("1.0", "2.0"):
                return web.json_response({"error": "version must be 1.0 or 2.0"}, status=400)
            return web.json_response({"access_token": self.mint(version), "token_type": "Bearer",
                                      "expires_in": 3600})

        app = web.Application()
        app.router.add_get(f"/{self.tenant_id}/v2.0/.well-known/openid-configuration", metadata)
        app.router.add_post(TOKEN_PATH, token)
        app.router.add_get(f"/{self.tenant_id}/discovery/v2.0/keys", keys)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.base_url = f"http://{bound[0]}:{bound[1]}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextlib.contextmanager
    def serving_in_thread(self) -> Iterator[DevIssuer]:
        """Serve from a background thread, for synchronous callers (subprocess tests, the demo)."""
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()

        thread = threading.Thread(target=run, name="dev-issuer", daemon=True)
        thread.start()
        if not started.wait(10):
            raise RuntimeError("dev issuer did not start")
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
