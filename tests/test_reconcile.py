"""Reconciliation's pure parts: one idempotency key from both paths (real formats from Microsoft's
docs), keys and episodes stored before the change still match, which listed alerts are the relay's
business, the synthesized bodies, the `reconcile:` config section, and a property: reconciliation
plus any interleaving of webhook deliveries gives one incident per firing episode."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest
from azure.mgmt.alertsmanagement import models
from azure.mgmt.alertsmanagement._utils.serialization import Deserializer
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.alerts import parse_alert, parse_alert_json
from relay.delivery.config import ConfigError, parse_config
from relay.delivery.lifecycle import Action, Kind, Policy, decide, event_facts
from relay.delivery.routing import ReconcileSettings
from relay.reconcile.job import _from_sdk
from relay.reconcile.plan import ListedAlert, listed_alert, skip_reason, synthesized, window
from relay.store.base import Event, idempotency_key, key_time
from tests.conftest import SAMPLES

SUB = "11111111-2222-3333-4444-555555555555"
RULE = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Insights/metricAlerts/cpu-high"
SETTINGS = ReconcileSettings(subscriptions=(SUB,), rule_ids=(RULE.lower(),))
_deserialize = Deserializer({k: v for k, v in vars(models).items() if isinstance(v, type)})


def sdk_alert(alert_id: str, essentials: dict[str, Any]) -> models.Alert:
    """An alert as the real SDK deserializes the REST answer."""
    return _deserialize("Alert", {"id": alert_id, "name": "cpu-high", "properties": {"essentials": essentials}})


# -- one key from both paths ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("2019-03-22T13:58:24.3713213Z", "2019-03-22T13:58:24Z"),  # common schema sample (7 digits)
    ("2019-10-30T17:52:32.5802978Z", "2019-10-30T17:52:32Z"),  # Alerts - Get All example (7 digits)
    ("2019-10-30T17:52:32.580297Z", "2019-10-30T17:52:32Z"),  # the SDK's datetime, serialized (6)
    ("2019-10-30T18:25:26.000Z", "2019-10-30T18:25:26Z"),  # the SDK serializing a time with no fraction
    ("2026-05-28T10:05:00Z", "2026-05-28T10:05:00Z"),  # no fraction at all
    ("2019-03-22T15:58:24.3713213+02:00", "2019-03-22T13:58:24Z"),  # an offset
    ("2019-03-22T08:58:24-0500", "2019-03-22T13:58:24Z"),
    ("2019-03-22T13:58:24.37", "2019-03-22T13:58:24Z"),  # no zone: UTC, as Azure's docs say
    ("t", "t"),  # not a time: kept as is
])
def test_key_time_normalises_the_formats_azure_writes(text, expected):
    assert key_time(text) == expected


def test_the_webhook_and_the_api_give_the_same_keys_for_real_sample_times():
    webhook = parse_alert_json((SAMPLES / "metric-static-resolved.json").read_bytes())
    e = webhook.essentials
    fired_text, resolved_text = e.fired_at, e.resolved_at
    assert (fired_text, resolved_text) == ("2019-03-22T13:58:24.3713213Z", "2019-03-22T14:03:16.2246313Z")
    # The same alert listed by the API and read through the SDK (which keeps microseconds only).
    listed = _from_sdk(sdk_alert(e.alert_id, {
        "alertRule": RULE, "monitorCondition": "Resolved", "signalType": "Metric", "monitorService": "Platform",
        "startDateTime": fired_text, "monitorConditionResolvedDateTime": resolved_text,
        "actionStatus": {"isSuppressed": False}, "severity": "Sev3"}))
    assert listed.started_at == "2019-03-22T13:58:24.371321Z"  # precision lost on the way
    fired, resolved = synthesized(listed)
    assert fired.key == Event.from_alert(parse_alert(_as_condition(webhook.raw, "Fired")), b"").key
    assert resolved.key == Event.from_alert(webhook, b"").key
    assert fired.key != resolved.key


def _as_condition(doc: dict[str, Any], condition: str) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    doc["data"]["essentials"]["monitorCondition"] = condition
    doc["data"]["essentials"].pop("resolvedDateTime", None)
    return doc


def test_the_sdk_truncates_so_a_time_just_under_a_second_keeps_its_second():
    listed = _from_sdk(sdk_alert(f"/subscriptions/{SUB}/providers/Microsoft.AlertsManagement/alerts/a", {
        "alertRule": RULE, "monitorCondition": "Fired", "startDateTime": "2024-05-01T10:00:59.9999999Z"}))
    assert key_time(listed.started_at) == "2024-05-01T10:00:59Z"


def test_keys_stored_before_the_change_still_dedup_through_the_episode_marks():
    """An event stored under the old key (the hash of the exact text) and its reconciled twin (new key)
    are two store entries, but the lifecycle sees one episode: the twin is 'already applied'."""
    webhook = parse_alert_json((SAMPLES / "metric-static-resolved.json").read_bytes())
    e = webhook.essentials
    legacy = hashlib.sha256(f"{e.alert_id.lower()}|Resolved|{e.resolved_at}".encode()).hexdigest()
    assert legacy != Event.from_alert(webhook, b"").key  # the key did change...
    fired_doc = _as_condition(webhook.raw, "Fired")
    state = replace(decide(event_facts(parse_alert(fired_doc)), None, Policy()).state, ticket_id="INC1")
    resolving = decide(event_facts(webhook), state, Policy())  # stored marks: 7-digit instants
    assert resolving.action is Action.RESOLVE
    state = resolving.state
    listed = listed_alert(e.alert_id, None, {"alertRule": RULE, "monitorCondition": "Resolved",
                                             "signalType": "Metric", "startDateTime": "2019-03-22T13:58:24.371321Z",
                                             "monitorConditionResolvedDateTime": "2019-03-22T14:03:16.224631Z"})
    for twin in synthesized(listed):
        decision = decide(event_facts(parse_alert_json(twin.body)), state, Policy())
        assert not decision.action.calls_target, (twin.condition, decision)  # ...the episode did not


def test_a_reconciled_resolve_closes_an_episode_a_webhook_opened():
    webhook = parse_alert(_as_condition(parse_alert_json((SAMPLES / "metric-static-resolved.json")
                                                         .read_bytes()).raw, "Fired"))
    state = decide(event_facts(webhook), None, Policy()).state
    state = replace(state, ticket_id="INC1")
    listed = listed_alert(webhook.essentials.alert_id, None, {
        "alertRule": RULE, "monitorCondition": "Resolved", "signalType": "Metric",
        "startDateTime": "2019-03-22T13:58:24.371321Z", "monitorConditionResolvedDateTime": "2019-03-22T14:03:16Z"})
    _, resolved = synthesized(listed)
    facts = event_facts(parse_alert_json(resolved.body))
    assert facts.kind is Kind.RESOLVED
    assert decide(facts, state, Policy()).action is Action.RESOLVE


# -- what is the relay's business --------------------------------------------------------------------

def listed(**kw: Any) -> ListedAlert:
    base = dict(alert_id=f"/subscriptions/{SUB}/providers/Microsoft.AlertsManagement/alerts/x", name="cpu-high",
                rule_id=RULE, condition="Fired", started_at="2024-05-01T10:00:00Z", resolved_at=None,
                signal_type="Metric", monitor_service="Platform", severity="Sev2", suppressed=False)
    return ListedAlert(**{**base, **kw})


@pytest.mark.parametrize(("alert", "reason"), [
    (listed(), None),
    (listed(rule_id=RULE.upper() + "/"), None),  # ARM ids are case-insensitive
    (listed(rule_id=RULE.replace("cpu-high", "other")), "rule"),
    (listed(suppressed=True), "suppressed"),
    (listed(signal_type="Unknown"), "alert_type"),
    (listed(signal_type="Log"), None),
    (listed(condition="Resolved", resolved_at=None), "no_resolved_time"),
    (listed(condition="Resolved", resolved_at="2024-05-01T10:05:00Z"), None),
])
def test_skip_reason(alert, reason):
    assert skip_reason(alert, SETTINGS) == reason


def test_alert_types_setting_narrows_what_is_taken():
    only_logs = ReconcileSettings(subscriptions=(SUB,), rule_ids=(RULE.lower(),), alert_types=("Log",))
    assert skip_reason(listed(), only_logs) == "alert_type"
    assert skip_reason(listed(signal_type="Log"), only_logs) is None


@pytest.mark.parametrize(("essentials", "missing"), [
    ({"monitorCondition": "Fired", "startDateTime": "2024-05-01T10:00:00Z"}, "alertRule"),
    ({"alertRule": RULE, "monitorCondition": "Fired"}, "startDateTime"),
    ({"alertRule": RULE, "startDateTime": "2024-05-01T10:00:00Z"}, "monitorCondition"),
])
def test_an_alert_missing_what_reconciliation_needs_is_named(essentials, missing):
    with pytest.raises(ValueError, match=f"essentials.{missing} is missing"):
        listed_alert("/x", None, essentials)


def test_synthesized_bodies_are_common_schema_marked_as_reconciled():
    fired, resolved = synthesized(listed(condition="Resolved", resolved_at="2024-05-01T10:05:00Z",
                                         target_resource="/subscriptions/s/resourceGroups/rg/providers/x/vm1",
                                         target_resource_name="vm1"))
    doc = json.loads(resolved.body)
    e = doc["data"]["essentials"]
    assert doc["schemaId"] == "azureMonitorCommonAlertSchema"
    assert (e["alertRule"], e["alertRuleID"], e["monitorCondition"]) == ("cpu-high", RULE, "Resolved")
    assert (e["firedDateTime"], e["resolvedDateTime"]) == ("2024-05-01T10:00:00Z", "2024-05-01T10:05:00Z")
    assert e["configurationItems"] == ["vm1"]
    assert doc["data"]["customProperties"] == {"relay.reconciled": True}
    assert json.loads(fired.body)["data"]["essentials"]["monitorCondition"] == "Fired"
    assert [x.condition for x in (fired, resolved)] == ["Fired", "Resolved"]
    assert synthesized(listed())[0].key == idempotency_key(listed().alert_id, "Fired", "2024-05-01T10:00:00.5Z")


def test_window_is_the_look_back_up_to_now():
    now = dt.datetime(2024, 5, 2, 10, 0, 0, 123456, tzinfo=dt.UTC)
    assert window(now, SETTINGS) == "2024-05-01T10:00:00Z/2024-05-02T10:00:00Z"
    six = ReconcileSettings(subscriptions=(SUB,), rule_ids=(RULE,), look_back_hours=6)
    assert window(now, six) == "2024-05-02T04:00:00Z/2024-05-02T10:00:00Z"


# -- the reconcile: section ----------------------------------------------------------------------------

BASE = "targets:\n  d: {kind: dry_run}\nroutes:\n  - target: d\n"


def test_reconcile_section_defaults():
    cfg = parse_config(BASE + f"reconcile:\n  subscriptions: [{SUB.upper()}]\n  rule_ids: [{RULE}]\n")
    assert cfg.reconcile == ReconcileSettings(subscriptions=(SUB,), rule_ids=(RULE.lower(),))
    assert (cfg.reconcile.interval_minutes, cfg.reconcile.look_back_hours) == (5, 24)
    assert cfg.reconcile.alert_types == ("Metric", "Log")
    assert parse_config(BASE).reconcile is None


@pytest.mark.parametrize(("section", "problem"), [
    ("reconcile: {}\n", "reconcile.subscriptions: is required"),
    (f"reconcile:\n  subscriptions: [{SUB}]\n", "reconcile.rule_ids: is required"),
    (f"reconcile:\n  subscriptions: [nope]\n  rule_ids: [{RULE}]\n", "reconcile.subscriptions[0]: must be a"),
    (f"reconcile:\n  subscriptions: [{SUB}]\n  rule_ids: [cpu-high]\n", "reconcile.rule_ids[0]: must be an alert"),
    (f"reconcile:\n  subscriptions: [{SUB}]\n  rule_ids: [{RULE}]\n  alert_types: [Metric, Budget]\n",
     "reconcile.alert_types[1]: must be one of Metric, Log"),
    (f"reconcile:\n  subscriptions: [{SUB}]\n  rule_ids: [{RULE}]\n  interval_minutes: 0\n",
     "reconcile.interval_minutes"),
    (f"reconcile:\n  subscriptions: [{SUB}]\n  rule_ids: [{RULE}]\n  look_back_hours: 48\n"
     "retention: {delivered_days: 1}\n", "reconcile.look_back_hours: must be at most retention.delivered_days"),
    (f"reconcile:\n  subscriptions: [{SUB}]\n  rule_ids: [{RULE}]\n  lookback: 3\n", "reconcile.lookback: unknown key"),
    ("reconcile: [x]\n", "reconcile: must be a mapping"),
])
def test_reconcile_section_problems_name_the_key(section, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + section)
    assert problem in str(err.value), str(err.value)


# -- property: one incident per firing episode ---------------------------------------------------------

FIRST = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)


def _t(minutes: int, micro: int, digits: int) -> str:
    """A time FIRST + minutes, written with `digits` fractional digits as one of the two paths would."""
    value = FIRST + dt.timedelta(minutes=minutes, microseconds=micro)
    frac = f"{value.microsecond:06d}0"[:digits]
    return value.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if digits else "") + "Z"


episodes = st.lists(st.tuples(st.integers(0, 999_999), st.booleans()), min_size=1, max_size=4)


@settings(max_examples=400, deadline=None)
@given(episodes=episodes, data=st.data())
def test_reconciliation_and_any_webhook_interleaving_give_one_incident_per_episode(episodes, data):
    """Episodes of one alert 10 minutes apart (each resolved, the last one maybe still firing). Azure's
    webhooks come in order, each retried or lost; a reconciliation pass (times written with 6, 3 or no
    fractional digits) synthesizes some episodes' events, in time order; the two streams interleave in
    any way. Through the store's key dedup and the lifecycle, in the order accepted:
    - each event has one key, whichever path brought it;
    - no episode opens two incidents;
    - an episode opens one exactly when its Fired is stored before any event of a later episode and
      no ticket is open (nothing moves a ticket backwards; a lost resolve leaves it open, so the next
      episode notes it); with every webhook delivered and nothing reconciled, every episode opens one.
    A reconciled event of a later episode may overtake a delayed webhook of an earlier one: the
    earlier episode then opens nothing (it is over), never a second incident."""
    alert_id = f"/subscriptions/{SUB}/providers/Microsoft.AlertsManagement/alerts/11111111-0000-4000-8000-0000000000aa"
    hooks: list[tuple[int, Event]] = []
    recon: list[tuple[int, Event]] = []
    lost = reconciled_any = False
    for n, (micro, resolved) in enumerate(episodes):
        resolved = resolved or n < len(episodes) - 1  # an older episode always resolved before a new one
        fired_at, resolved_at = 10 * n, 10 * n + 5
        doc = json.loads((SAMPLES / "testaction-metric-static-fired.json").read_text())
        e = doc["data"]["essentials"]
        e.update(alertId=alert_id, monitorCondition="Fired", firedDateTime=_t(fired_at, micro, 7))
        e.pop("resolvedDateTime", None)
        bodies = [json.loads(json.dumps(doc))]
        if resolved:
            e.update(monitorCondition="Resolved", resolvedDateTime=_t(resolved_at, micro, 7))
            bodies.append(doc)
        for body in bodies:
            copies = data.draw(st.integers(0, 2))  # lost, delivered, or retried
            lost = lost or copies == 0
            hooks += [(n, Event.from_alert(parse_alert(body), json.dumps(body).encode()))] * copies
        if data.draw(st.booleans()):
            digits = data.draw(st.sampled_from([0, 3, 6]))
            api = listed_alert(alert_id, None, {
                "alertRule": RULE, "signalType": "Metric", "monitorCondition": "Resolved" if resolved else "Fired",
                "startDateTime": _t(fired_at, micro, digits),
                "monitorConditionResolvedDateTime": _t(resolved_at, micro, digits) if resolved else None})
            recon += [(n, ev) for ev in synthesized(api)]
            reconciled_any = True
    order: list[tuple[int, Event]] = []
    while hooks or recon:  # any interleaving that keeps each stream's own order
        take_hook = bool(hooks) and (not recon or data.draw(st.booleans()))
        order.append((hooks if take_hook else recon).pop(0))

    keys: dict[tuple[int, str], set[str]] = {}
    for n, event in order:
        keys.setdefault((n, event.condition), set()).add(event.key)
    assert all(len(k) == 1 for k in keys.values()), keys

    stored: dict[str, tuple[int, Event]] = {}
    for n, event in order:  # the store: a key it holds is a duplicate
        stored.setdefault(event.key, (n, event))
    state, opened = None, {n: 0 for n in range(len(episodes))}
    expected, latest, ticket_open = set(), -1, False
    for n, event in stored.values():  # the worker delivers one alert's events in the order accepted
        # The model: only a newer episode moves the ticket; its Fired opens one unless a ticket is
        # still open (its resolve was lost: a note), its Resolved closes the open one.
        if event.condition == "Fired" and n > latest:
            if not ticket_open:
                expected.add(n)
            ticket_open = True
        elif event.condition == "Resolved" and n >= latest:
            ticket_open = False
        latest = max(latest, n)
        decision = decide(event_facts(parse_alert_json(event.body)), state, Policy())
        state = decision.state
        if decision.action.opens_incident:
            opened[n] += 1
            state = replace(state, ticket_id=f"T{n}")
    assert all(count <= 1 for count in opened.values()), opened
    assert {n for n, count in opened.items() if count} == expected
    if not lost and not reconciled_any:  # the plain webhook path: every episode has its incident
        assert all(opened.values()), opened


def test_check_config_reports_reconcile_problems_with_their_lines(tmp_path, capsys):
    from relay.cli import main

    path = tmp_path / "relay.yaml"
    path.write_text(BASE + f"reconcile:\n  subscriptions: [{SUB}]\n  rule_ids: [{RULE}]\n  interval_minutes: 0\n")
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:8: reconcile.interval_minutes" in err, err
    path.write_text(BASE + f"reconcile:\n  subscriptions: [{SUB}]\n  rule_ids: [{RULE}]\n")
    assert main(["check-config", str(path)]) == 0
