"""When to try a target again: exponential backoff with full jitter, and a circuit breaker per target.

Both are plain objects with the clock and the randomness passed in, so tests drive them exactly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from enum import IntEnum


def backoff_delay(
    failures: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before the next attempt after `failures` failed ones (1 = the first failure).

    Full jitter (a uniform draw below the exponential ceiling) spreads retries of many events that
    failed together; a server's Retry-After is a floor, never shortened by the jitter.
    """
    ceiling = min(cap, base * (2 ** max(0, failures - 1)))
    delay = rng() * ceiling
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class CircuitState(IntEnum):
    CLOSED = 0  # calls go through
    OPEN = 1  # calls are refused until open_seconds have passed
    HALF_OPEN = 2  # one probe call goes through; its outcome closes or reopens the circuit


class CircuitOpen(Exception):
    """The target's circuit is open: do not call it; try again in `retry_in` seconds."""

    def __init__(self, target: str, retry_in: float) -> None:
        super().__init__(f"{target}: circuit open after repeated failures; next probe in {retry_in:.1f}s")
        self.retry_in = retry_in


class CircuitBreaker:
    """Opens after `failures` consecutive retryable failures; after `open_seconds`, lets one probe through."""

    def __init__(
        self,
        target: str,
        *,
        failures: int,
        open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self.target = target
        self.threshold = failures
        self.open_seconds = open_seconds
        self.clock = clock
        self.on_change = on_change
        self.state = CircuitState.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.probing = False

    def before_call(self) -> None:
        """Raise CircuitOpen unless a call may go now (in half-open state: only the one probe)."""
        if self.state is CircuitState.OPEN:
            waited = self.clock() - self.opened_at
            if waited < self.open_seconds:
                raise CircuitOpen(self.target, self.open_seconds - waited)
            self._set(CircuitState.HALF_OPEN)
        if self.state is CircuitState.HALF_OPEN:
            if self.probing:
                raise CircuitOpen(self.target, self.open_seconds)
            self.probing = True

    def succeeded(self) -> None:
        self.consecutive = 0
        self.probing = False
        if self.state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def failed(self) -> None:
        """A retryable failure (a non-retryable one is the request's fault, not the target's health)."""
        self.consecutive += 1
        self.probing = False
        if self.state is CircuitState.HALF_OPEN or self.consecutive >= self.threshold:
            self.opened_at = self.clock()
            self._set(CircuitState.OPEN)

    def released(self) -> None:
        """The call ended without telling anything about the target's health (e.g. cancelled)."""
        self.probing = False

    def _set(self, state: CircuitState) -> None:
        self.state = state
        if self.on_change is not None:
            self.on_change(state)
