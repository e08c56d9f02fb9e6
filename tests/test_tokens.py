"""Token validation: every bad-token kind is refused with its own reason; keys are fetched sparingly."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from devtools.dev_issuer import AZURE_MONITOR_APP_ID, DEV_APP_ID_URI, DevIssuer, new_rsa_key
from relay.intake.signing_keys import SigningKeys
from relay.intake.tokens import TokenRejected, TokenValidator
from relay.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def keys(issuer: DevIssuer):
    k = SigningKeys(issuer.metadata_url, issuer.tenant_id, clock=FakeClock())
    await k.start()
    yield k
    await k.stop()


@pytest.fixture
def validator(issuer: DevIssuer, keys: SigningKeys) -> TokenValidator:
    settings = Settings.from_env(issuer.relay_env())
    return TokenValidator(settings, keys)


async def reason_for(validator: TokenValidator, authorization: str | None) -> str:
    with pytest.raises(TokenRejected) as err:
        await validator.validate(authorization)
    return err.value.reason


def b64(obj: dict) -> str:
    return b64_raw(json.dumps(obj).encode())


def b64_raw(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_valid_v2_token_is_accepted(validator, issuer):
    caller = await validator.validate(issuer.authorization("2.0"))
    assert caller.app_id == AZURE_MONITOR_APP_ID
    assert caller.version == "2.0"


async def test_valid_v1_token_is_accepted(validator, issuer):
    caller = await validator.validate(issuer.authorization("1.0"))
    assert caller.version == "1.0"


async def test_v1_token_with_client_id_audience_is_accepted(validator, issuer):
    token = issuer.mint("1.0", overrides={"aud": issuer.client_id})
    assert (await validator.validate(f"Bearer {token}")).version == "1.0"


def sign_raw(issuer: DevIssuer, header: dict, claims: dict) -> str:
    """A correctly signed RS256 token with any header, even one PyJWT refuses to produce."""
    signing_input = f"{b64(header)}.{b64(claims)}".encode()
    sig = issuer.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode() + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def forged(issuer: DevIssuer):
    """Each bad-token kind and the reason it must be refused with."""
    now_claims = issuer.claims()
    hs_token = jwt.encode(now_claims, "a-shared-secret-that-is-long-enough-32b", algorithm="HS256",
                          headers={"kid": issuer.kid})
    none_token = f"{b64({'alg': 'none', 'kid': issuer.kid})}.{b64(now_claims)}."
    return {
        "missing header": (None, "missing_token"),
        "basic scheme": ("Basic dXNlcjpwYXNz", "not_bearer"),
        "oversized header": ("Bearer " + "a" * 9000, "oversized"),
        "garbage": ("Bearer not-a-jwt", "malformed"),
        "jwe five segments": ("Bearer a.b.c.d.e", "malformed"),
        "undecodable header": ("Bearer !!!.e30.sig", "malformed"),
        "header nested past the JSON parser's depth": (f"Bearer {b64_raw(b'[' * 2000 + b']' * 2000)}.e30.sig",
                                                       "malformed"),
        "alg none": (f"Bearer {none_token}", "bad_algorithm"),
        "hs256": (f"Bearer {hs_token}", "bad_algorithm"),
        "jku header": ("Bearer " + issuer.mint(headers={"jku": "https://evil.example/keys"}), "forbidden_header"),
        "x5u header": ("Bearer " + issuer.mint(headers={"x5u": "https://evil.example/cert"}), "forbidden_header"),
        "jwk header": ("Bearer " + issuer.mint(headers={"jwk": {"kty": "RSA"}}), "forbidden_header"),
        "crit header": ("Bearer " + sign_raw(issuer, {"alg": "RS256", "kid": issuer.kid, "crit": ["x"]}, now_claims),
                        "forbidden_header"),
        "no kid": ("Bearer " + jwt.encode(now_claims, issuer.key, algorithm="RS256"), "missing_kid"),
        "untrusted key, unknown kid": ("Bearer " + issuer.mint(key=new_rsa_key(), kid="attacker"), "unknown_kid"),
        "untrusted key, known kid": ("Bearer " + issuer.mint(key=new_rsa_key()), "bad_signature"),
        "expired": ("Bearer " + issuer.mint(overrides={"exp": now_claims["iat"] - 3600}), "expired"),
        "not yet valid": ("Bearer " + issuer.mint(overrides={"nbf": now_claims["iat"] + 3600}), "not_yet_valid"),
        "no exp": ("Bearer " + issuer.mint(drop=("exp",)), "missing_claim"),
        "no nbf": ("Bearer " + issuer.mint(drop=("nbf",)), "missing_claim"),
        "no iat": ("Bearer " + issuer.mint(drop=("iat",)), "missing_claim"),
        "no tid": ("Bearer " + issuer.mint(drop=("tid",)), "missing_claim"),
        "wrong audience": ("Bearer " + issuer.mint(overrides={"aud": "api://someone-else"}), "bad_audience"),
        "wrong issuer": ("Bearer " + issuer.mint(overrides={"iss": "https://sts.windows.net/other/"}), "bad_issuer"),
        "issuer prefix trick": ("Bearer " + issuer.mint(overrides={"iss": issuer.v2_issuer + "x"}), "bad_issuer"),
        "another tenant": ("Bearer " + issuer.mint(overrides={"tid": "99999999-9999-4999-8999-999999999999"}),
                           "bad_tenant"),
        "v2 claims with v1 issuer": ("Bearer " + issuer.mint("2.0", overrides={"iss": issuer.v1_issuer}),
                                     "bad_version"),
        "v1 claims with v2 issuer": ("Bearer " + issuer.mint("1.0", overrides={"iss": issuer.v2_issuer}),
                                     "bad_version"),
        "unknown version": ("Bearer " + issuer.mint(overrides={"ver": "3.0"}), "bad_version"),
        "v2 with appid instead of azp": ("Bearer " + issuer.mint("2.0", drop=("azp",),
                                         overrides={"appid": AZURE_MONITOR_APP_ID}), "bad_app"),
        "wrong azp": ("Bearer " + issuer.mint(overrides={"azp": "12345678-1234-4234-8234-123456789012"}), "bad_app"),
        "wrong appid": ("Bearer " + issuer.mint("1.0", overrides={"appid": "12345678-1234-4234-8234-123456789012"}),
                        "bad_app"),
        "user token": ("Bearer " + issuer.mint(overrides={"scp": "user_impersonation"}), "delegated_token"),
        "user idtyp": ("Bearer " + issuer.mint(overrides={"idtyp": "user"}), "delegated_token"),
        "missing role": ("Bearer " + issuer.mint(overrides={"roles": ["SomethingElse"]}), "missing_role"),
        "roles not a list": ("Bearer " + issuer.mint(overrides={"roles": "ActionGroupsSecureWebhook"}), "missing_role"),
        "no roles": ("Bearer " + issuer.mint(drop=("roles",)), "missing_role"),
    }


async def test_every_bad_token_kind_is_refused_with_its_own_reason(validator, issuer):
    cases = forged(issuer)
    assert len(cases) >= 30
    wrong = {}
    for label, (header, expected) in cases.items():
        try:
            await validator.validate(header)
        except TokenRejected as exc:
            if exc.reason != expected:
                wrong[label] = f"got {exc.reason}, want {expected}"
        else:
            wrong[label] = "ACCEPTED"
    assert not wrong, wrong


async def test_configured_audience_list_accepts_app_id_uri_only_when_listed(issuer, keys):
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_AUDIENCES": issuer.client_id})
    v = TokenValidator(settings, keys)
    assert await reason_for(v, "Bearer " + issuer.mint("1.0", overrides={"aud": DEV_APP_ID_URI})) == "bad_audience"


async def test_custom_role_and_allowed_apps_are_enforced(issuer, keys):
    other_app = "12345678-1234-4234-8234-123456789012"
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_REQUIRED_ROLE": "Custom.Role",
                                  "RELAY_ALLOWED_APP_IDS": other_app})
    v = TokenValidator(settings, keys)
    assert await reason_for(v, issuer.authorization()) == "bad_app"
    token = issuer.mint(overrides={"azp": other_app, "roles": ["Custom.Role"]})
    assert (await v.validate(f"Bearer {token}")).app_id == other_app


async def test_clock_skew_of_five_minutes_is_tolerated(validator, issuer):
    claims = issuer.claims()
    token = issuer.mint(overrides={"exp": claims["iat"] - 200, "iat": claims["iat"] - 4000,
                                   "nbf": claims["iat"] - 4000})
    assert (await validator.validate(f"Bearer {token}")).version == "2.0"
    token = issuer.mint(overrides={"nbf": claims["iat"] + 200})
    assert (await validator.validate(f"Bearer {token}")).version == "2.0"


async def test_verified_token_is_cached_until_it_expires(validator, issuer, monkeypatch):
    auth = issuer.authorization()
    await validator.validate(auth)
    calls = []
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    for _ in range(5):
        await validator.validate(auth)
    assert calls == [], "a cached token must not be verified again"
    validator._clock = lambda: 10**12  # far past exp: the cached entry is dropped and verified again
    await validator.validate(auth)
    assert calls == [1], "an expired cache entry must be verified again"


async def test_unknown_kid_flood_fetches_keys_at_most_once_per_cooldown(issuer, keys):
    validator = TokenValidator(Settings.from_env(issuer.relay_env()), keys)
    keys._clock.now += 301  # past the cooldown that follows the start-up fetch
    before = issuer.jwks_requests
    for i in range(50):
        token = issuer.mint(key=new_rsa_key() if i == 0 else issuer.key, kid=f"forged-{i}")
        assert await reason_for(validator, f"Bearer {token}") == "unknown_kid"
    assert issuer.jwks_requests - before == 1, "forged kids must not make us hammer the key endpoint"
    keys._clock.now += 301  # past the cooldown: one more refetch is allowed
    await reason_for(validator, "Bearer " + issuer.mint(kid="forged-late"))
    assert issuer.jwks_requests - before == 2


async def test_rotated_key_is_picked_up_on_first_unknown_kid(issuer, keys):
    validator = TokenValidator(Settings.from_env(issuer.relay_env()), keys)
    keys._clock.now += 301
    issuer.rotate("dev-key-2")
    caller = await validator.validate("Bearer " + issuer.mint(kid="dev-key-2"))
    assert caller.app_id == AZURE_MONITOR_APP_ID


async def test_last_known_good_keys_survive_a_metadata_outage(issuer, keys):
    validator = TokenValidator(Settings.from_env(issuer.relay_env()), keys)
    issuer.fail_requests = True
    assert not await keys.refresh()
    assert keys.loaded
    assert (await validator.validate(issuer.authorization())).version == "2.0"


async def test_keys_not_loaded_when_issuer_is_down_at_start(issuer):
    issuer.fail_requests = True
    k = SigningKeys(issuer.metadata_url, issuer.tenant_id)
    await k.start()
    try:
        assert not k.loaded
        v = TokenValidator(Settings.from_env(issuer.relay_env()), k)
        assert await reason_for(v, issuer.authorization()) == "unknown_kid"
    finally:
        await k.stop()


async def test_metadata_issuer_template_is_substituted(issuer, keys):
    assert keys.issuer == issuer.v2_issuer


async def test_token_cache_holds_at_most_cache_size_and_drops_the_oldest(validator, issuer, monkeypatch):
    monkeypatch.setattr("relay.intake.tokens.CACHE_SIZE", 3)
    headers = [f"Bearer {issuer.mint(overrides={'uti': f'token-{i}'})}" for i in range(4)]
    for header in headers:
        await validator.validate(header)
    assert len(validator._cache) == 3, f"the cache grew past its bound to {len(validator._cache)} entries"
    calls = []
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    for header in headers[1:]:
        await validator.validate(header)
    assert calls == [], "the three newest tokens must still be cached"
    await validator.validate(headers[0])
    assert calls == [1], "the oldest token, dropped to keep the bound, must be verified again"


async def test_token_cache_keeps_no_token_text(validator, issuer):
    header = issuer.authorization()
    await validator.validate(header)
    token = header.split(" ", 1)[1]
    assert all(isinstance(k, bytes) and len(k) == 32 for k in validator._cache), "cache keys must be digests"
    assert token not in repr(validator._cache), "the cache must not hold the token itself"


async def test_refused_header_is_never_cached(validator, issuer):
    bad = "Bearer " + issuer.mint(overrides={"aud": "api://someone-else"})
    for _ in range(2):
        assert await reason_for(validator, bad) == "bad_audience"
    assert await reason_for(validator, "Bearer " + "x" * 9000) == "oversized"
    assert len(validator._cache) == 0, "a refused token must not enter the cache"
