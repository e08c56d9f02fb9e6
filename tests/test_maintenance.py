"""Maintenance windows and `flapping:` in RELAY_CONFIG (issue 15): schedules in time zones, scopes, and
`relay check-config` naming each bad key at its line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.alerts import parse_alert
from relay.cli import main
from relay.delivery.config import ConfigError, parse_config
from relay.delivery.flapping import Damping
from relay.delivery.lifecycle import instant
from relay.delivery.maintenance import Schedule, Window, active_window, cron_problem
from relay.delivery.routing import Match
from tests.conftest import load_sample

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)

BASE = """\
targets:
  rt:
    kind: dry_run
routes:
  - target: rt
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="FILE", now=NOW)
    return [p.format("FILE") for p in info.value.problems]


def config(text: str):
    return parse_config(text, source="FILE", now=NOW)


# -- schedules ---------------------------------------------------------------------------------------

def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


SUNDAY_2AM_BERLIN = Schedule(zone="Europe/Berlin", cron="0 2 * * SUN", duration=timedelta(hours=3))


@pytest.mark.parametrize("at, expected", [
    (utc(2026, 12, 6, 0, 59), None),  # 01:59 in Berlin (UTC+1): not yet
    (utc(2026, 12, 6, 1, 0), (utc(2026, 12, 6, 1, 0), utc(2026, 12, 6, 4, 0))),  # 02:00 Berlin: on
    (utc(2026, 12, 6, 3, 59, 59), (utc(2026, 12, 6, 1, 0), utc(2026, 12, 6, 4, 0))),
    (utc(2026, 12, 6, 4, 0), None),  # the end is not inside
    (utc(2026, 12, 7, 1, 30), None),  # Monday
    # Summer time (UTC+2): 02:00 Berlin is 00:00 UTC.
    (utc(2027, 7, 4, 0, 30), (utc(2027, 7, 4, 0, 0), utc(2027, 7, 4, 3, 0))),
])
def test_a_recurring_window_runs_at_its_cron_time_in_its_zone_for_its_duration(at, expected):
    assert SUNDAY_2AM_BERLIN.occurrence_at(at) == expected


def test_the_next_run_of_a_recurring_window_follows_the_time_asked_about():
    assert SUNDAY_2AM_BERLIN.next_after(utc(2026, 12, 2)) == (utc(2026, 12, 6, 1, 0), utc(2026, 12, 6, 4, 0))


def test_a_one_off_window_is_on_from_its_start_until_its_end():
    s = Schedule(start=utc(2026, 12, 24, 21), end=utc(2026, 12, 25, 3))
    assert s.occurrence_at(utc(2026, 12, 24, 20, 59)) is None
    assert s.occurrence_at(utc(2026, 12, 24, 21)) == (utc(2026, 12, 24, 21), utc(2026, 12, 25, 3))
    assert s.occurrence_at(utc(2026, 12, 25, 3)) is None
    assert s.next_after(utc(2026, 12, 1)) == (utc(2026, 12, 24, 21), utc(2026, 12, 25, 3))
    assert s.next_after(utc(2026, 12, 24, 22)) is None


@pytest.mark.parametrize("cron, ok", [
    ("0 2 * * SUN", True),
    ("*/5 * * * *", True),
    ("0 0 29 2 *", True),  # every leap day: within five years
    ("0 0 30 2 *", False),  # 30 February never comes
    ("0 0 31 4 *", False),  # nor 31 April
    ("not cron", False),
    ("61 * * * *", False),
])
def test_cron_expressions_must_be_valid_and_fire_within_five_years(cron, ok):
    assert (cron_problem(cron, "UTC", NOW) is None) is ok


def test_active_window_picks_the_one_in_scope_that_ends_last():
    alert = parse_alert(load_sample("testaction-metric-static-fired.json"))
    rg = alert.essentials.target_ids[0].split("/")[4]
    short = Window("short", Schedule(start=utc(2020, 1, 1), end=utc(2040, 1, 1)))
    longer = Window("longer", Schedule(start=utc(2020, 1, 1), end=utc(2041, 1, 1)), scope=Match(resource_group=(rg,)))
    other = Window("other", Schedule(start=utc(2020, 1, 1), end=utc(2042, 1, 1)), scope=Match(resource_group=("x",)))
    hit = active_window([short, longer, other], alert, instant("2030-01-01T00:00:00Z"))
    assert hit is not None and hit.name == "longer" and hit.until == instant("2041-01-01T00:00:00Z")
    assert active_window([short], alert, instant("2019-01-01T00:00:00Z")) is None


def test_resource_id_globs_match_any_target_of_the_alert_case_insensitively():
    alert = parse_alert(load_sample("testaction-metric-static-fired.json"))
    rid = alert.essentials.target_ids[0]
    always = Schedule(start=utc(2020, 1, 1), end=utc(2040, 1, 1))
    assert Window("w", always, resource_ids=(rid.upper(),)).covers(alert)
    assert Window("w", always, resource_ids=("/subscriptions/*/resourcegroups/*",)).covers(alert)
    assert not Window("w", always, resource_ids=("/subscriptions/none/*",)).covers(alert)


# -- RELAY_CONFIG -------------------------------------------------------------------------------------

WINDOWS = BASE + """\
maintenance:
  - name: sunday-patching
    scope:
      resource_group: rg-prod-*
      resource_id: "/subscriptions/*/providers/Microsoft.Compute/virtualMachines/vm-*"
    schedule: {cron: "0 2 * * SUN", duration_minutes: 180, time_zone: Europe/Berlin}
    mode: note
  - name: christmas-freeze
    schedule: {start: "2026-12-24T22:00", end: "2026-12-26T06:00", time_zone: Europe/Berlin}
"""


def test_windows_parse_with_their_scope_schedule_and_mode():
    cfg = config(WINDOWS)
    sunday, freeze = cfg.maintenance
    assert sunday.name == "sunday-patching" and str(sunday.mode) == "note"
    assert sunday.scope.resource_group == ("rg-prod-*",)
    assert sunday.resource_ids == ("/subscriptions/*/providers/Microsoft.Compute/virtualMachines/vm-*",)
    assert sunday.schedule.duration == timedelta(hours=3)
    assert str(freeze.mode) == "record", "record is the default mode"
    assert freeze.schedule.start == utc(2026, 12, 24, 21) and freeze.schedule.end == utc(2026, 12, 26, 5)


def test_flapping_parses_per_route_and_defaults_its_hold():
    cfg = config(route_with("    flapping: {window_seconds: 600, transitions: 4}\n"))
    assert cfg.routes[0].damping == Damping(window_seconds=600, transitions=4, hold_seconds=600), \
        "the default hold (900 s) is cut to the window"
    longer = config(route_with("    flapping: {window_seconds: 3600, transitions: 4}\n"))
    assert longer.routes[0].damping.hold_seconds == 900
    assert config(BASE).routes[0].damping is None, "no flapping: no damping"


M = BASE + "maintenance:\n  - name: w\n"


def route_with(block: str) -> str:
    return BASE.replace("  - target: rt\n", "  - target: rt\n" + block)


@pytest.mark.parametrize("text, expected", [
    (M + "    schedule: {cron: '0 0 30 2 *', duration_minutes: 60}\n",
     "FILE:8: maintenance[0].schedule.cron: '0 0 30 2 *' does not fire within 5 years"),
    (M + "    schedule: {start: '2026-12-25T06:00', end: '2026-12-24T22:00'}\n",
     "FILE:8: maintenance[0].schedule.end: ends before it starts"),
    (M + "    schedule:\n      start: '2026-12-25T06:00'\n      end: '2026-12-25T06:00'\n",
     "FILE:10: maintenance[0].schedule.end: ends before it starts"),
    (M + "    schedule: {cron: '0 2 * * SUN', duration_minutes: 60, time_zone: Mars/Olympus}\n",
     "FILE:8: maintenance[0].schedule.time_zone: 'Mars/Olympus' is not an IANA time zone"),
    (M + "    schedule: {cron: '0 2 * * SUN'}\n",
     "FILE:8: maintenance[0].schedule.duration_minutes: is required with cron"),
    (M + "    mode: mute\n    schedule: {cron: '0 2 * * SUN', duration_minutes: 5}\n",
     "FILE:8: maintenance[0].mode: must be one of record, note (got 'mute')"),
    (M + "    scope: {rule: x}\n    schedule: {cron: '0 2 * * SUN', duration_minutes: 5}\n",
     "FILE:8: maintenance[0].scope.rule: unknown key"),
    (M + "    schedule: {start: '2026-12-01T00:00', end: '2026-12-20T00:00'}\n",
     "FILE:8: maintenance[0].schedule: lasts longer than retention.delivered_days (14 days)"),
    (BASE + "maintenance:\n  - schedule: {cron: '0 2 * * SUN', duration_minutes: 5}\n",
     "FILE:7: maintenance[0].name: is required"),
    (route_with("    flapping:\n      window_seconds: 600\n      transitions: 4\n      hold_resolve_seconds: 900\n"),
     "FILE:9: routes[0].flapping.hold_resolve_seconds: is longer than window_seconds (900 > 600)"),
    (route_with("    flapping: {transitions: 4}\n"),
     "FILE:6: routes[0].flapping.window_seconds: is required"),
    (route_with("    flapping: {window_seconds: 600, transitions: 1}\n"),
     "FILE:6: routes[0].flapping.transitions: must be a whole number from 2 to 1000 (got 1)"),
])
def test_bad_noise_config_is_reported_at_its_line_and_key(text, expected):
    found = problems(text)
    assert any(p.startswith(expected) for p in found), f"expected {expected!r} among {found}"


def test_check_config_exits_1_naming_a_window_that_ends_before_it_starts(tmp_path, capsys):
    path = tmp_path / "relay.yaml"
    path.write_text(M + "    schedule:\n      start: '2027-01-02T00:00'\n"
                           "      end: '2027-01-01T00:00'\n")
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err.replace(str(path), "FILE")
    assert "FILE:10: maintenance[0].schedule.end: ends before it starts" in err


# -- relay maintenance list ----------------------------------------------------------------------------

def test_maintenance_list_shows_the_current_and_next_runs_in_each_windows_zone(tmp_path, capsys):
    path = tmp_path / "relay.yaml"
    path.write_text(WINDOWS)
    assert main(["maintenance", "list", "--config", str(path), "--at", "2026-12-06T01:30Z"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "sunday-patching: ON now, 2026-12-06 02:00 to 2026-12-06 05:00 Europe/Berlin; next 2026-12-13 02:00 to "
        "2026-12-13 05:00 Europe/Berlin; cron '0 2 * * SUN' for 180 min; mode note; scope resource_group=rg-prod-* "
        "resource_id=/subscriptions/*/providers/Microsoft.Compute/virtualMachines/vm-*",
        "christmas-freeze: off; next 2026-12-24 22:00 to 2026-12-26 06:00 Europe/Berlin; one-off; mode record; "
        "scope every alert",
    ]
    assert main(["maintenance", "list", "--config", str(path), "--at", "2026-12-25T12:00"]) == 0
    out = capsys.readouterr().out
    assert "christmas-freeze: ON now, 2026-12-24 22:00 to 2026-12-26 06:00 Europe/Berlin; no next run" in out


def test_maintenance_list_reads_relay_config_and_refuses_a_bad_time(tmp_path, capsys, monkeypatch):
    path = tmp_path / "relay.yaml"
    path.write_text(BASE)
    monkeypatch.setenv("RELAY_CONFIG", str(path))
    assert main(["maintenance", "list"]) == 0
    assert "no maintenance windows configured" in capsys.readouterr().out
    assert main(["maintenance", "list", "--at", "Christmas"]) == 2
    assert "--at 'Christmas' is not an ISO 8601 time" in capsys.readouterr().err
    monkeypatch.delenv("RELAY_CONFIG")
    assert main(["maintenance", "list"]) == 2


def test_check_config_counts_the_windows(tmp_path, capsys):
    path = tmp_path / "relay.yaml"
    path.write_text(WINDOWS)
    assert main(["check-config", str(path)]) == 0
    assert "1 route(s); 2 maintenance window(s)" in capsys.readouterr().out


def test_the_documented_windows_and_listing_are_what_the_tool_does(tmp_path, capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    example = re.search(r"```yaml\n(maintenance:\n.*?)```", text, re.DOTALL).group(1)
    shown = re.search(r"```\n\$ relay maintenance list --at (\S+)\n(.*?)```", text, re.DOTALL)
    path = tmp_path / "relay.yaml"
    path.write_text(BASE + example)
    assert main(["maintenance", "list", "--config", str(path), "--at", shown.group(1)]) == 0
    assert capsys.readouterr().out == shown.group(2)
    flapping = re.search(r"```yaml\nroutes:\n  - target: snow\n    (flapping: .*?)\n```", text, re.DOTALL).group(1)
    assert config(route_with(f"    {flapping}\n")).routes[0].damping == Damping(600, 4, 300)


@settings(max_examples=200, deadline=None)
@given(cron=st.sampled_from(["0 2 * * SUN", "*/15 * * * *", "30 1 * * *", "0 0 1 * *", "0 3 * 3,10 SUN"]),
       zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kathmandu"]),
       minutes=st.integers(1, 600),
       t=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)))
def test_a_recurring_window_is_on_exactly_when_a_run_started_within_its_duration(cron, zone, minutes, t):
    from croniter import croniter

    schedule = Schedule(zone=zone, cron=cron, duration=timedelta(minutes=minutes))
    occ = schedule.occurrence_at(t)
    # Independently: the runs starting in (t - duration, t], stepping forward with croniter.
    it = croniter(cron, (t - schedule.duration).astimezone(ZoneInfo(zone)))
    starts = []
    while (s := it.get_next(datetime).astimezone(UTC)) <= t:
        starts.append(s)
    if not starts:
        assert occ is None, f"on at {t} though no run started within {minutes} min before"
    else:
        assert occ == (starts[-1], starts[-1] + schedule.duration)
