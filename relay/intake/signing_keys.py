"""Entra ID signing keys: read from the tenant's OpenID metadata, cached, refreshed off the hot path.

Keys are refreshed every 12 hours. An unknown `kid` triggers at most one refetch per cooldown (5
minutes), so forged kids cannot make us hammer Entra. A failed fetch keeps the last-known-good keys.
All fetching is async on the relay's own session (`relay.http_client`); PyJWT's PyJWKClient is blocking urllib.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKSetError

from relay.http_client import client_session

log = logging.getLogger("relay.intake.signing_keys")

REFRESH_SECONDS = 12 * 3600
UNKNOWN_KID_COOLDOWN_SECONDS = 300
RETRY_AFTER_FAILURE_SECONDS = 300
MAX_DOCUMENT_BYTES = 512 * 1024


class KeyFetchError(Exception):
    pass


class SigningKeys:
    def __init__(
        self,
        metadata_url: str,
        tenant_id: str,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        cooldown_seconds: float = UNKNOWN_KID_COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metadata_url = metadata_url
        self.tenant_id = tenant_id
        self.refresh_seconds = refresh_seconds
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self.issuer: str | None = None  # the metadata's issuer, {tenantid} substituted
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0  # metadata+JWKS round trips attempted; tests read it

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    async def start(self) -> None:
        """Open the session, try a first load (failure is logged, not fatal) and start refreshing."""
        self._session = client_session(timeout=aiohttp.ClientTimeout(total=10, connect=5), max_connections=4)
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_loop(), name="signing-key-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, kid: str) -> PyJWK | None:
        """The key for `kid`; an unknown kid refetches at most once per cooldown (single flight)."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._clock() - self._last_attempt < self.cooldown_seconds:
            return None
        async with self._lock:
            # Another request may have refetched while we waited for the lock.
            key = self._keys.get(kid)
            if key is not None or self._clock() - self._last_attempt < self.cooldown_seconds:
                return key
            await self._fetch_logged()
        return self._keys.get(kid)

    async def refresh(self) -> bool:
        async with self._lock:
            return await self._fetch_logged()

    async def _refresh_loop(self) -> None:
        while True:
            delay = self.refresh_seconds if self.loaded else min(RETRY_AFTER_FAILURE_SECONDS, self.refresh_seconds)
            # Jitter so that replicas started together do not refresh together.
            await asyncio.sleep(delay * random.uniform(0.9, 1.0))
            await self.refresh()

    async def _fetch_logged(self) -> bool:
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            issuer, keys = await self._fetch()
        except (TimeoutError, KeyFetchError, aiohttp.ClientError, ValueError) as exc:
            log.warning(
                "signing key fetch from %s failed (%s); keeping %d last-known-good keys",
                self.metadata_url, exc, len(self._keys),
            )
            return False
        self.issuer, self._keys = issuer, keys
        log.info("loaded %d signing keys from %s", len(keys), self.metadata_url)
        return True

    async def _fetch(self) -> tuple[str | None, dict[str, PyJWK]]:
        metadata = await self._get_json(self.metadata_url)
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://127.", "http://localhost")):
            raise KeyFetchError(f"metadata has no usable jwks_uri ({jwks_uri!r})")
        issuer = metadata.get("issuer")
        issuer = issuer.replace("{tenantid}", self.tenant_id) if isinstance(issuer, str) else None
        jwks = await self._get_json(jwks_uri)
        try:
            keyset = PyJWKSet.from_dict(jwks)
        except PyJWKSetError as exc:
            raise KeyFetchError(f"JWKS unusable: {exc}") from exc
        keys = {k.key_id: k for k in keyset.keys if k.key_id and k.key_type == "RSA"}
        if not keys:
            raise KeyFetchError("JWKS holds no RSA keys with a kid")
        return issuer, keys

    async def _get_json(self, url: str) -> dict[str, Any]:
        if self._session is None:
            raise KeyFetchError("signing keys not started")
        async with self._session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise KeyFetchError(f"GET {url} answered {resp.status}")
            body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
            if len(body) > MAX_DOCUMENT_BYTES:
                raise KeyFetchError(f"GET {url} returned more than {MAX_DOCUMENT_BYTES} bytes")
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise KeyFetchError(f"GET {url} did not return a JSON object")
        return doc
