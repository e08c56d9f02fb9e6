"""Secure Webhook token validation: every check, none optional.

RS256 only; key by `kid` from the configured tenant's metadata (never from the token's own headers);
exact v1 or v2 issuer for our tenant, with the claims of that version (`appid` for v1, `azp` for
v2); audience, tenant, caller app and role; `exp`/`nbf`/`iat` required with 5 minutes of skew.
A token valid for longer than Entra ever issues (24 hours) is refused. A verified token is cached by
the hash of its Authorization header until it expires (Azure reuses one token for about an hour; at most
CACHE_SIZE entries, the oldest dropped first), and the cache is emptied whenever the key set changes, so a
token signed by a key that left the set is checked again, and refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from relay.intake.signing_keys import SigningKeys
from relay.settings import Settings

CLOCK_SKEW_SECONDS = 300
MAX_TOKEN_BYTES = 8192
CACHE_SIZE = 4096
# Entra's configurable token lifetime tops out at 1 day (access tokens default to 60-90 minutes).
MAX_LIFETIME_SECONDS = 24 * 3600
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
# Matched with fullmatch: `$` would also accept a trailing newline.
_KID = re.compile(r"[A-Za-z0-9_\-=.+/]{1,128}")
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")

# Every reason a token is refused: the log line and the metric label carry it, the response never.
REASONS = (
    "missing_token",
    "not_bearer",
    "oversized",
    "malformed",
    "bad_algorithm",
    "forbidden_header",
    "missing_kid",
    "unknown_kid",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "bad_iat",
    "too_long_lived",
    "missing_claim",
    "bad_issuer",
    "bad_audience",
    "bad_tenant",
    "bad_version",
    "bad_app",
    "missing_role",
    "delegated_token",
)


class TokenRejected(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a verified token says is calling (safe to log: no secret material)."""

    app_id: str
    object_id: str | None
    version: str
    expires_at: float


class TokenValidator:
    def __init__(self, settings: Settings, keys: SigningKeys, clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.tenant = settings.tenant_id
        self.audiences = list(settings.audiences)
        self.allowed_apps = frozenset(settings.allowed_app_ids)
        self.role = settings.required_role
        self.v1_issuer = f"https://sts.windows.net/{self.tenant}/"
        self._clock = clock
        self._cache: OrderedDict[bytes, Caller] = OrderedDict()
        self._cache_generation = keys.generation

    @property
    def v2_issuer(self) -> str:
        # The metadata's issuer, {tenantid} substituted; Entra's documented form until keys are loaded.
        return self.keys.issuer or f"https://login.microsoftonline.com/{self.tenant}/v2.0"

    async def validate(self, authorization: str | None) -> Caller:
        if not authorization or len(authorization) > MAX_TOKEN_BYTES:
            return await self._verify(_bearer(authorization), self._clock())  # refused: never cached
        # Keyed by the digest of the whole header, looked up before the token's form is parsed: only a
        # header that passed every check before can hit, so the hot path (Azure's one token, reused for
        # about an hour) is one hash and one dict lookup.
        digest = hashlib.sha256(authorization.encode()).digest()
        if self._cache_generation != self.keys.generation:
            self._cache.clear()  # what the old key set verified is checked again against the new one
            self._cache_generation = self.keys.generation
        cached = self._cache.get(digest)
        now = self._clock()
        if cached is not None:
            if now < cached.expires_at + CLOCK_SKEW_SECONDS:
                return cached
            del self._cache[digest]
        caller = await self._verify(_bearer(authorization), now)
        self._cache[digest] = caller
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return caller

    async def _verify(self, token: str, now: float) -> Caller:
        header = _unverified_header(token)
        if header.get("alg") != "RS256":
            raise TokenRejected("bad_algorithm", f"alg {str(header.get('alg'))[:20]!r}")
        present = [h for h in FORBIDDEN_HEADERS if h in header]
        if present:
            raise TokenRejected("forbidden_header", ",".join(present))
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            raise TokenRejected("missing_kid", "kid absent or not a short key id")
        key = await self.keys.get(kid)
        if key is None:
            raise TokenRejected("unknown_kid", f"kid {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self.audiences,
                issuer=[self.v1_issuer, self.v2_issuer],
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "nbf", "iat", "iss", "aud", "tid", "ver"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("not_yet_valid") from None
        except jwt.InvalidIssuedAtError as exc:
            raise TokenRejected("bad_iat", str(exc)) from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected("missing_claim", exc.claim) from None
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected("bad_audience", str(exc)) from None
        except jwt.InvalidIssuerError as exc:
            raise TokenRejected("bad_issuer", str(exc)) from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("bad_signature") from None
        except jwt.InvalidAlgorithmError as exc:
            raise TokenRejected("bad_algorithm", str(exc)) from None
        except jwt.PyJWTError as exc:
            raise TokenRejected("malformed", type(exc).__name__) from None
        lifetime = float(claims["exp"]) - float(claims["iat"])
        if lifetime > MAX_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS:
            raise TokenRejected("too_long_lived", f"valid for {lifetime / 3600:.0f} h, Entra issues at most 24 h")
        return self._authorize(claims)

    def _authorize(self, claims: dict) -> Caller:
        tid = claims.get("tid")
        if not isinstance(tid, str) or tid.lower() != self.tenant:
            raise TokenRejected("bad_tenant", f"tid {str(tid)[:40]!r}")
        ver, iss = claims.get("ver"), claims.get("iss")
        if ver == "1.0":
            if iss != self.v1_issuer:
                raise TokenRejected("bad_version", "v1 token with a v2 issuer")
            app = claims.get("appid")
        elif ver == "2.0":
            if iss != self.v2_issuer:
                raise TokenRejected("bad_version", "v2 token with a v1 issuer")
            app = claims.get("azp")
        else:
            raise TokenRejected("bad_version", f"ver {str(ver)[:10]!r}")
        if not isinstance(app, str) or app.lower() not in self.allowed_apps:
            raise TokenRejected("bad_app", f"caller app {str(app)[:40]!r}")
        if "scp" in claims:
            raise TokenRejected("delegated_token", "token carries scp: a user token, not an app token")
        if claims.get("idtyp", "app") != "app":
            raise TokenRejected("delegated_token", f"idtyp {str(claims.get('idtyp'))[:10]!r}")
        roles = claims.get("roles")
        if not isinstance(roles, list) or self.role not in roles:
            raise TokenRejected("missing_role", f"role {self.role!r} not in roles")
        oid = claims.get("oid")
        return Caller(
            app_id=app.lower(),
            object_id=oid if isinstance(oid, str) else None,
            version=ver,
            expires_at=float(claims["exp"]),
        )


def _unverified_header(token: str) -> dict:
    """The JOSE header, read only to pick the algorithm and key; nothing in it is trusted."""
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        raise TokenRejected("malformed", "header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise TokenRejected("malformed", "header is not a JSON object")
    return header


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise TokenRejected("missing_token")
    if len(authorization) > MAX_TOKEN_BYTES:
        raise TokenRejected("oversized", f"{len(authorization)} bytes")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise TokenRejected("not_bearer", f"scheme {scheme[:10]!r}")
    token = token.strip()
    if not _TOKEN.fullmatch(token):
        # Five segments is an encrypted token (JWE); anything else is not a compact JWS.
        raise TokenRejected("malformed", f"{token.count('.') + 1} segments" if token else "empty")
    return token
