"""The worker yields the event loop to a busy intake (relay/delivery/loop_share.py), never stopping."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery.loop_share import (
    INTAKE_BUSY,
    LAG_LIMIT_SECONDS,
    LAG_MEMORY,
    YIELD_SHARE,
    LoopLag,
    capacity_now,
)


@pytest.mark.parametrize(("full", "in_flight", "lag", "expected"), [
    (128, 0, 0.0, 128),  # quiet
    (128, 32, 0.0, 128),  # intake busy, but the loop keeps up: no reason to hold back
    (128, 0, 0.050, 128),  # the loop lags from delivery alone: nobody to yield to
    (128, INTAKE_BUSY - 1, 0.050, 128),  # a few requests are normal traffic
    (128, INTAKE_BUSY, LAG_LIMIT_SECONDS, 128 // YIELD_SHARE),
    (128, 32, 0.050, 16),
    (4, 32, 0.050, 1),  # never below one: delivery is never starved
    (1, 32, 0.050, 1),
])
def test_capacity_table(full: int, in_flight: int, lag: float, expected: int) -> None:
    assert capacity_now(full, intake_in_flight=in_flight, lag_seconds=lag) == expected


@given(st.integers(1, 2048), st.integers(0, 10_000), st.floats(0, 10))
def test_capacity_is_never_zero_nor_above_full(full: int, in_flight: int, lag: float) -> None:
    got = capacity_now(full, intake_in_flight=in_flight, lag_seconds=lag)
    assert 1 <= got <= full


def test_lag_memory_fades_over_quiet_ticks() -> None:
    lag = LoopLag()
    lag.note(0.040)
    assert lag.seconds == pytest.approx(0.040)
    lag.note(0.0)
    assert lag.seconds == pytest.approx(0.040 * LAG_MEMORY)
    lag.note(0.050)
    assert lag.seconds == pytest.approx(0.050)
    quiet_ticks = 0
    while lag.seconds >= LAG_LIMIT_SECONDS:
        lag.note(0.0)
        quiet_ticks += 1
    # A busy spell outlives a dip of a few ticks, and ends a fraction of a second after the loop is quiet.
    assert 5 <= quiet_ticks <= 30


async def test_lag_is_measured_on_a_real_loop() -> None:
    seen: list[float] = []

    class Recording(LoopLag):
        def note(self, late: float) -> None:
            seen.append(late)
            super().note(late)

    lag = Recording()
    lag.start()
    try:
        await asyncio.sleep(0.05)
        assert seen and max(seen) < 0.05
        time.sleep(0.1)  # noqa: ASYNC251 (blocking the loop on purpose: the next tick fires ~0.1 s late)
        await asyncio.sleep(0.03)
        assert max(seen) >= 0.05
    finally:
        await lag.stop()
