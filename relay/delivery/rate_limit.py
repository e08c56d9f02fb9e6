"""Per-target `rate_limit_per_second`: a token bucket in front of every call the worker makes to a
target (find, create, note, resolve, reopen, forward; one may be a few HTTP requests), lowered by 429s.

The bucket holds one second of calls (at least one), so a quiet target can take a short burst. A 429
halves the rate (down to 1/16 of the configured one; more 429s within a second count once, since
those calls were sent at the old rate) and empties the bucket; after each quiet period (30 s, or the
Retry-After when longer) the rate doubles back, up to the configured one. The refused event itself
is retried by the worker, after its Retry-After. With no rate configured (0, the default) nothing
waits and a 429 only delays its own event.

`TokenBucket` is pure (the time is an argument); `RateLimiter` is the shell the worker awaits.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MIN_FACTOR = 1 / 16  # the lowest a run of 429s takes the rate, as a share of the configured one
RECOVERY_SECONDS = 30.0  # quiet time after a 429 before the rate doubles back (or the Retry-After)
LOWER_AT_MOST_EVERY = 1.0  # 429s closer together than this are one signal


@dataclass
class TokenBucket:
    """Calls per second for one target. `rate` 0: no limit."""

    rate: float
    tokens: float = 0.0
    updated: float | None = None
    factor: float = 1.0  # share of `rate` in force since `lowered_at`, before recovery steps
    lowered_at: float | None = None
    hold: float = RECOVERY_SECONDS

    def __post_init__(self) -> None:
        if not (self.rate >= 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate_limit_per_second must be a number >= 0 (got {self.rate!r})")
        self.tokens = self.burst

    @property
    def burst(self) -> float:
        return max(1.0, self.rate)

    def rate_at(self, now: float) -> float:
        """The rate in force at `now` (lowered by 429s, recovering)."""
        return self.rate * self._factor_at(now)[0]

    def reserve(self, now: float) -> float:
        """Take a token for a call at `now`: the seconds to wait before sending it (0: send now)."""
        if self.rate == 0:
            return 0.0
        self._advance(now)
        self.tokens -= 1
        if self.tokens >= 0:
            return 0.0
        return self._time_to_earn(now, -self.tokens)

    def release(self, now: float) -> None:
        """Give back a token reserved for a call that was not sent."""
        if self.rate:
            self._advance(now)
            self.tokens = min(self.burst, self.tokens + 1)

    def throttled(self, now: float, retry_after: float | None = None) -> None:
        """The target answered 429: lower the rate for a while (see the module's docstring)."""
        if self.rate == 0:
            return
        self._advance(now)
        if self.lowered_at is not None and now - self.lowered_at < LOWER_AT_MOST_EVERY:
            return
        self.factor = max(MIN_FACTOR, self._factor_at(now)[0] / 2)
        self.lowered_at = now
        self.hold = max(RECOVERY_SECONDS, retry_after or 0.0)
        self.tokens = min(self.tokens, 0.0)

    # -- the arithmetic ----------------------------------------------------------------------------

    def _factor_at(self, t: float) -> tuple[float, float]:
        """(share of the rate in force at t, when it next changes)."""
        if self.lowered_at is None:
            return 1.0, math.inf
        steps = max(0, math.floor((t - self.lowered_at) / self.hold))
        factor = min(1.0, self.factor * 2**steps)
        if factor >= 1.0:
            return 1.0, math.inf
        return factor, self.lowered_at + (steps + 1) * self.hold

    def _advance(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            t, earned = self.updated, 0.0
            while t < now:
                factor, changes = self._factor_at(t)
                end = min(now, changes)
                earned += (end - t) * self.rate * factor
                t = end
            self.tokens = min(self.burst, self.tokens + earned)
        if self.updated is None or now > self.updated:
            self.updated = now

    def _time_to_earn(self, now: float, tokens: float) -> float:
        t = now
        while True:
            factor, changes = self._factor_at(t)
            per_second = self.rate * factor
            if t + tokens / per_second <= changes:
                return t + tokens / per_second - now
            tokens -= (changes - t) * per_second
            t = changes


class RateLimited(Exception):
    """The call was not sent: its turn under the target's rate is more than `max_wait` away. The worker
    gives the event back to the store for `retry_in` seconds, as it does off an open circuit (no attempt)."""

    def __init__(self, target: str, rate: float, retry_in: float) -> None:
        super().__init__(
            f"{target}: over rate_limit_per_second ({rate:g}/s in force); the next call could go in {retry_in:.1f}s"
        )
        self.retry_in = retry_in


class RateLimiter:
    """The bucket of one target, awaited before each call; a wait over `max_wait` is not waited out
    here (the slot would sit idle past the call's timeout) but raised as `RateLimited`."""

    def __init__(
        self,
        target: str,
        rate: float,
        *,
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.target = target
        self.bucket = TokenBucket(rate)
        self.max_wait = max_wait
        self._clock = clock
        self._sleep = sleep

    async def acquire(self) -> None:
        if self.bucket.rate == 0:
            return
        wait = self.bucket.reserve(self._clock())
        if wait > self.max_wait:
            self.bucket.release(self._clock())
            raise RateLimited(self.target, self.bucket.rate_at(self._clock()), wait)
        if wait > 0:
            await self._sleep(wait)

    def throttled(self, retry_after: float | None) -> None:
        self.bucket.throttled(self._clock(), retry_after)
