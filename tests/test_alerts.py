"""The common alert schema model: every official sample, the documented quirks, and clear rejections."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.alerts import (
    ActivityLogContext,
    BudgetContext,
    LogContext,
    MetricContext,
    PrometheusContext,
    ResourceHealthContext,
    SchemaError,
    ServiceHealthContext,
    SmartDetectorContext,
    parse_alert,
    parse_alert_json,
)
from tests.conftest import SAMPLES, full_sample_names, load_sample

FULL = full_sample_names()


def test_every_full_official_sample_is_bundled():
    assert len(FULL) == 10, FULL


@pytest.mark.parametrize("name", FULL)
def test_every_official_common_schema_sample_parses(name):
    body = (SAMPLES / name).read_bytes()
    alert = parse_alert_json(body)
    doc = json.loads(body)
    assert alert.essentials.alert_id == doc["data"]["essentials"]["alertId"]
    assert alert.raw == doc, "the raw document must be kept whole"
    assert alert.correlation_key and "/" not in alert.correlation_key
    assert len(alert.correlation_key) <= 100


@pytest.mark.parametrize(
    "name,expected",
    [
        ("testaction-metric-static-fired.json", MetricContext),
        ("testaction-metric-dynamic-fired.json", MetricContext),
        ("testaction-log-v1-numresults-fired.json", LogContext),
        ("testaction-log-v2-fired.json", LogContext),
        ("testaction-activitylog-administrative-fired.json", ActivityLogContext),
        ("testaction-servicehealth-fired.json", ServiceHealthContext),
        ("testaction-resourcehealth-fired.json", ResourceHealthContext),
        ("testaction-smart-detection-fired.json", SmartDetectorContext),
        ("testaction-budget-fired.json", BudgetContext),
    ],
)
def test_alert_context_variant_follows_monitoring_service(name, expected):
    assert isinstance(parse_alert(load_sample(name)).context, expected)


def envelope(service: str, context: dict, signal: str | None = "Metric") -> dict:
    return {
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {
                "alertId": "/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/0f1e2d3c-0000-0000-0000-01",
                "alertRule": "rule",
                "severity": "Sev2",
                "signalType": signal,
                "monitorCondition": "Fired",
                "monitoringService": service,
                "firedDateTime": "2025-04-15T18:17:12.851Z",
            },
            **context,
        },
    }


@pytest.mark.parametrize(
    "fragment,service,expected",
    [
        ("context-metric-static.json", "Platform", MetricContext),
        ("context-metric-dynamic.json", "Platform", MetricContext),
        ("context-metric-availability.json", "Platform", MetricContext),
        ("context-log-v1-loganalytics.json", "Log Analytics", LogContext),
        ("context-log-v1-appinsights.json", "Application Insights", LogContext),
        ("context-log-v2.json", "Log Alerts V2", LogContext),
        ("context-log-simple.json", "Simple Log Alert", LogContext),
        ("context-activitylog-administrative.json", "Activity Log - Administrative", ActivityLogContext),
        ("context-activitylog-policy.json", "Activity Log - Policy", ActivityLogContext),
        ("context-activitylog-autoscale.json", "Activity Log - Autoscale", ActivityLogContext),
        ("context-activitylog-security.json", "Activity Log - Security", ActivityLogContext),
        ("context-activitylog-servicehealth.json", "ServiceHealth", ServiceHealthContext),
        ("context-activitylog-resourcehealth.json", "Resource Health", ResourceHealthContext),
        ("context-prometheus.json", "Prometheus", PrometheusContext),
    ],
)
def test_official_alert_context_fragments_parse_in_an_envelope(fragment, service, expected):
    alert = parse_alert(envelope(service, load_sample(fragment)))
    assert isinstance(alert.context, expected)


def test_cost_alert_nulls_are_accepted():
    alert = parse_alert(load_sample("testaction-budget-fired.json"))
    assert alert.essentials.severity is None
    assert alert.essentials.signal_type is None
    assert alert.essentials.alert_rule is None
    assert alert.essentials.target_ids == ()
    assert alert.condition == "Fired"


def test_null_monitor_condition_counts_as_fired():
    doc = load_sample("testaction-budget-fired.json")
    doc["data"]["essentials"]["monitorCondition"] = None
    assert parse_alert(doc).condition == "Fired"


def test_activitylog_without_space_is_normalised():
    alert = parse_alert(load_sample("testaction-servicehealth-fired.json"))
    assert alert.essentials.signal_type == "Activity Log"


def test_missing_configuration_items_is_empty():
    alert = parse_alert(load_sample("testaction-servicehealth-fired.json"))
    assert alert.essentials.configuration_items == ()


def test_service_health_numeric_level_and_array_impacted_services():
    alert = parse_alert(load_sample("testaction-servicehealth-fired.json"))
    assert alert.context.impacted_services == ("AzureServiceName",)
    assert alert.resolves, "Service Health stage Resolved must count as a resolve"


def test_service_health_impacted_services_as_json_string():
    doc = load_sample("testaction-servicehealth-fired.json")
    props = doc["data"]["alertContext"]["properties"]
    props["impactedServices"] = json.dumps(props["impactedServices"])
    props["stage"] = "Active"
    alert = parse_alert(doc)
    assert alert.context.impacted_services == ("AzureServiceName",)
    assert not alert.resolves


def test_numeric_level_and_event_source_become_text():
    ctx = load_sample("context-activitylog-administrative.json")
    ctx["alertContext"]["level"] = 4
    ctx["alertContext"]["eventSource"] = 2
    alert = parse_alert(envelope("Activity Log - Administrative", ctx, "Activity Log"))
    assert alert.context.level == "4"
    assert alert.context.event_source == "2"


def test_resolved_metric_alert_uses_resolved_time():
    alert = parse_alert(load_sample("metric-static-resolved.json"))
    assert alert.condition == "Resolved"
    assert alert.resolves
    assert alert.occurred_at == alert.essentials.resolved_at == "2019-03-22T14:03:16.2246313Z"


def test_resolved_without_resolved_time_falls_back_to_fired_time():
    doc = load_sample("metric-static-resolved.json")
    del doc["data"]["essentials"]["resolvedDateTime"]
    alert = parse_alert(doc)
    assert alert.occurred_at == alert.essentials.fired_at


def test_activity_log_alerts_never_resolve():
    alert = parse_alert(load_sample("testaction-activitylog-administrative-fired.json"))
    assert not alert.resolves


def test_unknown_monitoring_service_is_kept_raw():
    doc = envelope("Some Future Service", {"alertContext": {"anything": [1, 2, 3]}})
    alert = parse_alert(doc)
    assert alert.raw["data"]["alertContext"] == {"anything": [1, 2, 3]}


@pytest.mark.parametrize("name", ["noncommon-metric-static.json", "noncommon-activitylog-administrative.json"])
def test_non_common_schema_samples_are_rejected_naming_schema_id(name):
    with pytest.raises(SchemaError) as err:
        parse_alert(load_sample(name))
    assert err.value.field == "schemaId"


def _base() -> dict:
    return load_sample("testaction-metric-static-fired.json")


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d.pop("data"), "data"),
        (lambda d: d.__setitem__("data", []), "data"),
        (lambda d: d["data"].pop("essentials"), "data.essentials"),
        (lambda d: d["data"]["essentials"].pop("alertId"), "data.essentials.alertId"),
        (lambda d: d["data"]["essentials"].__setitem__("alertId", ""), "data.essentials.alertId"),
        (lambda d: d["data"]["essentials"].__setitem__("alertId", 42), "data.essentials.alertId"),
        (lambda d: d["data"]["essentials"].pop("monitoringService"), "data.essentials.monitoringService"),
        (lambda d: d["data"]["essentials"].pop("firedDateTime"), "data.essentials.firedDateTime"),
        (lambda d: d["data"]["essentials"].__setitem__("firedDateTime", "yesterday"), "data.essentials.firedDateTime"),
        (lambda d: d["data"]["essentials"].__setitem__("severity", "Sev9"), "data.essentials.severity"),
        (lambda d: d["data"]["essentials"].__setitem__("monitorCondition", "Open"), "data.essentials.monitorCondition"),
        (lambda d: d["data"]["essentials"].__setitem__("configurationItems", "vm1"),
         "data.essentials.configurationItems"),
        (lambda d: d["data"]["essentials"].__setitem__("alertTargetIDs", [1]), "data.essentials.alertTargetIDs"),
        (lambda d: d["data"].__setitem__("alertContext", "x"), "data.alertContext"),
        (lambda d: d["data"].__setitem__("customProperties", ["x"]), "data.customProperties"),
        (lambda d: d["data"]["alertContext"].__setitem__("condition", {"allOf": "x"}),
         "data.alertContext.condition.allOf"),
    ],
)
def test_schema_errors_name_the_field(mutate, field):
    doc = _base()
    mutate(doc)
    with pytest.raises(SchemaError) as err:
        parse_alert(doc)
    assert err.value.field == field, str(err.value)


def test_top_level_array_is_rejected():
    with pytest.raises(SchemaError) as err:
        parse_alert([_base()])
    assert err.value.field == "$"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(["essentials", "alertContext", "customProperties", "data"]), value=json_values,
       key=st.text(max_size=20))
def test_any_mutation_gives_an_alert_or_a_schema_error(path, value, key):
    doc = copy.deepcopy(_base())
    target = doc if path == "data" else doc["data"]
    if path in ("essentials", "alertContext") and isinstance(target.get(path), dict):
        target[path][key] = value
    else:
        target[path] = value
    try:
        parse_alert(doc)
    except SchemaError:
        pass


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_arbitrary_json_never_crashes_the_parser(value):
    try:
        parse_alert(value)
    except SchemaError:
        pass


def test_correlation_key_is_the_alert_guid():
    alert = parse_alert(load_sample("testaction-metric-static-fired.json"))
    assert alert.correlation_key == "eeeeeeee-4444-5555-6666-ffffffffffff"


def test_alerts_ending_in_the_same_name_get_different_correlation_keys():
    activity = parse_alert(load_sample("testaction-activitylog-administrative-fired.json"))
    budget = parse_alert(load_sample("testaction-budget-fired.json"))
    assert activity.essentials.alert_id.endswith("/Test_Alert")
    assert budget.essentials.alert_id.endswith("/Test_Alert")
    assert activity.correlation_key != budget.correlation_key
    assert len(activity.correlation_key) <= 64 and activity.correlation_key.startswith("id-")


def test_correlation_key_ignores_the_case_of_the_alert_id():
    doc = load_sample("testaction-budget-fired.json")
    upper = copy.deepcopy(doc)
    upper["data"]["essentials"]["alertId"] = doc["data"]["essentials"]["alertId"].upper()
    assert parse_alert(doc).correlation_key == parse_alert(upper).correlation_key
