"""Per-target `rate_limit_per_second` (relay.delivery.rate_limit): the token bucket on a clock we
move, 429s lowering the rate and its recovery, the limiter the worker awaits, and the config key."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from relay import schema
from relay.delivery.config import ConfigError, parse_config
from relay.delivery.rate_limit import (
    LOWER_AT_MOST_EVERY,
    MIN_FACTOR,
    RECOVERY_SECONDS,
    RateLimited,
    RateLimiter,
    TokenBucket,
)
from relay.delivery.worker import Worker
from relay.targets import TargetError
from tests.conftest import MINIMAL_TARGET_BLOCKS
from tests.test_worker import FakeTarget, SpyStore, accept, alert_body, drained, make_config, metric, until


def sends(bucket: TokenBucket, arrivals: list[float]) -> list[float]:
    """When each call goes out: it arrives, reserves a token, waits what the bucket says."""
    return [t + bucket.reserve(t) for t in arrivals]


def sent_within(times: list[float], start: float, end: float) -> int:
    return sum(1 for t in times if start <= t < end)


@pytest.mark.parametrize(
    ("rate", "calls_at_zero", "waits"),
    [
        (10, 12, [0.0] * 10 + [0.1, 0.2]),  # a second's burst, then one every 1/rate
        (0.5, 3, [0.0, 2.0, 4.0]),  # a burst of at least one call
        (0, 5, [0.0] * 5),  # 0: no limit
    ],
)
def test_reserve_table(rate, calls_at_zero, waits):
    bucket = TokenBucket(rate)
    assert [bucket.reserve(0.0) for _ in range(calls_at_zero)] == pytest.approx(waits)


def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst():
    bucket = TokenBucket(10)
    assert sends(bucket, [0.0] * 10) == [0.0] * 10
    assert bucket.reserve(0.35) == pytest.approx(0.0)  # 3.5 tokens earned
    bucket = TokenBucket(10)
    assert sent_within(sends(bucket, [100.0] * 30), 100.0, 100.0 + 1e-9) == 10, "idle time earns one burst only"


@given(
    rate=st.floats(min_value=0.5, max_value=200),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300),
)
def test_calls_in_any_window_stay_within_burst_plus_rate_times_window(rate, gaps):
    bucket = TokenBucket(rate)
    arrivals = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    times = sends(bucket, arrivals)
    assert all(s >= a for s, a in zip(times, arrivals, strict=True)), "a call went out before it arrived"
    for start in times:
        for window in (0.5, 1.0, 5.0):
            allowed = bucket.burst + rate * window
            assert sent_within(times, start, start + window) <= math.floor(allowed + 1e-6), (start, window)


def test_calls_as_fast_as_allowed_over_ten_seconds_count_the_rate():
    bucket = TokenBucket(20)
    times = sends(bucket, [0.0] * 1000)
    assert sent_within(times, 0, 10) == 20 + 20 * 10 - 1  # the burst, then 20 a second (the 10 s one excluded)


# -- 429 -------------------------------------------------------------------------------------------

def test_a_429_halves_the_rate_and_it_doubles_back_after_each_quiet_period():
    bucket = TokenBucket(16)
    bucket.throttled(100.0, retry_after=5)
    assert bucket.rate_at(100.0) == 8
    assert bucket.rate_at(100.0 + RECOVERY_SECONDS - 0.1) == 8
    assert bucket.rate_at(100.0 + RECOVERY_SECONDS) == 16  # recovered: the configured rate, no more
    assert bucket.rate_at(100.0 + 10 * RECOVERY_SECONDS) == 16


def test_calls_after_a_429_go_at_the_lowered_rate():
    bucket = TokenBucket(20)
    sends(bucket, [0.0] * 20)
    bucket.throttled(0.0, retry_after=1)
    times = sends(bucket, [0.0] * 1000)
    # 10/s (half of 20) and no burst: at 0.1, 0.2, ... 9.9 s (the one at 10 s is outside the window)
    assert sent_within(times, 0, 10) == 10 * 10 - 1


def test_429s_within_a_second_count_once_later_ones_lower_again_down_to_the_floor():
    bucket = TokenBucket(64)
    for t in (0.0, 0.2, LOWER_AT_MOST_EVERY - 0.01):
        bucket.throttled(t, retry_after=None)
    assert bucket.rate_at(1.0) == 32
    for n in range(1, 10):
        bucket.throttled(n * 2.0, retry_after=None)
    assert bucket.rate_at(20.0) == 64 * MIN_FACTOR


def test_a_long_retry_after_holds_the_lowered_rate_that_long():
    bucket = TokenBucket(10)
    bucket.throttled(0.0, retry_after=120)
    assert bucket.rate_at(119.0) == 5 and bucket.rate_at(120.0) == 10


def test_without_a_configured_rate_a_429_changes_nothing():
    bucket = TokenBucket(0)
    bucket.throttled(0.0, retry_after=60)
    assert bucket.reserve(0.0) == 0.0


@pytest.mark.parametrize("rate", [-1, math.inf, math.nan])
def test_a_bad_rate_is_refused_by_name(rate):
    with pytest.raises(ValueError, match="rate_limit_per_second"):
        TokenBucket(rate)


# -- the limiter the worker awaits ---------------------------------------------------------------

async def test_the_limiter_waits_what_the_bucket_says_on_the_clock_it_is_given():
    now = [0.0]
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    limiter = RateLimiter("snow", 4, max_wait=30, clock=lambda: now[0], sleep=sleep)
    for _ in range(6):
        await limiter.acquire()
    assert waited == pytest.approx([0.25, 0.5])


async def test_a_wait_longer_than_max_wait_is_not_waited_out_but_raised_with_when_to_come_back():
    now = [0.0]
    limiter = RateLimiter("snow", 1, max_wait=5, clock=lambda: now[0], sleep=lambda s: asyncio.sleep(0))
    for _ in range(6):
        await limiter.acquire()  # waits 0..5 s
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire()
    assert caught.value.retry_in == pytest.approx(6.0)
    assert "rate_limit_per_second" in str(caught.value)
    assert limiter.bucket.reserve(0.0) == pytest.approx(6.0), "the refused call's token was not given back"


# -- through the worker ----------------------------------------------------------------------------

def rate_config(rate: float):
    config = make_config()
    return replace(config, targets={n: replace(t, rate_limit_per_second=rate) for n, t in config.targets.items()})


async def test_the_worker_holds_every_call_to_the_targets_rate(store):
    now = [0.0]
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    target = FakeTarget()
    worker = Worker(store, rate_config(2), {"itsm": target}, clock=lambda: now[0])
    worker.rate_limits["itsm"]._sleep = sleep
    for n in range(3):
        await accept(store, alert_body(guid=f"11111111-0000-4000-8000-00000000000{n}"))
    await worker.start()
    try:
        await until(lambda: drained(store), "three alerts delivered")
    finally:
        await worker.stop(grace_seconds=1)
    assert len(target.calls) == 6  # find + create each
    assert sorted(waited) == pytest.approx([0.5, 1.0, 1.5, 2.0]), "2/s: two at once, then one every 0.5 s"


async def test_a_call_whose_turn_is_too_far_off_goes_back_to_the_store_without_using_an_attempt(store):
    now = [0.0]

    async def sleep(seconds: float) -> None:  # waits within timeout_seconds (5) are waited out
        pass

    target = FakeTarget()
    spy = SpyStore(store)
    worker = Worker(spy, rate_config(0.3), {"itsm": target}, clock=lambda: now[0])
    worker.rate_limits["itsm"]._sleep = sleep
    await accept(store, alert_body(guid="11111111-0000-4000-8000-000000000001"))
    await accept(store, alert_body(guid="11111111-0000-4000-8000-000000000002"))
    await worker.start()
    try:
        # 0.3/s: the first alert's find and create fit; the second's find is 6.7 s away, over 5.
        await until(lambda: spy.counted, "the second alert bounced off the rate limit")
        assert spy.counted[0] is False, "a call that was never sent used up an attempt"
        assert "rate_limit_per_second" in spy.errors[0]
        assert metric(worker, "relay_deliveries_total", target="itsm", outcome="rate_limited") >= 1
        now[0] = 100.0  # time passes: the bucket has room again
        await until(lambda: drained(store), "both alerts delivered")
    finally:
        await worker.stop(grace_seconds=1)
    assert len(target.tickets) == 2 and not any(spy.counted)


async def test_a_429_through_the_worker_lowers_the_targets_rate(store):
    target = FakeTarget()
    target.fail["create"] = [TargetError("429", retryable=True, retry_after=1, status=429)]
    worker = Worker(store, rate_config(1000), {"itsm": target})
    await accept(store, alert_body())
    await worker.start()
    try:
        await until(lambda: drained(store), "delivered after the 429")
        assert worker.rate_limits["itsm"].bucket.rate_at(worker._clock()) == 500
    finally:
        await worker.stop(grace_seconds=1)


async def test_no_rate_limit_by_default(store):
    worker = Worker(store, make_config(), {"itsm": FakeTarget()})
    assert worker.rate_limits["itsm"].bucket.rate == 0 == schema.RATE_LIMIT_PER_SECOND.default


@pytest.fixture
async def store(tmp_path):
    from relay.store.sqlite import SqliteStore

    s = SqliteStore(tmp_path / "relay.db")
    await s.open()
    yield s
    await s.close()


# -- the config key --------------------------------------------------------------------------------

CONFIG = """\
targets:
  snow:
    kind: servicenow
    base_url: https://example.service-now.com
    auth: {{type: basic, username: relay, password_env: SN_PASSWORD}}
    {line}
routes:
  - target: snow
"""


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("2.5", 2.5), ("10000", 10000.0)])
def test_rate_limit_per_second_is_read_for_the_delivery_core(value, expected):
    config = parse_config(CONFIG.format(line=f"rate_limit_per_second: {value}"), check_target_options=True)
    assert config.targets["snow"].rate_limit_per_second == expected


def test_rate_limit_per_second_defaults_to_off():
    config = parse_config(CONFIG.format(line=""), check_target_options=True)
    assert config.targets["snow"].rate_limit_per_second == 0


@pytest.mark.parametrize("value", ["-1", "10001", "fast", "true"])
def test_a_bad_rate_limit_per_second_is_refused_with_its_line_and_bound(value):
    with pytest.raises(ConfigError) as caught:
        parse_config(CONFIG.format(line=f"rate_limit_per_second: {value}"), check_target_options=True)
    [problem] = caught.value.problems
    assert problem.path == "targets.snow.rate_limit_per_second" and problem.line == 6, problem
    assert schema.RATE_LIMIT_PER_SECOND.describe() in problem.message


@pytest.mark.parametrize(("kind", "rate"), [("pagerduty", 2.0), ("jira_service_management", 5.0), ("servicenow", 0.0)])
def test_a_kind_that_declares_its_apis_pace_gets_it_unless_the_target_sets_one(kind, rate):
    def config(block: dict) -> str:
        return yaml.safe_dump({"targets": {"t": block}, "routes": [{"target": "t"}]})

    block = MINIMAL_TARGET_BLOCKS[kind]
    assert parse_config(config(block)).targets["t"].rate_limit_per_second == rate
    assert parse_config(config({**block, "rate_limit_per_second": 7})).targets["t"].rate_limit_per_second == 7
