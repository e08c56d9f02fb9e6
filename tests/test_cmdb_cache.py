"""The CMDB lookup cache (relay.targets.cmdb_cache): TTLs, the short "not found" TTL, the bound,
invalidation, shared lookups, and the options every CI-binding kind takes."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.targets import TargetError, bmc_helix, request_tracker, servicenow
from relay.targets.cmdb_cache import CACHE_OPTIONS, CacheSettings, CICache, Hit, ci_key
from relay.targets.target_config import TargetConfigError
from relay.targets.vendor_api import CIRef

SETTINGS = CacheSettings(size=3, ttl_seconds=300, miss_ttl_seconds=30)


@pytest.mark.parametrize(
    ("value", "asked_after", "expected"),
    [
        ("sys-1", 0, Hit("sys-1")),
        ("sys-1", 299.9, Hit("sys-1")),
        ("sys-1", 300, None),  # the TTL is over
        (None, 0, Hit(None)),  # "not found" is an answer too...
        (None, 29.9, Hit(None)),
        (None, 30, None),  # ... kept for the short TTL only
    ],
)
def test_answers_are_kept_for_their_ttl(value, asked_after, expected):
    cache: CICache[str] = CICache(SETTINGS)
    cache.put("web-01", value, now=1000)
    assert cache.get("web-01", now=1000 + asked_after) == expected


def test_the_defaults_are_the_documented_ones():
    assert CacheSettings() == CacheSettings(size=10_000, ttl_seconds=300, miss_ttl_seconds=30)
    assert {k: b.default for k, b in CACHE_OPTIONS.items()} == {
        "cmdb_cache_size": 10_000, "cmdb_cache_ttl_seconds": 300, "cmdb_cache_miss_ttl_seconds": 30}


def test_the_least_recently_used_entry_goes_first_when_full():
    cache: CICache[str] = CICache(SETTINGS)
    for n, name in enumerate(("a", "b", "c")):
        cache.put(name, f"sys-{name}", now=n)
    assert cache.get("a", now=5) == Hit("sys-a")  # a is now the most recently used
    cache.put("d", "sys-d", now=6)
    assert len(cache) == 3
    assert cache.get("b", now=7) is None, "b was the least recently used and should have gone"
    assert [cache.get(k, now=7) for k in ("a", "c", "d")] == [Hit("sys-a"), Hit("sys-c"), Hit("sys-d")]


def test_invalidate_forgets_the_entry():
    cache: CICache[str] = CICache(SETTINGS)
    cache.put("web-01", "sys-1", now=0)
    assert cache.invalidate("web-01") is True
    assert cache.get("web-01", now=1) is None
    assert cache.invalidate("web-01") is False


def test_size_zero_turns_the_cache_off():
    cache: CICache[str] = CICache(CacheSettings(size=0))
    cache.put("web-01", "sys-1", now=0)
    assert cache.get("web-01", now=0) is None and len(cache) == 0


def test_ci_key_ignores_case_as_azure_lower_cases_resource_ids():
    assert ci_key(CIRef("/subscriptions/S/VM", "VM")) == ci_key(CIRef("/subscriptions/s/vm", "vm"))
    assert ci_key(CIRef(None, "web-01")) != ci_key(CIRef("/subscriptions/s/web-01", "web-01"))


operations = st.lists(
    st.tuples(st.sampled_from(["put", "put_none", "get", "invalidate"]), st.sampled_from("abcde"),
              st.floats(min_value=0, max_value=100)),
    max_size=40,
)


@given(operations)
def test_behaves_like_a_dictionary_with_expiry_bounded_in_size(ops):
    """Model: a dict of key -> (value, good until). The cache never answers what the model would not,
    never holds more than its size, and any answer it gives is the model's."""
    cache: CICache[str] = CICache(SETTINGS)
    model: dict[str, tuple[str | None, float]] = {}
    now = 0.0
    for op, key, step in ops:
        now += step
        if op == "put":
            cache.put(key, f"v-{key}-{now}", now)
            model[key] = (f"v-{key}-{now}", now + SETTINGS.ttl_seconds)
        elif op == "put_none":
            cache.put(key, None, now)
            model[key] = (None, now + SETTINGS.miss_ttl_seconds)
        elif op == "invalidate":
            cache.invalidate(key)
            model.pop(key, None)
        else:
            got = cache.get(key, now)
            fresh = key in model and now < model[key][1]
            if got is not None:
                assert fresh and got == Hit(model[key][0]), (key, got, model.get(key))
        assert len(cache) <= SETTINGS.size


# -- lookup: the async part ------------------------------------------------------------------------

async def test_concurrent_lookups_of_one_ci_share_one_fetch():
    cache: CICache[str] = CICache(SETTINGS, clock=lambda: 0.0)
    calls = 0
    gate = asyncio.Event()

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "sys-1"

    waiting = [asyncio.create_task(cache.lookup("web-01", fetch)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == ["sys-1"] * 20
    assert calls == 1
    assert await cache.lookup("web-01", fetch) == "sys-1" and calls == 1


async def test_a_failed_fetch_is_not_cached_and_reaches_every_waiter():
    now = [0.0]
    cache: CICache[str] = CICache(SETTINGS, clock=lambda: now[0])
    gate = asyncio.Event()

    async def failing() -> str:
        await gate.wait()
        raise TargetError("503", retryable=True)

    waiting = [asyncio.create_task(cache.lookup("web-01", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, TargetError) for r in results), results

    async def working() -> str:
        return "sys-2"

    assert await cache.lookup("web-01", working) == "sys-2"


async def test_a_cancelled_fetch_gives_the_other_waiters_a_retryable_error():
    cache: CICache[str] = CICache(SETTINGS, clock=lambda: 0.0)

    async def hangs() -> str:
        await asyncio.Event().wait()
        return "never"

    first = asyncio.create_task(cache.lookup("web-01", hangs))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.lookup("web-01", hangs))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(TargetError) as caught:
        await second
    assert caught.value.retryable


async def test_a_lookup_after_the_ttl_fetches_again():
    now = [0.0]
    cache: CICache[str] = CICache(SETTINGS, clock=lambda: now[0])
    answers = iter(["sys-old", "sys-new"])

    async def fetch() -> str:
        return next(answers)

    assert await cache.lookup("web-01", fetch) == "sys-old"
    now[0] = 299.0
    assert await cache.lookup("web-01", fetch) == "sys-old"
    now[0] = 300.0
    assert await cache.lookup("web-01", fetch) == "sys-new"


# -- the options, on every kind that binds CIs -------------------------------------------------------

KINDS = [
    (servicenow, {"kind": "servicenow", "auth": {"type": "basic", "username": "u", "password_env": "P"}}),
    (bmc_helix, {"kind": "bmc_helix", "auth": {"type": "ar_jwt", "username": "u", "password_env": "P"}}),
    (request_tracker, {"kind": "request_tracker", "auth": {"type": "token", "token_env": "P"}}),
]


@pytest.mark.parametrize(("module", "block"), KINDS)
def test_every_ci_binding_kind_reads_the_cache_options(module, block):
    target = module.from_config(
        "t", {**block, "base_url": "https://itsm.example", "cmdb_cache_size": 50, "cmdb_cache_ttl_seconds": 60,
              "cmdb_cache_miss_ttl_seconds": 0}, env={"P": "x"})
    assert target.ci_cache.settings == CacheSettings(size=50, ttl_seconds=60, miss_ttl_seconds=0)
    default = module.from_config("t", {**block, "base_url": "https://itsm.example"}, env={"P": "x"})
    assert default.ci_cache.settings == CacheSettings()


@pytest.mark.parametrize(("module", "block"), KINDS)
@pytest.mark.parametrize(("key", "value"), [("cmdb_cache_size", -1), ("cmdb_cache_ttl_seconds", 0),
                                            ("cmdb_cache_miss_ttl_seconds", "soon"), ("cmdb_cache_size", 2.5)])
def test_a_bad_cache_option_is_refused_by_name(module, block, key, value):
    with pytest.raises(TargetConfigError) as caught:
        module.from_config("t", {**block, "base_url": "https://itsm.example", key: value}, env={"P": "x"})
    assert [k for k, _ in caught.value.problems] == [key], str(caught.value)
    assert CACHE_OPTIONS[key].describe() in str(caught.value)
