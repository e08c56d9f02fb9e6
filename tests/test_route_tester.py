"""`relay route`: golden output for every official sample in tests/samples, the STATE.json shape, the
explainer hook, and that it sends nothing.

The golden files are tests/golden/route/*.txt. After a deliberate change of the output, rewrite them
with `UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_route_tester.py` and review the diff.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import cli
from relay.alerts import parse_alert
from relay.delivery.config import load_config
from relay.delivery.lifecycle import ticket_keys
from relay.delivery.route_state import AssumedState, StateError, parse_state
from relay.delivery.route_tester import RouteView, explain
from tests.conftest import SAMPLES, load_sample
from tests.test_alerts import envelope

GOLDEN = Path(__file__).parent / "golden" / "route"
CONFIG = GOLDEN / "relay.yaml"
AT = "2025-04-15T18:30:00Z"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

# The alertContext-only fragments, wrapped as tests/test_alerts.py wraps them: (monitoringService, signalType).
FRAGMENTS = {
    "context-metric-static.json": ("Platform", "Metric"),
    "context-metric-dynamic.json": ("Platform", "Metric"),
    "context-metric-availability.json": ("Platform", "Metric"),
    "context-log-v1-loganalytics.json": ("Log Analytics", "Log"),
    "context-log-v1-appinsights.json": ("Application Insights", "Log"),
    "context-log-v2.json": ("Log Alerts V2", "Log"),
    "context-log-simple.json": ("Simple Log Alert", "Log"),
    "context-activitylog-administrative.json": ("Activity Log - Administrative", "Activity Log"),
    "context-activitylog-policy.json": ("Activity Log - Policy", "Activity Log"),
    "context-activitylog-autoscale.json": ("Activity Log - Autoscale", "Activity Log"),
    "context-activitylog-security.json": ("Activity Log - Security", "Activity Log"),
    "context-activitylog-servicehealth.json": ("ServiceHealth", "Activity Log"),
    "context-activitylog-resourcehealth.json": ("Resource Health", "Activity Log"),
    "context-prometheus.json": ("Prometheus", "Metric"),
}
SAMPLE_NAMES = sorted(p.name for p in SAMPLES.glob("*.json"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["route", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
        return
    assert path.exists(), f"no golden file {path}; create it with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"relay route output differs from {path} (UPDATE_GOLDEN=1 rewrites it)"


def transcript(argv: list[str], rc: int, out: str, err: str) -> str:
    return f"$ relay route {' '.join(argv)}\n{out}{err}exit {rc}\n"


def alert_file(name: str, tmp_path: Path) -> str:
    """The sample's name in `tmp_path` (the working directory of a golden test, so that the output names
    no directory of this machine); a fragment is wrapped in an envelope first."""
    if name in FRAGMENTS:
        service, signal = FRAGMENTS[name]
        (tmp_path / name).write_text(json.dumps(envelope(service, load_sample(name), signal)))
    else:
        (tmp_path / name).write_bytes((SAMPLES / name).read_bytes())
    return name


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    (tmp_path / CONFIG.name).write_text(CONFIG.read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_sample_is_covered():
    fragments = {n for n in SAMPLE_NAMES if n.startswith("context-")}
    assert fragments == set(FRAGMENTS), "a new fragment in tests/samples needs its envelope here"
    assert len(SAMPLE_NAMES) >= 26


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_golden_output_for_each_official_sample(name, in_tmp, capsys, monkeypatch):
    for secret in ("SNOW_PASSWORD", "RT_TOKEN", "PD_ROUTING_KEY"):
        monkeypatch.delenv(secret, raising=False)
    argv = [CONFIG.name, alert_file(name, in_tmp), "--at", AT]
    rc, out, err = run(capsys, *argv)
    if name.startswith("noncommon-"):
        assert (rc, out) == (1, ""), "a non-common-schema body is refused, as the intake refuses it"
        assert "schemaId: must be 'azureMonitorCommonAlertSchema'" in err
    else:
        assert (rc, err) == (0, ""), err
        assert out.startswith("alert: ") and ("lifecycle: " in out or "forward: " in out)
    check_golden(name.removesuffix(".json") + ".txt", transcript(argv, rc, out, err))


# -- with an assumed state -------------------------------------------------------------------------

# name: (sample, STATE.json, a line the output must hold)
STATES = {
    # Service Health's Resolved notification with its incident's ticket open in RT: it resolves it, with a
    # note carrying the communication.
    "servicehealth-resolves-open-ticket": ("testaction-servicehealth-fired.json", {"tickets": {"rt": {
        "sh-test-ttt-aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e": {
            "ticket_number": "RT-17", "open": True, "last_at": "2025-04-15T18:00:00.000000000Z",
            "alerts": {"sh-test-ttt-aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e":
                       ["2025-04-15T18:00:00.000000000Z", False, "2025-04-15T18:00:00.000000000Z"]}}}}},
        "    lifecycle: resolve (resolved)"),
    # The resolved metric alert, its ServiceNow incident open: resolve.
    "metric-resolved-open-ticket": ("metric-static-resolved.json", {"tickets": {"snow": {"*": {
        "ticket_number": "INC0010001", "open": True,
        "alerts": {"aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e":
                   ["2019-03-22T13:58:24.371321300Z", False, "2019-03-22T13:58:24.371321300Z"]}}}}},
        "    lifecycle: resolve (resolved)"),
    # Another alert on the same (per-CI style) ticket still firing: the resolve is only recorded.
    "metric-resolved-other-alert-firing": ("metric-static-resolved.json", {"tickets": {"snow": {"*": {
        "ticket_number": "INC0010001", "open": True,
        "alerts": {"another-alert": ["2019-03-22T13:00:00.000000000Z", False, "2019-03-22T13:00:00.000000000Z"]}}}}},
        "    lifecycle: record (resolved, other alerts on this ticket still firing)"),
    # A log alert firing again after its ticket was resolved: a new ticket naming the old one, under the
    # next correlation key.
    "log-v2-refire-after-resolved": ("testaction-log-v2-fired.json", {"tickets": {
        "rt": {"*": {"ticket_number": "41", "open": False, "generation": 1,
                     "last_at": "2025-04-01T00:00:00.000000000Z"}}}},
        "    lifecycle: new (fired after resolve (on_refire: new))"),
    # Fired again while its ticket is open (a new episode): a note.
    "smart-detection-fired-again-while-open": ("testaction-smart-detection-fired.json", {"tickets": {"rt": {"*": {
        "ticket_number": "42", "open": True, "last_at": "2021-10-01T00:00:00.000000000Z"}}}},
        "    lifecycle: note (fired again while open)"),
    # The same on the PagerDuty route, whose on_repeat is nothing.
    "metric-fired-again-while-open-on-repeat-nothing": ("testaction-metric-static-fired.json", {"tickets": {"pd": {
        "*": {"ticket_number": "Q2DEF", "open": True, "last_at": "2025-04-15T17:00:00.000000000Z"}}}},
        "    lifecycle: nothing (fired again while open (on_repeat: nothing))"),
}


@pytest.mark.parametrize("name", sorted(STATES))
def test_golden_output_with_an_assumed_state(name, in_tmp, capsys):
    sample, state, expected = STATES[name]
    state_file = in_tmp / f"{name}.state.json"
    state_file.write_text(json.dumps(state, indent=2))
    argv = [CONFIG.name, alert_file(sample, in_tmp), "--at", AT, "--state", state_file.name]
    rc, out, err = run(capsys, *argv)
    assert (rc, err) == (0, ""), err
    assert expected + "\n" in out
    check_golden(f"state-{name}.txt", transcript(argv, rc, out, err) + "\nSTATE.json:\n" + state_file.read_text()
                 + "\n")


# -- noise control: a group, a window, a flap state (tests/golden/route/noise.yaml) ------------------

NOISE_CONFIG = GOLDEN / "noise.yaml"
RT_OPEN = {"ticket_number": "42", "open": True, "last_at": "2025-04-15T17:00:00Z"}
# name: (sample, --at, STATE.json, lines the output must hold)
NOISE = {
    # Three alerts of the group's window so far, no parent: this one, alert N+1, opens the parent and gets
    # no incident of its own (children: note).
    "group-alert-n-plus-1-opens-the-parent": ("testaction-metric-dynamic-fired.json", AT, {"group": {"rt": {
        "alerts": 3, "since": "2025-04-15T18:02:00Z"}}}, [
        "    this alert: note (alert 4 of the window: opens the parent)",
        "    parent: create: 4 alerts of rule test-dynamicmetricalertrule in test-rg since 18:02 UTC",
        "    lifecycle: nothing (grouped: a work note on the parent, no incident of its own)"]),
    # A later alert of the same window, the parent open: a work note on it.
    "group-later-alert-noted-on-the-parent": ("testaction-metric-dynamic-fired.json", AT, {"group": {"rt": {
        "alerts": 7, "firing": 5, "since": "2025-04-15T18:02:00Z",
        "parent": {"ticket_number": "900", "open": True}}}}, [
        "    assumed: 7 other alert(s) in the window, parent 900 open",
        "    this alert: note (alert 8 of the window: noted on the parent)",
        "    parent: note"]),
    # One of the first N: its own incident, as without grouping.
    "group-first-alerts-get-their-own-incident": ("testaction-metric-dynamic-fired.json", AT, {"group": {"rt": {
        "alerts": 1}}}, [
        "    this alert: own (one of the first 3 of the window)",
        "    lifecycle: create (fired, no ticket yet)"]),
    # Inside a maintenance window (mode record), no ticket: the create waits for the window's end.
    "window-record-create-deferred": ("testaction-log-v2-fired.json", AT, {}, [
        "  maintenance: window log-patching is on at --at, until 2025-04-15T20:00:00Z (mode record)",
        "    at its end (2025-04-15T20:00:00Z): create (maintenance window log-patching ended, still firing: "
        "fired, no ticket yet)",
        "    lifecycle: record (inside maintenance window log-patching: create deferred to its end "
        "(2025-04-15T20:00:00.000000000Z))"]),
    # Mode record, the ticket open: a repeat is not noted.
    "window-record-repeat-recorded": ("testaction-log-v2-fired.json", AT, {"tickets": {"rt": {"*": RT_OPEN}}}, [
        "    lifecycle: record (inside maintenance window log-patching (mode record): fired again while open)"]),
    # Mode note (a window written in Europe/Berlin), the ticket open: the repeat is noted.
    "window-note-repeat-noted": ("testaction-log-v1-numresults-fired.json", AT, {"tickets": {"rt": {"*": RT_OPEN}}},
                                 ["  maintenance: window log-v1-freeze is on at --at, until 2025-04-15T20:00:00Z "
                                  "(mode note)",
                                  "    lifecycle: note (fired again while open)"]),
    # No window on at --at: the next run of the one covering the alert.
    "window-next-run": ("testaction-log-v2-fired.json", "2025-04-15T21:00:00Z", {}, [
        "  maintenance: no window on at --at; next log-patching (mode record), 2025-04-22 18:00 to 2025-04-22 20:00 "
        "UTC"]),
    # A grouped alert inside a window: not counted toward the parent; at the end it joins as alert N+1.
    "group-inside-a-window-joins-at-its-end": ("testaction-metric-static-fired.json", AT, {"group": {"rt": {
        "alerts": 3}}}, [
        "    this alert: deferred (inside maintenance window storage-move: not counted toward the parent; it joins "
        "the group at the window's end if still firing)",
        "    at its end, in the group: note (maintenance window ended, still firing: alert 4 of the window: opens "
        "the parent); parent: create",
        "    at its end (2025-04-15T19:00:00Z): record (maintenance window storage-move ended, still firing: noted "
        "on its storm group's parent, no incident of its own)"]),
    # Flapping: the fourth state change in 600 s would resolve the open ticket: the resolve is held, the
    # ticket gets the flapping note, and the group counts the alert firing meanwhile.
    "flap-resolve-held": ("metric-static-resolved.json", AT, {
        "tickets": {"rt": {"*": {"ticket_number": "42", "open": True, "alerts": {
            "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e": ["2019-03-22T13:58:24.3713213Z", False,
                                                     "2019-03-22T13:58:24.3713213Z"]}}}},
        "flap": {"rt": {"*": {"flips": ["2019-03-22T13:55:00Z", "2019-03-22T13:56:00Z",
                                        "2019-03-22T13:58:24.3713213Z"]}}},
        "group": {"rt": {"alerts": 1, "member": {"role": "own"}}}}, [
        "    ticket key aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e: 4 state change(s) counted in the window (from "
        "2019-03-22T13:55:00Z); flapping since 2019-03-22T14:03:16Z",
        "    resolve held until 2019-03-22T14:08:16Z; then, with no re-fire: resolve (held resolve delivered (no "
        "re-fire within the hold): resolved)",
        "    this alert: own (flapping: its resolve is held; the group counts it firing until the hold passes)",
        "    lifecycle: note (flapping: resolve held until 2019-03-22T14:08:16.224631300Z)",
        "      | This alert is flapping: 4 state changes within 600 s. The incident stays open; each resolve is held "
        "300 s and delivered only if the alert does not fire again meanwhile."]),
    # A re-fire while a resolve is held cancels the hold: no note, no second incident.
    "flap-refire-cancels-the-held-resolve": ("testaction-metric-dynamic-fired.json", AT, {
        "tickets": {"rt": {"*": {"ticket_number": "42", "open": True, "last_at": "2025-04-15T18:14:00Z",
                                 "alerts": {"eeeeeeee-4444-5555-6666-ffffffffffff": [
                                     "2025-04-15T18:12:00Z", True, "2025-04-15T18:14:00Z"]}}}},
        "flap": {"rt": {"*": {"flips": ["2025-04-15T18:08:00Z", "2025-04-15T18:10:00Z", "2025-04-15T18:12:00Z",
                                        "2025-04-15T18:14:00Z"],
                              "flapping": "2025-04-15T18:14:00Z",
                              "held": {"at": "2025-04-15T18:14:00Z", "fired_at": "2025-04-15T18:12:00Z"}}}},
        "group": {"rt": {"alerts": 4, "member": {"role": "own", "fired_at": "2025-04-15T18:12:00Z"},
                         "parent": {"ticket_number": "900", "open": True}}}}, [
        "    the held resolve (until 2025-04-15T18:19:00Z) is cancelled by this event",
        "    this alert: own (a flapping member fired again: counted once, the parent is not noted)",
        "    lifecycle: record (flapping: re-fire cancels the held resolve)"]),
}


@pytest.mark.parametrize("name", sorted(NOISE))
def test_golden_output_of_noise_control(name, tmp_path, monkeypatch, capsys):
    sample, at, state, expected = NOISE[name]
    (tmp_path / NOISE_CONFIG.name).write_text(NOISE_CONFIG.read_text())
    monkeypatch.chdir(tmp_path)
    argv = [NOISE_CONFIG.name, alert_file(sample, tmp_path), "--at", at]
    if state:
        state_file = tmp_path / f"{name}.state.json"
        state_file.write_text(json.dumps(state, indent=2))
        argv += ["--state", state_file.name]
    rc, out, err = run(capsys, *argv)
    assert (rc, err) == (0, ""), err
    for line in expected:
        assert line + "\n" in out, f"{name}: missing {line!r}"
    check_golden(f"noise-{name}.txt", transcript(argv, rc, out, err)
                 + (f"\nSTATE.json:\n{json.dumps(state, indent=2)}\n" if state else ""))


def test_the_assumed_state_changes_the_decision(capsys, tmp_path):
    sample = str(SAMPLES / "testaction-smart-detection-fired.json")
    _, fresh, _ = run(capsys, str(CONFIG), sample, "--at", AT)
    state = tmp_path / "s.json"
    state.write_text(json.dumps({"tickets": {"rt": {"*": {"ticket_number": "42", "open": True}}}}))
    _, known, _ = run(capsys, str(CONFIG), sample, "--at", AT, "--state", str(state))
    assert "lifecycle: create (fired, no ticket yet)" in fresh
    assert "lifecycle: note (fired again while open)" in known
    assert "note text:\n      | Azure Monitor alert test-SmartAlertRule fired again" in known


# -- STATE.json ------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc,path,message", [
    ([], "$", "must be a JSON object"),
    ({"tickets": {}, "windows": {}}, "windows", "unknown section; expected one of tickets, group, flap"),
    ({"tickets": []}, "tickets", "must be an object of target names"),
    ({"tickets": {"rt": []}}, "tickets.rt", "must be an object of ticket keys"),
    ({"tickets": {"rt": {"*": "open"}}}, "tickets.rt.*", "must be a ticket record"),
    ({"tickets": {"rt": {"*": {"state": "open"}}}}, "tickets.rt.*.state", "unknown key"),
    ({"tickets": {"rt": {"k": {"open": "yes", "ticket_number": "1"}}}}, "tickets.rt.k.open", "must be true or false"),
    ({"tickets": {"rt": {"k": {"generation": True}}}}, "tickets.rt.k.generation", "must be a whole number"),
    ({"tickets": {"rt": {"k": {"generation": 1.5}}}}, "tickets.rt.k.generation", "must be a whole number"),
    ({"tickets": {"rt": {"k": {"open": True}}}}, "tickets.rt.k.open", "needs its ticket_id or ticket_number"),
    ({"tickets": {"rt": {"k": {"alerts": {"a": ["t", "no", "t"]}}}}}, "tickets.rt.k.alerts.a",
     "must be [firedDateTime, resolved (true/false), time]"),
    ({"tickets": {"rt": {"k": {"ticket_id": 7}}}}, "tickets.rt.k.ticket_id", "must be a string or null"),
    ({"tickets": {"rt": {"k": {"ticket_number": "7"}}}}, "tickets.rt.k", "say whether the ticket is open"),
    ({"tickets": {"rt": {"k": {"last_at": "yesterday"}}}}, "tickets.rt.k.last_at", "must be an ISO 8601 time"),
    ({"tickets": {"rt": {"k": {"alerts": {"a": ["2025-01-01T00:00:00Z", True, "noon"]}}}}}, "tickets.rt.k.alerts.a[2]",
     "must be an ISO 8601 time"),
    ({"group": []}, "group", "must be an object of target names"),
    ({"group": {"rt": 3}}, "group.rt", "must be a group state (an object)"),
    ({"group": {"rt": {"count": 3}}}, "group.rt.count", "unknown key; expected one of alerts, firing, children"),
    ({"group": {"rt": {"alerts": -1}}}, "group.rt.alerts", "must be a whole number, 0 or more (got -1)"),
    ({"group": {"rt": {"alerts": True}}}, "group.rt.alerts", "must be a whole number"),
    ({"group": {"rt": {"alerts": 2, "firing": 3}}}, "group.rt.firing", "must be at most alerts (2)"),
    ({"group": {"rt": {"alerts": 2, "children": 3}}}, "group.rt.children", "must be at most alerts (2)"),
    ({"group": {"rt": {"parent": {"open": True}}}}, "group.rt.parent", "name the parent's ticket_id or ticket_number"),
    ({"group": {"rt": {"parent": {"ticket_number": "1"}}}}, "group.rt.parent", "say whether the parent is open"),
    ({"group": {"rt": {"parent": {"ticket_number": 1, "open": True}}}}, "group.rt.parent.ticket_number",
     "must be a string"),
    ({"group": {"rt": {"parent": {"ticket_number": "1", "open": "yes"}}}}, "group.rt.parent.open",
     "must be true or false"),
    ({"group": {"rt": {"since": "at ten"}}}, "group.rt.since", "must be an ISO 8601 time"),
    ({"group": {"rt": {"member": {"role": "boss"}}}}, "group.rt.member.role",
     "must be one of own, child, note, deferred"),
    ({"group": {"rt": {"member": {"role": "own", "resolved": 0}}}}, "group.rt.member.resolved",
     "must be true or false"),
    ({"flap": []}, "flap", "must be an object of target names"),
    ({"flap": {"rt": []}}, "flap.rt", "must be an object of ticket keys"),
    ({"flap": {"rt": {"*": {"changes": []}}}}, "flap.rt.*.changes", "unknown key; expected one of flips, flapping"),
    ({"flap": {"rt": {"*": {"flips": "2025-01-01T00:00:00Z"}}}}, "flap.rt.*.flips", "must be a list"),
    ({"flap": {"rt": {"*": {"flips": ["2025-01-01T00:00:00Z", "later"]}}}}, "flap.rt.*.flips[1]",
     "must be an ISO 8601 time"),
    ({"flap": {"rt": {"*": {"flapping": 5}}}}, "flap.rt.*.flapping", "must be an ISO 8601 time (got 5)"),
    ({"flap": {"rt": {"*": {"held": {"until": "2025-01-01T00:00:00Z"}}}}}, "flap.rt.*.held.at", "is required"),
    ({"flap": {"rt": {"*": {"held": {"at": "2025-01-01T00:00:00Z", "for": 300}}}}}, "flap.rt.*.held.for",
     "unknown key; expected one of at, fired_at, until"),
])
def test_a_state_file_of_the_wrong_shape_names_what_is_wrong(doc, path, message):
    with pytest.raises(StateError) as info:
        parse_state(doc)
    assert info.value.path == path
    assert message in info.value.message


def test_the_group_and_flap_sections_are_parsed_per_target():
    state = parse_state({"group": {"rt": {"alerts": 4, "firing": 2, "parent": {"ticket_number": "9", "open": True}}},
                         "flap": {"rt": {"*": {"flips": ["2025-04-15T18:00:00Z"],
                                               "held": {"at": "2025-04-15T18:01:00+00:00"}}}}})
    group = state.groups["rt"]
    assert (group.alerts, group.firing, group.children, group.parent.ticket_number, group.parent.open) == \
        (4, 2, 0, "9", True)
    flap = state.flap("rt", "any key")
    assert flap.flips == ("2025-04-15T18:00:00.000000000Z",)
    assert flap.held == {"at": "2025-04-15T18:01:00.000000000Z", "fired_at": "", "until": ""}
    assert state.flap("snow", "k") is None and state.ticket("rt", "any") is None
    assert state.raw["group"]["rt"]["alerts"] == 4


def test_a_ticket_number_alone_stands_for_the_ticket_and_a_key_beats_the_wildcard():
    state = parse_state({"tickets": {"rt": {"*": {"ticket_number": "9", "open": True},
                                            "k1": {"ticket_number": "1", "open": False}}}})
    wildcard = state.ticket("rt", "k2")
    assert (wildcard.ticket_id, wildcard.ticket_number, wildcard.open, wildcard.generation) == ("9", "9", True, 1)
    assert state.ticket("rt", "k1").ticket_number == "1"
    assert state.ticket("snow", "k1") is None


def test_state_times_in_any_iso_form_compare_as_the_lifecycle_compares_them(capsys, tmp_path):
    # A last_at written without fractions ("...17:00:00Z") must still be older than an 18:17:12.851Z event.
    state = parse_state({"tickets": {"pd": {"*": {"ticket_number": "Q", "open": True,
                                                  "last_at": "2025-04-15T19:00:00+02:00",
                                                  "alerts": {"x": ["2025-04-15T16:00:00Z", False,
                                                                   "2025-04-15T16:00:00Z"]}}}}})
    ticket = state.ticket("pd", "k")
    assert ticket.last_at == "2025-04-15T17:00:00.000000000Z"
    assert ticket.alerts["x"].fired_at == "2025-04-15T16:00:00.000000000Z"
    text = explain(load_config(str(CONFIG)), parse_alert(load_sample("testaction-metric-static-fired.json")),
                   at=datetime(2025, 4, 15, 18, 30, tzinfo=UTC), state=state)
    assert "lifecycle: nothing (fired again while open (on_repeat: nothing))" in text


def test_cli_reports_a_bad_state_file_with_its_path(tmp_path, capsys):
    bad = tmp_path / "state.json"
    bad.write_text(json.dumps({"tickets": {"rt": {"*": {"open": 1}}}}))
    rc, out, err = run(capsys, str(CONFIG), str(SAMPLES / "metric-static-resolved.json"), "--state", str(bad))
    assert (rc, out) == (2, "")
    assert err == f"relay: {bad}: tickets.rt.*.open: must be true or false (got 1)\n"
    bad.write_text("{not json")
    rc, _, err = run(capsys, str(CONFIG), str(SAMPLES / "metric-static-resolved.json"), "--state", str(bad))
    assert rc == 2 and err.startswith(f"relay: {bad}: not JSON: ")


# -- the explainer hook ----------------------------------------------------------------------------

def test_each_explainer_adds_its_lines_to_every_matching_route_and_only_those():
    config = load_config(str(CONFIG))
    seen: list[RouteView] = []

    def window(view: RouteView) -> list[str]:
        seen.append(view)
        return [f"maintenance: none at {view.at:%H:%M} ({view.state.raw.get('group', 'no group')})"]

    alert = parse_alert(load_sample("testaction-servicehealth-fired.json"))
    at = datetime(2025, 4, 15, 18, 30, tzinfo=UTC)
    text = explain(config, alert, at=at, state=AssumedState(raw={"group": "g"}), explainers=[window])
    assert text.count("  maintenance: none at 18:30 (g)\n") == 1  # route 1 (rt) alone renders; 4 duplicates it
    assert [(v.route.index, v.target.name, [k.key for k in v.keys]) for v in seen] == \
        [(1, "rt", ["sh-test-ttt-aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"])]
    assert explain(config, alert, at=at, explainers=[]) == explain(config, alert, at=at)


# -- what it explains ------------------------------------------------------------------------------

def test_route_outcomes_are_named(capsys):
    rc, out, _ = run(capsys, str(CONFIG), str(SAMPLES / "testaction-servicehealth-fired.json"), "--at", AT)
    assert rc == 0
    assert "route 0 -> snow: no match (severity: 'Sev4' matches none of Sev0, Sev1, Sev2, Sev3)" in out
    assert "route 1 -> rt: matches (continue)" in out
    assert "route 2 -> hook: no match (monitoring_service: 'ServiceHealth' matches none of CostAlerts)" in out
    assert "route 3 -> pd: no match (custom_properties.customKey1: (absent) matches none of value1)" in out
    assert "route 4 -> rt: matches, but an earlier route already takes this alert to rt" in out
    assert "route 5 -> snow: not tried (route 4 matched and does not continue)" in out


def test_an_alert_no_route_takes_is_said_to_go_nowhere(tmp_path, capsys):
    config = tmp_path / "relay.yaml"
    config.write_text("targets:\n  d: {kind: dry_run}\nroutes:\n  - target: d\n    match: {severity: Sev0}\n")
    rc, out, _ = run(capsys, str(config), str(SAMPLES / "testaction-metric-static-fired.json"), "--at", AT)
    assert rc == 0
    assert out.endswith("no route matches: the relay logs the alert, counts it (relay_unrouted_alerts_total) "
                        "and delivers nothing\n")


def test_an_alert_from_more_than_a_day_after_the_time_given_is_refused_as_the_intake_would(capsys):
    rc, out, _ = run(capsys, str(CONFIG), str(SAMPLES / "testaction-metric-static-fired.json"),
                     "--at", "2025-04-14T18:00:00Z")
    assert rc == 0
    assert "intake: refused with 422 (data.essentials.firedDateTime: lies more than a day in the future" in out
    assert "route 0" not in out


def test_without_at_it_explains_at_the_current_time(capsys):
    before = datetime.now(UTC).replace(microsecond=0)
    rc, out, _ = run(capsys, str(CONFIG), str(SAMPLES / "metric-static-resolved.json"))
    after = datetime.now(UTC)
    assert rc == 0
    [line] = [line for line in out.splitlines() if line.startswith("at: ")]
    at = datetime.strptime(line[4:], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= at <= after + timedelta(seconds=1)


def test_it_builds_no_target_reads_no_secret_and_opens_no_connection(capsys, monkeypatch):
    monkeypatch.setenv("SNOW_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("RT_TOKEN", "rt-secret-token")

    def no_build(*args, **kwargs):
        raise AssertionError("relay route built a target")

    def no_connect(*args, **kwargs):
        raise AssertionError("relay route opened a connection")

    config = load_config(str(CONFIG))  # check-config's validation: placeholders for secrets
    monkeypatch.setattr("relay.targets.build_target", no_build)
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket, "create_connection", no_connect)
    for name in ("metric-static-resolved.json", "testaction-servicehealth-fired.json", "testaction-log-v2-fired.json"):
        text = explain(config, parse_alert(load_sample(name)), at=datetime(2025, 4, 15, 18, 30, tzinfo=UTC),
                       state=AssumedState())
        assert "hunter2-secret" not in text and "rt-secret-token" not in text


@pytest.mark.parametrize("argv_tail,rc,err", [
    (["--at", "yesterday"], 2, "relay: --at 'yesterday': not an ISO 8601 time\n"),
    (["--at", "2025-02-30T00:00:00Z"], 2, "relay: --at '2025-02-30T00:00:00Z': day is out of range for month\n"),
])
def test_a_bad_time_is_refused(argv_tail, rc, err, capsys):
    got = run(capsys, str(CONFIG), str(SAMPLES / "metric-static-resolved.json"), *argv_tail)
    assert got == (rc, "", err)


def test_unusable_input_is_named(tmp_path, capsys):
    sample = str(SAMPLES / "metric-static-resolved.json")
    rc, _, err = run(capsys, str(tmp_path / "missing.yaml"), sample)
    assert rc == 2 and err.startswith(f"relay: cannot read {tmp_path / 'missing.yaml'}: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets:\n  d: {kind: dry_run}\nroutes:\n  - target: nope\n")
    rc, _, err = run(capsys, str(bad), sample)
    assert rc == 2 and err == f"{bad}:4: routes[0].target: no target named 'nope' (targets: d)\n"
    rc, _, err = run(capsys, str(CONFIG), str(tmp_path / "none.json"))
    assert rc == 2 and "cannot read" in err
    twice = tmp_path / "twice.json"
    twice.write_text('{"schemaId": "a", "schemaId": "b"}')
    rc, _, err = run(capsys, str(CONFIG), str(twice))
    assert rc == 1 and err.startswith(f"relay: {twice}: the relay refuses it with 400 (malformed JSON): key 'schemaId'")
    not_alert = tmp_path / "not-alert.json"
    not_alert.write_text('{"schemaId": "azureMonitorCommonAlertSchema", "data": {}}')
    rc, _, err = run(capsys, str(CONFIG), str(not_alert))
    assert (rc, err) == (1, f"relay: {not_alert}: the relay refuses it with 422: data.essentials: is required\n")


# -- it shows what the worker sends ----------------------------------------------------------------

WORKER_CONFIG = """\
targets:
  dry:
    kind: dry_run
    path: {path}
    severity:
      Sev4: {{impact: 3}}
routes:
  - target: dry
    match: {{monitoring_service: ServiceHealth}}
    summary: "SH {{{{ service_health.tracking_id }}}}: {{{{ title }}}}"
    fields: {{category: "{{{{ service_health.incident_type }}}}"}}
  - target: dry
    fields:
      assignment_group: "Azure {{{{ resource_group or 'platform' }}}}"
      origin: azure-monitor
delivery:
  poll_seconds: 0.01
"""


async def test_the_worker_sends_exactly_what_relay_route_shows(tmp_path):
    """The tester and the worker render through the same functions; this pins that they are given the
    same inputs: each create the worker sends to a dry-run target appears verbatim in the tester's output."""
    import asyncio

    from relay.app import build_targets
    from relay.delivery.metrics import DeliveryMetrics
    from relay.delivery.worker import Worker
    from relay.store import Event
    from relay.store.sqlite import SqliteStore

    out = tmp_path / "dry.jsonl"
    config_file = tmp_path / "relay.yaml"
    config_file.write_text(WORKER_CONFIG.format(path=out))
    config = load_config(str(config_file))
    names = ["metric-static-resolved.json", "testaction-servicehealth-fired.json", "testaction-log-v2-fired.json",
             "testaction-budget-fired.json", "testaction-metric-dynamic-fired.json",
             "testaction-activitylog-administrative-fired.json"]
    bodies = []
    for n, name in enumerate(names):
        doc = load_sample(name)
        doc["data"]["essentials"]["alertId"] = (
            f"/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/providers/Microsoft.AlertsManagement/alerts/"
            f"00000000-0000-4000-8000-{n:012d}")
        doc["data"]["essentials"]["monitorCondition"] = "Fired"  # a create for each, whatever the sample
        doc["data"]["essentials"].pop("resolvedDateTime", None)
        if name == "testaction-servicehealth-fired.json":
            doc["data"]["alertContext"]["properties"]["stage"] = "Active"
        bodies.append(json.dumps(doc).encode())
    store = SqliteStore(tmp_path / "relay.db")
    await store.open()
    targets = build_targets(config)
    worker = Worker(store, config, targets, metrics=DeliveryMetrics())
    try:
        for body in bodies:
            assert await store.accept(Event.from_alert(parse_alert(json.loads(body)), body))
        await worker.start()
        for _ in range(1500):
            if await store.pending() == 0:
                break
            await asyncio.sleep(0.01)
        assert await store.pending() == 0, "the worker did not deliver the samples"
    finally:
        await worker.stop(grace_seconds=1)
        for target in targets.values():
            await target.close()
        await store.close()
    creates = {r["correlation_key"]: r["incident"] for r in map(json.loads, out.read_text().splitlines())
               if r["call"] == "create"}
    assert len(creates) == len(names)
    at = datetime.now(UTC)
    for body in bodies:
        alert = parse_alert(json.loads(body))
        shown = explain(config, alert, at=at)
        [key] = ticket_keys(alert, "alert")
        sent = creates[key.key]
        expected = (f"    lifecycle: create (fired, no ticket yet)\n    summary: {sent['summary']}\n    description:\n"
                    + "".join(f"      | {line}".rstrip() + "\n" for line in sent["description"].splitlines())
                    + "    fields:\n"
                    + "".join(f"      {k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in sent["fields"].items()))
        assert expected in shown, f"relay route differs from what the worker sent for {alert.essentials.alert_rule}"
    assert creates["sh-test-ttt-aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"]["summary"] == \
        "SH TEST-TTT: TestActionGroup-TestServiceHealthAlert"


# -- any state: the tester says what decide says ---------------------------------------------------

_times = st.datetimes(min_value=datetime(2019, 1, 1), max_value=datetime(2026, 1, 1)).map(
    lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
_record = st.fixed_dictionaries({"open": st.booleans()}, optional={
    "ticket_number": st.sampled_from(["1", "INC001"]),
    "generation": st.integers(1, 5),
    "last_at": _times,
    "alerts": st.dictionaries(st.sampled_from(["eeeeeeee-4444-5555-6666-ffffffffffff", "other",
                                               "sh-test-ttt-aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"]),
                              st.tuples(_times, st.booleans(), _times).map(list), max_size=2),
}).map(lambda r: r if "ticket_number" in r else {k: v for k, v in r.items() if k != "open"})  # no ticket: no open


@settings(max_examples=60, deadline=None)
@given(sample=st.sampled_from(["testaction-servicehealth-fired.json", "metric-static-resolved.json",
                               "testaction-smart-detection-fired.json", "testaction-metric-static-fired.json"]),
       record=_record)
def test_for_any_assumed_ticket_the_tester_reports_the_lifecycle_decision(sample, record):
    from relay.delivery.lifecycle import decide, event_facts

    config = _config()
    alert = parse_alert(load_sample(sample))
    state = parse_state({"tickets": {t: {"*": record} for t in config.targets}})
    text = explain(config, alert, at=datetime(2025, 4, 16, tzinfo=UTC), state=state)
    for route in config.routes_for(alert):
        if config.targets[route.target].kind == "forward":
            continue
        for key in ticket_keys(alert, route.incident_per):
            decision = decide(event_facts(alert), state.ticket(route.target, key.key), route.policy)
            assert f"    lifecycle: {decision.action} ({decision.reason})\n" in text


@functools.cache
def _config():  # loaded once: hypothesis calls the test many times
    return load_config(str(CONFIG))


def test_the_documented_state_file_is_one_relay_route_accepts():
    import re

    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    section = text[text.index("## `relay route FILE"):]
    doc = json.loads(re.search(r"```json\n(.*?)```", section, re.DOTALL).group(1))
    state = parse_state(doc)
    assert set(doc) == {"tickets", "group", "flap"}, "the example should show every section"
    assert state.groups["rt"].parent.ticket_number == "900" and state.flap("rt", "k").held is not None
    text = explain(_noise_config(), parse_alert(load_sample("testaction-metric-dynamic-fired.json")),
                   at=datetime(2025, 4, 15, 18, 30, tzinfo=UTC), state=state)
    assert "    assumed: 7 other alert(s) in the window, parent 900 open\n" in text


@functools.cache
def _noise_config():
    return load_config(str(NOISE_CONFIG))


@settings(max_examples=60, deadline=None)
@given(sample=st.sampled_from(["testaction-metric-static-fired.json", "testaction-metric-dynamic-fired.json",
                               "metric-static-resolved.json", "testaction-log-v2-fired.json"]),
       record=_record, alerts=st.integers(0, 8), at_minute=st.sampled_from([0, 30, 90, 180]))
def test_for_any_assumed_state_the_noise_tester_reports_what_the_core_decides(sample, record, alerts, at_minute):
    """Whatever the state, the lifecycle and group lines are the pure core's decisions, with the window on
    at --at: `decide_with_noise` per key, and `decide_group` (a `note` or `none` alert opens nothing)."""
    from relay.delivery.grouping import decide_group, group_key
    from relay.delivery.lifecycle import decide_with_noise, event_facts, instant
    from relay.delivery.maintenance import active_window
    from relay.delivery.route_state import AssumedGroup

    config = _noise_config()
    alert = parse_alert(load_sample(sample))
    at = datetime(2025, 4, 15, 18, tzinfo=UTC) + timedelta(minutes=at_minute)
    state = parse_state({"tickets": {"rt": {"*": record}}, "group": {"rt": {"alerts": alerts}}})
    text = explain(config, alert, at=at, state=state)
    facts = event_facts(alert)
    window = active_window(config.maintenance, alert, instant(at.isoformat()))
    [route] = config.routes_for(alert)
    role = None
    if route.group is not None:
        gk = group_key(alert, route.group, route.index, facts.fired_at)
        group = decide_group(facts, AssumedGroup(alerts, alerts).state(route.group, facts.alert, facts.fired_at),
                             route.group, route.policy.on_resolve, window=window)
        role = group.role
        assert f"    this alert: {group.role} ({group.reason})\n" in text
        assert gk is not None and f"  group: {gk.key} (" in text
    for key in ticket_keys(alert, route.incident_per):
        decision = decide_with_noise(facts, state.ticket("rt", key.key), route.policy, window=window,
                                     damping=route.damping)
        if role is not None and not role.own_key:
            assert "    lifecycle: nothing (grouped: " in text
        else:
            assert f"    lifecycle: {decision.action} ({decision.reason})\n" in text
