"""How the delivery worker shares the event loop with intake: intake first, delivery never starved.

`relay serve` runs intake and delivery on one event loop. In a storm both want all of it, and every
delivery in flight puts callbacks on the loop ahead of the next request's, so the 202s slow down while
the worker catches up. Intake's answer is the urgent one (Azure gives up on a slow webhook and retries),
and an accepted alert is already durable, so when intake is busy and the loop is running late the
worker shrinks the number of deliveries it keeps in flight to a floor; it never stops delivering. The
decision (`capacity_now`) is a pure function; `LoopLag` measures how late the loop runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

INTAKE_BUSY = 4  # requests in flight at intake from which it counts as busy
LAG_LIMIT_SECONDS = 0.005  # the loop runs this late or later: it has more work than it keeps up with
YIELD_SHARE = 8  # while yielding, the worker keeps 1/8 of its deliveries in flight (at least one)
LAG_TICK_SECONDS = 0.01  # how often the lag is sampled
LAG_MEMORY = 0.9  # each quiet tick keeps 90 % of the lag remembered: a busy spell ends ~0.1 s after it did


def capacity_now(full: int, *, intake_in_flight: int, lag_seconds: float) -> int:
    """Deliveries the worker may have in flight now: `full`, or 1/YIELD_SHARE of it (at least 1) while
    intake has INTAKE_BUSY or more requests in flight and the loop lags LAG_LIMIT_SECONDS or more."""
    if intake_in_flight >= INTAKE_BUSY and lag_seconds >= LAG_LIMIT_SECONDS:
        return max(1, full // YIELD_SHARE)
    return full


class LoopLag:
    """How late the event loop runs: a timer every LAG_TICK_SECONDS notes how much later than asked it
    fired. `seconds` is the latest lateness, or LAG_MEMORY of the one before when that is more (a short
    memory: in a storm the lag swings between 2 and 15 ms from one tick to the next, and the worker must
    not refill to full capacity at every dip)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = 0.0
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def note(self, late: float) -> None:
        self.seconds = max(late, self.seconds * LAG_MEMORY)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            asked = self._clock() + LAG_TICK_SECONDS
            await asyncio.sleep(LAG_TICK_SECONDS)
            self.note(max(0.0, self._clock() - asked))
