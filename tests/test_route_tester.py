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
from relay.delivery.route_tester import AssumedState, RouteView, StateError, explain, parse_state
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
])
def test_a_state_file_of_the_wrong_shape_names_what_is_wrong(doc, path, message):
    with pytest.raises(StateError) as info:
        parse_state(doc)
    assert info.value.path == path
    assert message in info.value.message


def test_the_state_sections_of_other_features_are_kept_for_their_explainers():
    state = parse_state({"group": {"g": 1}, "flap": {"f": 2}})
    assert state.raw["group"] == {"g": 1} and state.raw["flap"] == {"f": 2}
    assert state.ticket("rt", "any") is None


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
    text = explain(config, alert, at=at, state=parse_state({"group": "g"}), explainers=[window])
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
