"""Flap damping (issue 15): when an alert that changes state too often counts as flapping, and instant arithmetic.

Pure: times are the lifecycle's `instant()` strings (fixed-width UTC with nanoseconds), passed in as data.
A route's `flapping: {window_seconds, transitions, hold_resolve_seconds}` becomes a `Damping`; the
decision that uses it (hold a resolve, cancel it on a re-fire, deliver it once the hold passes) is
`relay.delivery.lifecycle.decide_with_noise` / `decide_due`, and docs/lifecycle.md says the rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from relay.schema import FLAPPING

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Damping:
    """A route's `flapping:` block: more than `transitions` state changes within `window_seconds` is
    flapping; a flapping alert's resolve is held `hold_seconds` (never longer than the window)."""

    window_seconds: float = FLAPPING["window_seconds"].default
    transitions: int = int(FLAPPING["transitions"].default)
    hold_seconds: float = FLAPPING["hold_resolve_seconds"].default

    def __post_init__(self) -> None:
        if self.hold_seconds > self.window_seconds:
            raise ValueError(f"hold_resolve_seconds ({self.hold_seconds:g}) is longer than window_seconds "
                             f"({self.window_seconds:g})")


def to_nanos(instant: str) -> int:
    """An `instant()` string as integer nanoseconds since the epoch (exact: no float rounding)."""
    whole = datetime.strptime(instant[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    frac = instant[20:29] if len(instant) > 20 and instant[19] == "." else "0"
    seconds = (whole - _EPOCH) // timedelta(seconds=1)
    return seconds * _NS + int(frac.ljust(9, "0")[:9])


def from_nanos(nanos: int) -> str:
    seconds, frac = divmod(nanos, _NS)
    return (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def shift(instant: str, seconds: float) -> str:
    """`instant` plus `seconds` (whole milliseconds kept exactly), as an instant string."""
    return from_nanos(to_nanos(instant) + round(seconds * 1000) * 1_000_000)


def to_epoch(instant: str) -> float:
    return to_nanos(instant) / _NS


def from_epoch(seconds: float) -> str:
    """Epoch seconds as an instant, to the microsecond (what a float holds exactly enough, and what
    datetimes carry): a window's end read back from the scheduler is the same instant."""
    return from_nanos(round(seconds * 1_000_000) * 1000)


def recent_flips(flips: Sequence[str], at: str, damping: Damping) -> list[str]:
    """The state changes that count at `at`: those within `window_seconds` before the latest of them and
    `at` (events may arrive out of order: the window is anchored at the latest change seen), plus `at`.
    At most `transitions + 1` are kept (the latest): enough to tell flapping, and the record stays small."""
    latest = max([at, *flips])
    since = shift(latest, -damping.window_seconds)
    return sorted({f for f in (*flips, at) if f > since})[-(damping.transitions + 1):]


def is_flapping(flips: Sequence[str], damping: Damping) -> bool:
    """More than `transitions` state changes in the window (`flips` from `recent_flips`)."""
    return len(flips) > damping.transitions


def flapping_note(flips: Sequence[str], damping: Damping) -> str:
    return (f"This alert is flapping: {len(flips)} state changes within {damping.window_seconds:g} s. The "
            f"incident stays open; each resolve is held {damping.hold_seconds:g} s and delivered only if the "
            "alert does not fire again meanwhile.")
