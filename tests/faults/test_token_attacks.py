"""Token attacks over HTTP against a running `relay serve`: every forged kind, garbage and oversized
Authorization headers, and a flood of unknown key ids. All are refused, nothing is stored, and the flood
does not turn the relay into a hammer on the tenant's key endpoint."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re

import aiohttp
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from devtools.dev_issuer import DevIssuer
from relay.intake.tokens import MAX_TOKEN_BYTES
from relay.store.sqlite import SqliteStore
from tests.conftest import SAMPLES
from tests.faults.raw_http import exchange, request
from tests.test_tokens import forged

BODY = (SAMPLES / "testaction-metric-static-fired.json").read_bytes()
FLOOD = 200
CONCURRENCY = 16


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256_keyed_with_the_public_key(issuer: DevIssuer) -> str:
    """The algorithm-confusion attack: HMAC over the token with the issuer's public key (PEM) as the secret,
    which a verifier that lets the token pick its algorithm would check with that same public key."""
    pem = issuer.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': issuer.kid}).encode())}." \
                    f"{b64(json.dumps(issuer.claims()).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"Bearer {signing_input}.{b64(signature)}"


def garbage_tokens(issuer: DevIssuer, token: str) -> dict[str, str]:
    """Authorization values that reach the token check (aiohttp parses them) and must each be a 401."""
    claims = token.split(".")[1]

    def with_header(raw: bytes) -> str:
        return f"Bearer {b64(raw)}.{claims}.c2ln"

    return {
        "hs256 keyed with the public key": hs256_keyed_with_the_public_key(issuer),
        "empty value": "",
        "scheme only": "Bearer",
        "scheme and spaces": "Bearer    ",
        "tab instead of space": "Bearer\t" + token,
        "upper-case scheme, forged signature": "BEARER " + token[:-8] + "AAAAAAAA",
        "two tokens": f"Bearer {token} {token}",
        "token repeated with a comma": f"Bearer {token},{token}",
        "dots only": "Bearer " + "." * 4000,
        "non-ASCII bytes": "Bearer \xff\xfe\xfd.\xe9\xe9.\xe0",
        "header with a 5000-digit number": with_header(b'{"alg":"RS256","kid":' + b"9" * 5000 + b"}"),
        "header with an infinite kid": with_header(b'{"alg":"RS256","kid":1e400}'),
        "header not an object": with_header(b'["RS256"]'),
        "header not JSON": with_header(b"\x89PNG\r\n"),
        "kid of 128 odd characters": with_header(json.dumps({"alg": "RS256", "kid": "+/=." * 32}).encode()),
        "just under the size cap": "Bearer " + "a" * (MAX_TOKEN_BYTES - len("Bearer ")),
    }


def parser_garbage(token: str) -> dict[str, bytes]:
    """Requests aiohttp's HTTP parser refuses before any handler runs (a 400, never a 2xx)."""
    ctype = ("Content-Type", "application/json")

    def post(*headers: tuple[str, str], raw: bytes = b"") -> bytes:
        return request(headers=[ctype, *headers], raw_headers=raw, body=BODY)

    return {
        "Authorization over 16 KiB": post(("Authorization", "Bearer " + "a" * 20_000)),
        "Authorization of 1 MiB": post(("Authorization", "Bearer " + "a" * 1_048_576)),
        "NUL in the token": post(("Authorization", f"Bearer {token}\x00")),
        "line feed in the token": post(raw=f"Authorization: Bearer \n{token}\r\n".encode()),
        "header line without a colon": post(raw=f"Authorization Bearer {token}\r\n".encode()),
        "200 headers": post(*((f"X-Junk-{i}", "x") for i in range(200)), ("Authorization", f"Bearer {token}")),
    }


async def metric_lines(http: aiohttp.ClientSession, url: str, name: str) -> dict[str, float]:
    """{labels: value} of one metric on the relay's /metrics."""
    async with http.get(url) as resp:
        text = await resp.text()
    return {m.group(1) or "": float(m.group(2)) for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)}


async def test_token_attacks_over_http_are_all_refused_and_store_nothing(live_relay, fault_report):
    issuer = live_relay.issuer
    url = live_relay.url
    jwks_before = issuer.jwks_requests
    valid = issuer.mint()
    kinds = {label: header for label, (header, _) in forged(issuer).items()}
    kinds.update(garbage_tokens(issuer, valid))
    statuses: dict[str, int] = {}
    challenged: set[str] = set()
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def attack(http: aiohttp.ClientSession, label: str, header: str | None) -> None:
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers["Authorization"] = header
        async with semaphore, http.post(f"{url}/alerts", data=BODY, headers=headers) as resp:
            statuses[label] = resp.status
            if resp.headers.get("WWW-Authenticate") == 'Bearer error="invalid_token"':
                challenged.add(label)

    flood = {f"unknown kid {i}": "Bearer " + issuer.mint(kid=f"flood-{i:04d}") for i in range(FLOOD)}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        await asyncio.gather(*(attack(http, label, header) for label, header in kinds.items()))
        await asyncio.gather(*(attack(http, label, header) for label, header in flood.items()))
        refused_by_parser = {label: await exchange(live_relay.port, raw)
                             for label, raw in parser_garbage(valid).items()}
        outcomes = await metric_lines(http, live_relay.metrics_url, "relay_alert_requests_total")
        async with http.get(f"{url}/healthz") as resp:
            healthy = resp.status == 200
    jwks_fetches = issuer.jwks_requests - jwks_before

    not_401 = {label: s for label, s in statuses.items() if s != 401}
    assert not not_401, f"token attacks not answered 401: {not_401}"
    unchallenged = sorted(set(statuses) - challenged)
    assert not unchallenged, f"401 without the Bearer challenge: {unchallenged}"
    wrong = {label: s for label, s in refused_by_parser.items() if not 400 <= s < 500}
    assert not wrong, f"malformed requests must be refused with a 4xx (0: connection dropped): {wrong}"
    accepted = {k: v for k, v in outcomes.items() if "accepted" in k or "duplicate" in k}
    assert not any(accepted.values()), f"the relay counted accepted alerts: {accepted}"
    # The relay fetched its keys at start; every unknown kid since falls inside that fetch's cooldown.
    assert jwks_fetches <= 1, f"{FLOOD} unknown kids made the relay fetch the key set {jwks_fetches} times"
    assert healthy and live_relay.alive(), "the relay did not survive the attacks"
    assert live_relay.tracebacks() == [], "unexpected errors in the relay's log:\n" + "\n".join(live_relay.tracebacks())
    store = SqliteStore(live_relay.db)
    await store.open()
    try:
        stored = await store.events()
    finally:
        await store.close()
    assert stored == [], f"{len(stored)} alerts were stored from refused requests"
    fault_report(
        "token attacks",
        f"{len(kinds)} forged and garbage token kinds, all 401 with the Bearer challenge; {FLOOD} unknown kids, all "
        f"401, key set fetched {jwks_fetches} times during the flood; {len(refused_by_parser)} malformed requests "
        f"refused by the HTTP parser ({sorted(set(refused_by_parser.values()))}); 0 accepted, 0 stored",
    )
