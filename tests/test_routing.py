"""Routing and rendering: which routes an alert takes, and what its incident says."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from relay.alerts import Alert, parse_alert
from relay.delivery import rendering
from relay.delivery.config import parse_config
from relay.delivery.lifecycle import Action, Kind, Policy
from relay.delivery.rendering import compile_template, render_incident
from relay.delivery.routing import Match, default_config
from relay.targets import build_target
from relay.targets.dry_run import incident_json
from tests.conftest import MINIMAL_TARGET_BLOCKS, TARGET_ENV, load_sample

DOCS = Path(__file__).resolve().parent.parent / "docs"
METRIC = "testaction-metric-static-fired.json"

# One built target per kind: rendering takes a target's limits and severity fields from the target.
TARGETS = {kind: build_target(kind, block, env=TARGET_ENV) for kind, block in MINIMAL_TARGET_BLOCKS.items()}
FIELD_LIMITS = {kind: dataclasses.asdict(t.limits) for kind, t in TARGETS.items() if t.limits is not None}
SEVERITY_FIELDS = {kind: t.severity_fields for kind, t in TARGETS.items()}


def note_text(action: Action, kind: Kind, a: Alert, target_kind: str) -> str:
    return rendering.note_text(action, kind, a, TARGETS[target_kind])


def alert(name: str = METRIC, **essentials) -> Alert:
    doc = load_sample(name)
    doc["data"]["essentials"].update(essentials)
    return parse_alert(doc)


def documented_example() -> str:
    text = (DOCS / "configuration.md").read_text()
    return re.search(r"```yaml\n(.*?)```", text, re.DOTALL).group(1)


# -- the documented example ------------------------------------------------------------------------

def test_documented_example_parses_with_every_option_it_shows():
    config = parse_config(documented_example(), check_target_options=True)
    assert list(config.targets) == ["snow", "helix", "rt", "snow-em", "preview"]
    assert config.targets["snow"].max_concurrency == 8 and config.targets["snow"].timeout_seconds == 20
    assert config.targets["snow"].severity == {"Sev4": {"impact": "3", "urgency": "3"}}
    first = config.routes[0]
    assert first.policy == Policy(on_repeat="note", on_refire="new", on_resolve="resolve")
    assert first.continue_ and first.match.severity == ("Sev0", "Sev1")
    assert config.routes[2].incident_per == "configuration_item"
    assert config.routes[2].policy.on_refire == "reopen"
    assert config.delivery.max_attempts == 24 and config.delivery.shutdown_grace_seconds == 20


def test_documented_example_routes_a_sev0_to_servicenow_and_event_management():
    config = parse_config(documented_example())
    sev0 = alert(severity="Sev0")
    assert [r.target for r in config.routes_for(sev0)] == ["snow", "snow-em"]
    assert [r.target for r in config.routes_for(alert(severity="Sev3"))] == ["preview"]


# -- matching ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("match", "hit"), [
    (Match(), True),
    (Match(severity=("Sev4",)), True),
    (Match(severity=("Sev0", "Sev1")), False),
    (Match(alert_rule=("TEST-METRIC*",)), True),
    (Match(alert_rule=("other",)), False),
    (Match(monitoring_service=("platform",)), True),
    (Match(signal_type=("Metric",)), True),
    (Match(subscription=("AAAA0A0A-BB1B-CC2C-DD3D-EEEEEE4E4E4E",)), True),
    (Match(subscription=("ffffffff-*",)), False),
    (Match(resource_group=("test-rg",)), True),
    (Match(resource_group=("prod-*",)), False),
    (Match(custom_properties={"customKey1": ("value1",)}), True),
    (Match(custom_properties={"customKey1": ("*",)}), True),
    (Match(custom_properties={"missing": ("*",)}), False),
    (Match(severity=("Sev4",), resource_group=("prod-*",)), False),
])
def test_every_given_condition_must_hold_and_any_value_of_one_will_do(match, hit):
    assert match.matches(alert()) is hit


def test_activity_log_signal_type_matches_either_spelling():
    config = parse_config("targets: {d: {kind: dry_run}}\n"
                          "routes:\n  - {target: d, match: {signal_type: Activity Log}}\n")
    service_health = parse_alert(load_sample("testaction-servicehealth-fired.json"))  # "ActivityLog"
    assert service_health.essentials.signal_type == "Activity Log"
    assert config.routes_for(service_health)
    admin = parse_alert(load_sample("testaction-activitylog-administrative-fired.json"))
    assert config.routes_for(admin)


def test_first_match_wins_unless_the_route_continues_and_each_target_gets_an_alert_once():
    config = parse_config("""
targets: {a: {kind: dry_run}, b: {kind: dry_run}, c: {kind: dry_run}}
routes:
  - {target: a, continue: true}
  - {target: a}
  - {target: b}
  - {target: c}
""")
    assert [r.target for r in config.routes_for(alert())] == ["a"]
    config = parse_config("""
targets: {a: {kind: dry_run}, b: {kind: dry_run}, c: {kind: dry_run}}
routes:
  - {target: a, continue: true}
  - {target: a, continue: true}
  - {target: b}
  - {target: c}
""")
    assert [r.target for r in config.routes_for(alert())] == ["a", "b"]


def test_alert_matching_no_route_gets_none():
    config = parse_config("targets: {a: {kind: dry_run}}\nroutes:\n  - {target: a, match: {severity: Sev0}}\n")
    assert config.routes_for(alert()) == []


def test_without_relay_config_everything_goes_to_dry_run():
    config = default_config()
    assert [(n, t.kind) for n, t in config.targets.items()] == [("dry_run", "dry_run")]
    assert [r.target for r in config.routes_for(alert("testaction-budget-fired.json"))] == ["dry_run"]


# -- rendering -------------------------------------------------------------------------------------------

def incident(a: Alert, kind: str = "servicenow", **kw):
    return render_incident(a, target=TARGETS[kind], correlation_key="k",
                           configuration_items=a.essentials.configuration_items, **kw)


def test_default_summary_and_description_carry_the_essentials():
    inc = incident(alert())
    assert inc.summary == "[Sev4] test-metricAlertRule on test-storageAccount"
    for fact in ("test-metricAlertRule", "Platform", "2025-04-15T18:17:12.851Z", "Transactions GreaterThan 0",
                 "/providers/Microsoft.AlertsManagement/alerts/eeeeeeee-4444-5555-6666-ffffffffffff",
                 "microsoft.storage/storageaccounts/test-storageAccount"):
        assert fact in inc.description
    assert inc.resource_ids == alert().essentials.target_ids


def test_service_health_summary_uses_the_incident_title():
    inc = incident(parse_alert(load_sample("testaction-servicehealth-fired.json")))
    assert inc.summary.startswith("[Sev4] Service Health TEST-TTT: TestActionGroup-TestServiceHealthAlert")


def test_templates_see_the_alerts_json_names_and_missing_names_render_empty():
    summary = compile_template("{{ essentials.alertRule }}|{{ customProperties.customKey1 }}|"
                               "{{ alertContext.nothing.deeper }}|{{ essentials.nope }}")
    assert incident(alert(), summary=summary).summary == "test-metricAlertRule|value1||"


def test_a_failing_template_falls_back_to_the_default_and_says_so():
    bad = compile_template("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    inc = incident(alert(), summary=bad)
    assert inc.summary == "[Sev4] test-metricAlertRule on test-storageAccount"
    assert inc.description.startswith("summary template failed (SecurityError")


def test_long_text_is_cut_to_the_vendor_limit_with_a_marker():
    long_rule = "r" * 500
    for kind, limit in (("servicenow", 160), ("bmc_helix", 100), ("request_tracker", 200)):
        inc = incident(alert(alertRule=long_rule), kind=kind)
        assert len(inc.summary) == limit == FIELD_LIMITS[kind]["summary"]
        assert inc.summary.endswith("[truncated]")
    huge = compile_template("{{ 'x' * 10000 }}")
    inc = incident(alert(), description=huge)
    assert len(inc.description) == 4000 and inc.description.endswith("[truncated]")


@pytest.mark.parametrize("kind", ["servicenow", "bmc_helix", "request_tracker"])
def test_severity_sets_the_kinds_impact_and_urgency_by_default(kind):
    for sev in ("Sev0", "Sev1", "Sev2", "Sev3", "Sev4"):
        assert incident(alert(severity=sev), kind=kind).fields == SEVERITY_FIELDS[kind][sev]


def test_target_severity_override_and_route_fields_win_in_that_order():
    fields = {"urgency": "2", "assignment_group": "Cloud Ops", "u_team": compile_template("{{ resource_group }}")}
    inc = incident(alert(severity="Sev0"), severity_fields={"Sev0": {"impact": "2", "urgency": "3"}},
                   fields=fields)
    assert inc.fields == {"impact": "2", "urgency": "2", "assignment_group": "Cloud Ops", "u_team": "test-RG"}


def test_severity_default_table_is_the_documented_one():
    text = (DOCS / "configuration.md").read_text()
    for sev, row in SEVERITY_FIELDS["servicenow"].items():
        assert f"| {sev} | {row['impact']} / {row['urgency']} " in text
    for sev, row in SEVERITY_FIELDS["bmc_helix"].items():
        assert f"{row['Impact']} / {row['Urgency']} | {SEVERITY_FIELDS['request_tracker'][sev]['Priority']} |" in text


def test_resolve_note_carries_resolved_date_time():
    resolved = parse_alert(load_sample("metric-static-resolved.json"))
    text = note_text(Action.RESOLVE, Kind.RESOLVED, resolved, "servicenow")
    assert "2019-03-22T14:03:16.2246313Z" in text and resolved.essentials.alert_id in text


def test_repeat_and_reopen_notes_say_when_it_fired_again():
    a = alert(firedDateTime="2025-04-15T19:00:00Z")
    assert "fired again at 2025-04-15T19:00:00Z" in note_text(Action.NOTE, Kind.FIRED, a, "servicenow")
    assert note_text(Action.REOPEN, Kind.FIRED, a, "servicenow").startswith("Reopened")


def test_incident_json_is_plain_json():
    doc = incident_json(incident(alert()))
    assert json.loads(json.dumps(doc)) == doc
