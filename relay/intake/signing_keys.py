"""Entra ID signing keys: read from the tenant's OpenID metadata, cached, refreshed off the hot path.

Keys are refreshed every 12 hours. An unknown `kid` triggers at most one refetch per cooldown (5
minutes), so forged kids cannot make us hammer Entra. A failed fetch keeps the last-known-good keys.
All fetching is async on the relay's own session (`relay.http_client`); PyJWT's PyJWKClient is blocking urllib.
Documents are read to their end (up to 512 KiB), however many chunks they arrive in. The metadata's
issuer must name the configured tenant on the metadata URL's own host; encryption keys, RSA keys under
2048 bits or with a small exponent, and key ids listed twice are left out of the key set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from jwt import PyJWK
from jwt.exceptions import InvalidKeyError, PyJWKError

from relay.http_client import client_session
from relay.settings import fetch_url_problem

log = logging.getLogger("relay.intake.signing_keys")

REFRESH_SECONDS = 12 * 3600
UNKNOWN_KID_COOLDOWN_SECONDS = 300
RETRY_AFTER_FAILURE_SECONDS = 300
MAX_DOCUMENT_BYTES = 512 * 1024
# How long start() waits for the first load before serving anyway (a hanging metadata endpoint held the
# start for ~13 s): the load goes on in the background and /readyz says 503 until it succeeds.
FIRST_LOAD_WAIT_SECONDS = 2.0
MIN_RSA_BITS = 2048
MIN_RSA_EXPONENT = 65537


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
        # Bumped whenever the set of keys changes, so the token cache can drop what the old set verified.
        self.generation = 0

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    async def start(self, first_load_wait: float = FIRST_LOAD_WAIT_SECONDS) -> None:
        """Open the session, start loading and refreshing; wait for the first load at most
        `first_load_wait` seconds (failure or a slow endpoint is logged, not fatal)."""
        self._session = client_session(timeout=aiohttp.ClientTimeout(total=10, connect=5), max_connections=4)
        first = asyncio.create_task(self.refresh(), name="signing-key-first-load")
        self._task = asyncio.create_task(self._refresh_loop(first), name="signing-key-refresh")
        try:
            await asyncio.wait_for(asyncio.shield(first), first_load_wait)
        except TimeoutError:
            log.warning("signing keys not loaded within %.0f s of start; still trying in the background",
                        first_load_wait)

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

    async def _refresh_loop(self, first: asyncio.Task[bool]) -> None:
        try:
            await first
        except asyncio.CancelledError:
            first.cancel()
            raise
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
        if _fingerprint(keys) != _fingerprint(self._keys):
            self.generation += 1
        self.issuer, self._keys = issuer, keys
        log.info("loaded %d signing keys from %s", len(keys), self.metadata_url)
        return True

    async def _fetch(self) -> tuple[str | None, dict[str, PyJWK]]:
        metadata = await self._get_json(self.metadata_url)
        jwks_uri = metadata.get("jwks_uri")
        problem = fetch_url_problem(jwks_uri) if isinstance(jwks_uri, str) else "it is not a string"
        if problem is not None:
            raise KeyFetchError(f"metadata has no usable jwks_uri ({problem})")
        issuer = check_issuer(metadata.get("issuer"), self.metadata_url, self.tenant_id)
        jwks = await self._get_json(jwks_uri)
        return issuer, usable_keys(jwks)

    async def _get_json(self, url: str) -> dict[str, Any]:
        if self._session is None:
            raise KeyFetchError("signing keys not started")
        async with self._session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise KeyFetchError(f"GET {url} answered {resp.status}")
            # To the end: one read(n) returns only what has arrived so far (Entra's key set is ~11 KB).
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                if size > MAX_DOCUMENT_BYTES:
                    raise KeyFetchError(f"GET {url} returned more than {MAX_DOCUMENT_BYTES} bytes")
                chunks.append(chunk)
        doc = json.loads(b"".join(chunks))
        if not isinstance(doc, dict):
            raise KeyFetchError(f"GET {url} did not return a JSON object")
        return doc


def check_issuer(issuer: object, metadata_url: str, tenant_id: str) -> str:
    """The metadata's issuer, {tenantid} substituted, if it names our tenant on the metadata URL's own host
    (Entra's is https://login.microsoftonline.com/<tenant>/v2.0; a sovereign cloud or a local issuer named
    by RELAY_OPENID_CONFIG_URL has its own host); anything else is a KeyFetchError."""
    if not isinstance(issuer, str):
        raise KeyFetchError("metadata has no issuer")
    issuer = issuer.replace("{tenantid}", tenant_id)
    problem = fetch_url_problem(issuer)
    if problem is not None:
        raise KeyFetchError(f"metadata issuer unusable ({problem})")
    parts, expected = urlsplit(issuer), urlsplit(metadata_url)
    if (parts.hostname, parts.port) != (expected.hostname, expected.port):
        raise KeyFetchError(f"metadata issuer host {parts.hostname!r} is not the metadata URL's {expected.hostname!r}")
    if tenant_id.lower() not in [segment.lower() for segment in parts.path.split("/")]:
        raise KeyFetchError("metadata issuer does not name the configured tenant")
    return issuer


def usable_keys(jwks: dict[str, Any]) -> dict[str, PyJWK]:
    """The JWKS's RSA signing keys by kid. Left out, with a warning: keys for encryption (`use: enc`), RSA
    under 2048 bits or with an exponent under 65537, and every key whose kid appears more than once
    (which of them signed a token would be ambiguous)."""
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise KeyFetchError("JWKS has no keys list")
    kids = [e.get("kid") for e in entries if isinstance(e, dict)]
    keys: dict[str, PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA" or not isinstance(entry.get("kid"), str):
            continue
        kid = entry["kid"]
        if kids.count(kid) > 1:
            log.warning("signing key %r is listed %d times in the JWKS: refused as ambiguous", kid, kids.count(kid))
            continue
        if entry.get("use", "sig") != "sig":
            log.warning("signing key %r is for use %r, not sig: refused", kid, entry.get("use"))
            continue
        try:
            key = PyJWK.from_dict(entry)
        except (PyJWKError, InvalidKeyError, ValueError) as exc:
            log.warning("signing key %r unusable: %s", kid, exc)
            continue
        numbers = key.key.public_numbers()
        if numbers.n.bit_length() < MIN_RSA_BITS or numbers.e < MIN_RSA_EXPONENT:
            log.warning("signing key %r is weak (%d-bit modulus, exponent %d): refused",
                        kid, numbers.n.bit_length(), numbers.e)
            continue
        keys[kid] = key
    if not keys:
        raise KeyFetchError("JWKS holds no usable RSA signing keys with a kid")
    return keys


def _fingerprint(keys: dict[str, PyJWK]) -> set[tuple[str, int, int]]:
    return {(kid, k.key.public_numbers().n, k.key.public_numbers().e) for kid, k in keys.items()}
