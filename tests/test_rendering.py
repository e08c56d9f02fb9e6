"""What the default ticket says, for every sample alert: what an on-call engineer needs to act on it."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.alerts import PORTAL_ALERT_URL, log_search_link, parse_alert, portal_link
from relay.delivery.rendering import render_incident
from relay.schema import SEVERITIES
from relay.targets import build_target
from tests.conftest import MINIMAL_TARGET_BLOCKS, TARGET_ENV, full_sample_names, load_sample

RT = build_target("rt", MINIMAL_TARGET_BLOCKS["request_tracker"], env=TARGET_ENV)
LOG_SAMPLES = ["testaction-log-v1-numresults-fired.json", "testaction-log-v2-fired.json"]


def render(doc: dict, previous_ticket: str | None = None):  # type: ignore[no-untyped-def]
    alert = parse_alert(doc)
    return alert, render_incident(alert, target=RT, correlation_key="k",  # type: ignore[arg-type]
                                  configuration_items=alert.essentials.configuration_items,
                                  previous_ticket=previous_ticket)


@pytest.mark.parametrize("name", full_sample_names())
def test_every_ticket_names_rule_subscription_resource_group_portal_link_and_how_to_silence(name):
    alert, incident = render(load_sample(name))
    text = incident.description
    assert "Sev?" not in incident.summary and "Sev?" not in text
    assert "\nAlert rule: " in text and "\nSubscription: " in text and "| Resource group: " in text
    assert f"Azure portal: {portal_link(alert)}" in text
    assert "To silence it" in text
    assert "previous ticket" not in text


@pytest.mark.parametrize("name", full_sample_names())
def test_the_portal_link_is_azures_investigation_link_or_built_from_the_alert_id(name):
    alert = parse_alert(load_sample(name))
    link = portal_link(alert)
    if alert.essentials.investigation_link:
        assert link == alert.essentials.investigation_link
    else:
        assert link.startswith(PORTAL_ALERT_URL)
        assert unquote(link[len(PORTAL_ALERT_URL):]) == alert.essentials.alert_id


@pytest.mark.parametrize("name", LOG_SAMPLES)
def test_a_log_alert_links_to_its_search_results(name):
    alert, incident = render(load_sample(name))
    link = log_search_link(alert)
    assert link is not None and link.startswith("https://portal.azure.com")
    assert f"Log search results: {link}" in incident.description


def test_a_metric_alert_has_no_log_search_link():
    alert, incident = render(load_sample("testaction-metric-static-fired.json"))
    assert log_search_link(alert) is None and "Log search results" not in incident.description


def test_a_budget_alert_without_severity_is_summarised_by_its_budget():
    _, incident = render(load_sample("testaction-budget-fired.json"))
    assert incident.summary == "Cost budget Test_forcasted_budget spent $999.99 of $50.00"
    assert "Severity: none" in incident.description
    assert "Alert rule: budget Test_forcasted_budget" in incident.description
    assert "Cost Management > Budgets" in incident.description


@given(st.sampled_from([None, *SEVERITIES]), st.sampled_from(full_sample_names()))
def test_the_summary_starts_with_the_severity_only_when_the_alert_has_one(severity, name):
    doc = load_sample(name)
    doc["data"]["essentials"]["severity"] = severity
    _, incident = render(doc)
    assert incident.summary.startswith(f"[{severity}] ") if severity else not incident.summary.startswith("[")


def test_a_refires_new_ticket_names_the_previous_one():
    _, incident = render(load_sample("testaction-metric-static-fired.json"), previous_ticket="INC0010042")
    assert "Fired again after its previous ticket INC0010042 was resolved" in incident.description


def test_the_ticket_names_the_rule_subscription_and_resource_group_of_a_metric_alert():
    _, incident = render(load_sample("testaction-metric-static-fired.json"))
    lines = incident.description.splitlines()
    assert "Alert rule: test-metricAlertRule" in lines
    assert "Subscription: aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e | Resource group: test-RG" in lines
    assert any(line.startswith("To silence it") and "alert processing rule" in line and "test-metricAlertRule" in line
               for line in lines)


@pytest.mark.parametrize(("name", "mutate"), [
    ("testaction-budget-fired.json", lambda d: d["data"]["alertContext"].__setitem__("AlertData", "not an object")),
    ("testaction-budget-fired.json", lambda d: d["data"].__setitem__("alertContext", {"AlertData": [1, 2]})),
    ("testaction-log-v2-fired.json", lambda d: d["data"]["alertContext"].__setitem__("condition", "odd")),
    ("testaction-log-v1-numresults-fired.json",
     lambda d: d["data"]["alertContext"].__setitem__("LinkToSearchResults", {"not": "a link"})),
])
def test_odd_shapes_azure_might_send_still_render(name, mutate):
    # A fuzzed budget body with AlertData as text once made rendering raise, and the worker kept retrying.
    doc = load_sample(name)
    mutate(doc)
    _, incident = render(doc)
    assert incident.summary and "Azure portal: " in incident.description
