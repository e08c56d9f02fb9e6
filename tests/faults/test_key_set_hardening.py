"""Issue 12, the tenant's key set and tokens: documents that arrive in small slow chunks still load (item 1);
cached tokens die with their key and lifetimes are capped (5); fetch URLs are parsed, not prefix-matched
(10); the issuer, weak keys, encryption keys and ambiguous kids are checked (11); kid and token patterns
refuse a trailing newline (Info)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from devtools.dev_issuer import DevIssuer
from relay.intake.signing_keys import SigningKeys
from relay.intake.tokens import MAX_LIFETIME_SECONDS, TokenRejected, TokenValidator
from relay.settings import Settings, SettingsError, fetch_url_problem

CASES: dict[str, int] = {}


def count(group: str, n: int = 1) -> None:
    CASES[group] = CASES.get(group, 0) + n


class KeyServer:
    """Plays the tenant's metadata and JWKS endpoints; sends each body in `chunk` bytes with `pause` s between."""

    def __init__(self, issuer: DevIssuer, chunk: int = 0, pause: float = 0.0) -> None:
        self.issuer = issuer
        self.chunk = chunk
        self.pause = pause
        self.metadata_overrides: dict[str, Any] = {}
        self.jwks_doc: dict[str, Any] | None = None
        self.base = ""

    def metadata(self) -> dict[str, Any]:
        return {"issuer": f"{self.base}/{self.issuer.tenant_id}/v2.0",
                "jwks_uri": f"{self.base}/keys", **self.metadata_overrides}

    async def _send(self, request: web.Request, doc: dict[str, Any]) -> web.StreamResponse:
        body = json.dumps(doc).encode()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        step = self.chunk or len(body)
        for i in range(0, len(body), step):
            await resp.write(body[i:i + step])
            if self.pause:
                await asyncio.sleep(self.pause)
        await resp.write_eof()
        return resp

    def app(self) -> web.Application:
        app = web.Application()

        async def meta(request: web.Request) -> web.StreamResponse:
            return await self._send(request, self.metadata())

        async def keys(request: web.Request) -> web.StreamResponse:
            return await self._send(request, self.jwks_doc or self.issuer.jwks())

        app.router.add_get("/meta", meta)
        app.router.add_get("/keys", keys)
        return app


@pytest.fixture
def dev() -> DevIssuer:
    return DevIssuer()


async def serve(aiohttp_server, server: KeyServer) -> str:
    running = await aiohttp_server(server.app())
    server.base = str(running.make_url("")).rstrip("/")
    return f"{server.base}/meta"


async def load(url: str, tenant: str) -> SigningKeys:
    keys = SigningKeys(url, tenant)
    await keys.start(first_load_wait=60)  # wait for the (slow) first load: the test looks at its result
    await keys.stop()  # the keys stay loaded; only the session and the refresh task go
    return keys


def padded_jwks(issuer: DevIssuer, size: int) -> dict[str, Any]:
    """The issuer's key set made `size` bytes long by extra members, as a large tenant's set is."""
    doc = issuer.jwks()
    doc["padding"] = "x" * size
    return doc


@pytest.mark.parametrize(("chunk", "pause", "size"), [(64, 0.002, 11_000), (4096, 0.001, 200 * 1024)],
                         ids=["entra-sized set in 64-byte chunks", "200 KiB set in 4 KiB chunks"])
async def test_key_set_sent_slowly_in_small_chunks_loads(aiohttp_server, dev, chunk, pause, size):
    server = KeyServer(dev, chunk=chunk, pause=pause)
    server.jwks_doc = padded_jwks(dev, size)
    url = await serve(aiohttp_server, server)
    keys = await load(url, dev.tenant_id)
    assert keys.loaded, f"a key set sent in {chunk}-byte chunks did not load: every token would get 401"
    assert await keys.get(dev.kid) is not None
    count("chunked key sets loaded (item 1)")


@pytest.mark.parametrize("url", [
    "http://localhost.attacker.example/meta",
    "http://localhost@attacker.example/meta",
    "http://127.0.0.1@attacker.example/meta",
    "https://user:pw@login.microsoftonline.com/meta",
    "http://127.0.0.1.nip.io/meta",
    "http://attacker.example/meta",
    "file:///etc/passwd",
    "https:///no-host",
])
def test_fetch_url_not_loopback_or_with_userinfo_is_refused(url):
    assert fetch_url_problem(url) is not None, f"{url} passed the https-or-loopback check"
    with pytest.raises(SettingsError, match="RELAY_OPENID_CONFIG_URL") as err:
        Settings.from_env({"RELAY_TENANT_ID": "11111111-2222-4333-8444-555555555555",
                           "RELAY_AUDIENCES": "api://x", "RELAY_OPENID_CONFIG_URL": url})
    assert "pw" not in str(err.value)
    count("fetch URLs refused (item 10)")


@pytest.mark.parametrize("url", ["https://login.microsoftonline.us/t/v2.0", "http://127.0.0.1:8080/m",
                                 "http://localhost/m", "http://[::1]:9/m"])
def test_fetch_url_https_or_loopback_is_allowed(url):
    assert fetch_url_problem(url) is None


@pytest.mark.parametrize("jwks_uri", ["http://localhost.attacker.example/keys", "http://localhost@attacker.example/k"])
async def test_jwks_uri_off_loopback_is_not_fetched(aiohttp_server, dev, jwks_uri):
    server = KeyServer(dev)
    server.metadata_overrides = {"jwks_uri": jwks_uri}
    url = await serve(aiohttp_server, server)
    keys = await load(url, dev.tenant_id)
    assert not keys.loaded, f"keys were loaded from jwks_uri {jwks_uri}"
    count("jwks_uri refused (item 10)")


@pytest.mark.parametrize("issuer", [
    "https://attacker.example/{tenant}/v2.0",  # another host
    "{base}/99999999-2222-4333-8444-555555555555/v2.0",  # another tenant
    "{base}/v2.0",  # no tenant at all
    "https://login.microsoftonline.com/{tenant}/v2.0",  # Entra's name, but fetched from elsewhere
])
async def test_issuer_not_naming_the_tenant_on_the_metadata_host_is_refused(aiohttp_server, dev, issuer):
    server = KeyServer(dev)
    url = await serve(aiohttp_server, server)
    server.metadata_overrides = {"issuer": issuer.format(base=server.base, tenant=dev.tenant_id)}
    keys = await load(url, dev.tenant_id)
    assert not keys.loaded and keys.issuer is None, f"issuer {issuer} was trusted"
    count("issuers refused (item 11)")


async def test_issuer_template_with_tenantid_on_own_host_is_accepted(aiohttp_server, dev):
    server = KeyServer(dev)
    url = await serve(aiohttp_server, server)
    server.metadata_overrides = {"issuer": f"{server.base}/{{tenantid}}/v2.0"}
    keys = await load(url, dev.tenant_id)
    assert keys.loaded and keys.issuer == f"{server.base}/{dev.tenant_id}/v2.0"


def jwk(key: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    entry = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    entry.update({"kid": kid, "use": "sig", **extra})
    return entry


@pytest.mark.parametrize("label", ["use enc", "1024-bit", "e=3", "duplicate kid"])
async def test_weak_encryption_and_ambiguous_keys_are_refused(aiohttp_server, dev, label):
    bad_key = {
        "1024-bit": rsa.generate_private_key(public_exponent=65537, key_size=1024),
        "e=3": rsa.generate_private_key(public_exponent=3, key_size=2048),
    }.get(label, dev.key)
    good = jwk(DevIssuer().key, "good")
    entries = {
        "use enc": [jwk(bad_key, "bad", use="enc")],
        "1024-bit": [jwk(bad_key, "bad")],
        "e=3": [jwk(bad_key, "bad")],
        "duplicate kid": [jwk(DevIssuer().key, "bad"), jwk(bad_key, "bad")],
    }[label]
    server = KeyServer(dev)
    server.jwks_doc = {"keys": [good, *entries]}
    url = await serve(aiohttp_server, server)
    keys = await load(url, dev.tenant_id)
    assert keys.loaded, "the good key beside the refused one should still load"
    assert await keys.get("bad") is None, f"a key refused as {label} was used"
    count("keys refused (item 11)")


async def validator_for(aiohttp_server, dev: DevIssuer) -> tuple[TokenValidator, SigningKeys, KeyServer]:
    server = KeyServer(dev)
    url = await serve(aiohttp_server, server)
    dev.base_url = server.base  # tokens name the issuer the key server's metadata names
    keys = SigningKeys(url, dev.tenant_id, cooldown_seconds=0)
    await keys.start(first_load_wait=60)
    settings = Settings.from_env({**dev.relay_env(), "RELAY_OPENID_CONFIG_URL": url})
    return TokenValidator(settings, keys), keys, server


async def test_cached_token_is_refused_once_its_key_left_the_key_set(aiohttp_server, dev):
    validator, keys, server = await validator_for(aiohttp_server, dev)
    try:
        token = dev.authorization()
        await validator.validate(token)  # verified and cached
        replacement = DevIssuer()
        server.jwks_doc = {"keys": [jwk(replacement.key, "rolled-key")]}
        assert await keys.refresh()
        with pytest.raises(TokenRejected) as err:
            await validator.validate(token)
        assert err.value.reason == "unknown_kid", "the cached token outlived its signing key"
    finally:
        await keys.stop()
    count("cached token after key removal (item 5)")


async def test_cache_survives_a_refresh_that_changes_nothing(aiohttp_server, dev):
    validator, keys, _ = await validator_for(aiohttp_server, dev)
    try:
        token = dev.authorization()
        await validator.validate(token)
        generation = keys.generation
        assert await keys.refresh()
        assert keys.generation == generation, "an unchanged key set counted as a change"
    finally:
        await keys.stop()


@pytest.mark.parametrize("lifetime", [MAX_LIFETIME_SECONDS + 3600, 253402300799 - 2_000_000_000])
async def test_token_valid_longer_than_entra_issues_is_refused(aiohttp_server, dev, lifetime):
    validator, keys, _ = await validator_for(aiohttp_server, dev)
    try:
        with pytest.raises(TokenRejected) as err:
            await validator.validate("Bearer " + dev.mint(lifetime=lifetime))
        assert err.value.reason == "too_long_lived"
        assert (await validator.validate("Bearer " + dev.mint(lifetime=MAX_LIFETIME_SECONDS))).version == "2.0"
    finally:
        await keys.stop()
    count("over-long lifetimes (item 5)")


async def test_kid_with_a_trailing_newline_is_refused(aiohttp_server, dev):
    # (`$` accepted "kid\n"; the token itself is stripped before its pattern is matched, and now fullmatched.)
    validator, keys, _ = await validator_for(aiohttp_server, dev)
    try:
        with pytest.raises(TokenRejected) as err:
            await validator.validate("Bearer " + dev.mint(kid="dev-key-2\n", key=dev.key))
        assert err.value.reason == "missing_kid", f"kid with a newline got as far as {err.value.reason}"
    finally:
        await keys.stop()
    count("trailing newlines (Info)")


def test_report_key_set_counts(fault_report):
    assert CASES, "run with the tests above"
    fault_report("key set and token hardening", "; ".join(f"{n} {group}" for group, n in sorted(CASES.items())))
