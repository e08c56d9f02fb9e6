"""Maintenance windows (issue 15): when a window is on, and which alerts it covers.

Pure: every function takes the time as data. A window has a name, a scope (the route match keys plus
resource-id globs), a schedule (one-off start and end in a time zone, or a cron expression plus a
duration, read in the IANA time zone given: croniter over zoneinfo/tzdata) and a mode. What an event
inside a window does is the lifecycle's (`relay.delivery.lifecycle.decide_with_noise`); this module
only answers "which window, until when" (`active_window`) and, for `relay maintenance list`, "which
windows now and next" (`listing`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter

from relay.alerts import Alert
from relay.delivery.flapping import from_epoch, to_epoch
from relay.delivery.lifecycle import InWindow
from relay.delivery.routing import Match
from relay.schema import CRON_HORIZON_YEARS, MaintenanceMode


@dataclass(frozen=True, slots=True)
class Schedule:
    """One-off (`start`, `end`, aware datetimes) or recurring (`cron` read in `zone`, each run lasting
    `duration`)."""

    zone: str = "UTC"
    start: datetime | None = None
    end: datetime | None = None
    cron: str | None = None
    duration: timedelta = timedelta(hours=1)

    def occurrence_at(self, t: datetime) -> tuple[datetime, datetime] | None:
        """The run that is on at `t` (start <= t < end), the one that started last if runs overlap."""
        if self.cron is None:
            assert self.start is not None and self.end is not None
            return (self.start, self.end) if self.start <= t < self.end else None
        # Runs start on whole minutes and last whole minutes, so the minute decides; a storm's events share
        # minutes, and croniter costs milliseconds a call.
        minute = t.astimezone(UTC).replace(second=0, microsecond=0)
        begin = _latest_start(self.cron, self.zone, minute)
        return (begin, begin + self.duration) if begin <= t < begin + self.duration else None

    def next_after(self, t: datetime) -> tuple[datetime, datetime] | None:
        """The first run that starts after `t`; None for a one-off window that has started."""
        if self.cron is None:
            assert self.start is not None and self.end is not None
            return (self.start, self.end) if self.start > t else None
        begin = croniter(self.cron, t.astimezone(ZoneInfo(self.zone))).get_next(datetime).astimezone(UTC)
        return begin, begin + self.duration

    @property
    def length(self) -> timedelta:
        if self.cron is None:
            assert self.start is not None and self.end is not None
            return self.end - self.start
        return self.duration


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    schedule: Schedule
    scope: Match = field(default_factory=Match)
    resource_ids: tuple[str, ...] = ()  # globs over the alert's target resource ids (case-insensitive)
    mode: MaintenanceMode = MaintenanceMode.RECORD

    def covers(self, alert: Alert) -> bool:
        """Every scope key given must match (as a route's match does); `resource_id`: any target id matches
        any of the globs."""
        if not self.scope.matches(alert):
            return False
        if not self.resource_ids:
            return True
        ids = [i.lower() for i in (*alert.essentials.target_ids, *alert.essentials.configuration_items)]
        return any(fnmatch.fnmatchcase(i, g.lower()) for i in ids for g in self.resource_ids)


@lru_cache(maxsize=4096)
def _latest_start(cron: str, zone: str, minute: datetime) -> datetime:
    """The latest run of `cron` (read in `zone`) starting at or before `minute` (a whole UTC minute)."""
    local = minute.astimezone(ZoneInfo(zone))
    if croniter.match(cron, local):
        return minute
    return croniter(cron, local).get_prev(datetime).astimezone(UTC)


def active_window(windows: Iterable[Window], alert: Alert, at: str) -> InWindow | None:
    """The window covering `alert` that is on at instant `at` (an `instant()` string); of several, the one
    ending last (its end is when the deferred incident opens)."""
    t = datetime.fromtimestamp(to_epoch(at), UTC)
    best: tuple[datetime, Window] | None = None
    for w in windows:
        occ = w.schedule.occurrence_at(t) if w.covers(alert) else None
        if occ is not None and (best is None or occ[1] > best[0]):
            best = (occ[1], w)
    if best is None:
        return None
    return InWindow(best[1].name, from_epoch(best[0].timestamp()), str(best[1].mode))


@dataclass(frozen=True, slots=True)
class Listed:
    """One window in `relay maintenance list`: the run on at the time asked about, and the next one."""

    window: Window
    current: tuple[datetime, datetime] | None
    next: tuple[datetime, datetime] | None


def listing(windows: Sequence[Window], at: datetime) -> list[Listed]:
    return [Listed(w, w.schedule.occurrence_at(at), w.schedule.next_after(at)) for w in windows]


def cron_problem(cron: str, zone: str, now: datetime) -> str | None:
    """Why `cron` is no use as a recurring window's schedule (not valid, or no run within
    CRON_HORIZON_YEARS of `now`), or None."""
    if not croniter.is_valid(cron):
        return f"{cron!r} is not a cron expression (minute hour day-of-month month day-of-week)"
    horizon = now + timedelta(days=365 * CRON_HORIZON_YEARS + CRON_HORIZON_YEARS // 4 + 1)
    try:
        first = croniter(cron, now.astimezone(ZoneInfo(zone)), max_years_between_matches=CRON_HORIZON_YEARS
                         ).get_next(datetime)
    except Exception:  # croniter gives up on dates that never come (30 February): CroniterBadDateError
        first = None
    if first is None or first.astimezone(UTC) > horizon:
        return f"{cron!r} does not fire within {CRON_HORIZON_YEARS} years"
    return None


def describe(listed: Sequence[Listed]) -> list[str]:
    """`relay maintenance list`: one line per window, its times in its own zone."""
    if not listed:
        return ["no maintenance windows configured (maintenance: in RELAY_CONFIG)"]
    lines = []
    for item in listed:
        w = item.window
        zone = ZoneInfo(w.schedule.zone)

        def show(span: tuple[datetime, datetime], zone: ZoneInfo = zone) -> str:
            return f"{span[0].astimezone(zone):%Y-%m-%d %H:%M} to {span[1].astimezone(zone):%Y-%m-%d %H:%M}"

        if item.current is not None:
            when = f"ON now, {show(item.current)} {w.schedule.zone}"
        else:
            when = "off"
        upcoming = f"next {show(item.next)} {w.schedule.zone}" if item.next else "no next run"
        schedule = (f"cron {w.schedule.cron!r} for {w.schedule.length.total_seconds() / 60:g} min"
                    if w.schedule.cron else "one-off")
        lines.append(f"{w.name}: {when}; {upcoming}; {schedule}; mode {w.mode}; scope {_scope(w)}")
    return lines


def _scope(w: Window) -> str:
    parts = [f"{k}={','.join(v)}" for k in ("severity", "monitoring_service", "alert_rule", "signal_type",
                                             "subscription", "resource_group") if (v := getattr(w.scope, k))]
    parts += [f"custom_properties.{k}={','.join(v)}" for k, v in w.scope.custom_properties.items()]
    if w.resource_ids:
        parts.append(f"resource_id={','.join(w.resource_ids)}")
    return " ".join(parts) or "every alert"
