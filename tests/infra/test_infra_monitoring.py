"""Self-monitoring (infra/monitoring.py): the fallback action group, the alert rules on the relay, the
diagnostic settings, the smoke test's reader role and the OpenTelemetry agent, from the mock run."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra import config, hosting, monitoring
from infra.config import ConfigError
from infra.config.monitoring import MonitoringSettings
from infra.plan import Plan
from tests.infra.harness import run_stack, stack_config, stack_value

ACTION_GROUP = "azure-native:monitor:ActionGroup"
METRIC_ALERT = "azure-native:monitor:MetricAlert"
LOG_ALERT = "azure-native:monitor:ScheduledQueryRule"
DIAGNOSTIC = "azure-native:monitor:DiagnosticSetting"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
CONTAINER_APP = "azure-native:app:ContainerApp"
ENVIRONMENT = "azure-native:app:ManagedEnvironment"


def parsed(stack: str, **overrides: object) -> config.StackConfig:
    raw, secret_keys = stack_config(stack, **overrides)
    return config.parse(raw, stack=stack, secret_keys=secret_keys)


def fallback_group(plan: Plan):  # type: ignore[no-untyped-def]
    return plan.one(ACTION_GROUP, "self-monitoring-action-group")


def test_fallback_group_mails_the_configured_people_and_never_calls_the_relay(stack_plan: Plan, stack: str) -> None:
    group = fallback_group(stack_plan).inputs
    emails = stack_value(stack, "monitoring")["emails"]
    assert [r["emailAddress"] for r in group["emailReceivers"]] == emails
    assert len({r["name"] for r in group["emailReceivers"]}) == len(emails), "receiver names must be unique"
    assert not group.get("webhookReceivers"), "a relay that is down cannot report itself"
    assert group["actionGroupName"] == parsed(stack).names.fallback_action_group
    assert group["actionGroupName"] != stack_plan.one(ACTION_GROUP, "alerting-action-group").inputs["actionGroupName"]
    assert len(group["groupShortName"]) <= 12 and group["location"] == "Global"


def test_container_app_metric_rules_watch_restarts_replicas_and_5xx(stack_plan: Plan, stack: str) -> None:
    app = stack_plan.one(CONTAINER_APP)
    group_id = fallback_group(stack_plan).id
    rules = {r.name.removeprefix("self-monitoring-"): r.inputs for r in stack_plan.of_type(METRIC_ALERT)
             if r.name.startswith("self-monitoring-")}
    assert set(rules) == {"relay-restarts", "relay-replicas-below-minimum", "relay-server-errors"}, sorted(rules)
    for name, rule in rules.items():
        assert rule["scopes"] == [app.id], f"{name} watches something else"
        assert rule["actions"] == [{"actionGroupId": group_id}], f"{name} does not notify the fallback group"
        (criterion,) = rule["criteria"]["allOf"]
        assert criterion["metricNamespace"] == "Microsoft.App/containerApps"
    restarts = rules["relay-restarts"]["criteria"]["allOf"][0]
    assert (restarts["metricName"], restarts["operator"], restarts["threshold"]) == ("RestartCount", "GreaterThan", 0)
    replicas = rules["relay-replicas-below-minimum"]["criteria"]["allOf"][0]
    assert replicas["metricName"] == "Replicas" and replicas["operator"] == "LessThan"
    assert replicas["threshold"] == parsed(stack).relay.min_replicas
    errors = rules["relay-server-errors"]["criteria"]["allOf"][0]
    assert errors["metricName"] == "Requests" and errors["threshold"] == 5  # the default
    assert errors["dimensions"] == [{"name": "statusCodeCategory", "operator": "Include", "values": ["5xx"]}]


def test_log_rules_read_the_relays_own_lines_in_the_workspace(stack_plan: Plan, stack: str) -> None:
    workspace = stack_plan.one("azure-native:operationalinsights:Workspace")
    app_name = parsed(stack).names.container_app
    group_id = fallback_group(stack_plan).id
    rules = {r.name.removeprefix("self-monitoring-"): r.inputs for r in stack_plan.of_type(LOG_ALERT)
             if r.name.startswith("self-monitoring-")}
    assert set(rules) == {"relay-dead-letters", "relay-refused-tokens", "relay-target-checks"}, sorted(rules)
    needles = {"relay-dead-letters": monitoring.DEAD_LETTER_LOG, "relay-refused-tokens": monitoring.REFUSED_TOKEN_LOG,
               "relay-target-checks": monitoring.TARGET_CHECK_LOG}
    for name, rule in rules.items():
        assert rule["scopes"] == [workspace.id]
        assert rule["actions"] == {"actionGroups": [group_id]}
        assert rule["autoMitigate"] is True, f"{name} would never resolve"
        (condition,) = rule["criteria"]["allOf"]
        assert "ContainerAppConsoleLogs" in condition["query"] and f"'{app_name}'" in condition["query"]
        assert f"has '{needles[name]}'" in condition["query"], condition["query"]
    assert rules["relay-refused-tokens"]["criteria"]["allOf"][0]["threshold"] == 20  # the default
    assert rules["relay-dead-letters"]["criteria"]["allOf"][0]["threshold"] == 0  # any dead letter


def test_log_needles_are_what_the_relay_writes() -> None:
    # The rules match the relay's own wording: if these lines change, the alerts go silent.
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    worker = (root / "relay/delivery/worker.py").read_text()
    handler = (root / "relay/intake/handler.py").read_text()
    assert f'"{monitoring.DEAD_LETTER_LOG} ' in worker
    assert f'"{monitoring.REFUSED_TOKEN_LOG} ' in handler
    check = (root / "relay/delivery/target_check.py").read_text()
    assert f'"{monitoring.TARGET_CHECK_LOG} ' in check


def test_key_vault_and_storage_services_send_their_logs_to_the_workspace(stack_plan: Plan) -> None:
    workspace = stack_plan.one("azure-native:operationalinsights:Workspace")
    vault = stack_plan.one("azure-native:keyvault:Vault")
    account = stack_plan.one("azure-native:storage:StorageAccount")
    settings = {d.inputs["resourceUri"]: d.inputs for d in stack_plan.of_type(DIAGNOSTIC)
                if d.name.startswith("self-monitoring-")}
    expected = {vault.id, *(f"{account.id}/{service}/default" for service in ("blobServices", "queueServices",
                                                                               "tableServices"))}
    assert set(settings) == expected, sorted(settings)
    for uri, setting in settings.items():
        assert setting["workspaceId"] == workspace.id, uri
        assert setting["logs"] == [{"categoryGroup": "allLogs", "enabled": True}], uri


def test_smoke_reader_may_read_the_state_table_and_nothing_else(stack_plan: Plan, stack: str) -> None:
    principal = stack_value(stack, "monitoring")["smokeReaderPrincipalId"]
    reader = stack_plan.one(ROLE_ASSIGNMENT, "self-monitoring-smoke-reader").inputs
    assert reader["principalId"] == principal
    assert reader["roleDefinitionId"].endswith("/" + monitoring.STORAGE_TABLE_DATA_READER)
    assert reader["scope"] == stack_plan.one("azure-native:storage:Table").id
    others = [a.name for a in stack_plan.of_type(ROLE_ASSIGNMENT) if a.inputs["principalId"] == principal
              and a.name != "self-monitoring-smoke-reader"]
    assert not others, f"the smoke identity also gets {others}"


def test_without_emails_no_self_monitoring_is_declared() -> None:
    plan = run_stack("dev", monitoring=None)
    assert not [r.name for r in plan.resources if r.name.startswith("self-monitoring")]
    assert "fallbackActionGroupId" not in plan.outputs


def test_open_telemetry_wires_the_managed_agent_and_the_relays_interval() -> None:
    # Metrics and traces go to the one destination; logs are not routed (they stay in Log Analytics).
    endpoint = "https://collector.example.net:4318"
    plan = run_stack("dev", monitoring={"emails": ["a@example.com"], "openTelemetry": {"endpoint": endpoint}})
    otel = plan.one(ENVIRONMENT).inputs["openTelemetryConfiguration"]
    assert otel["destinationsConfiguration"]["otlpConfigurations"] == [
        {"name": hosting.OTEL_DESTINATION, "endpoint": endpoint}
    ]
    assert otel["metricsConfiguration"]["destinations"] == [hosting.OTEL_DESTINATION]
    assert otel["tracesConfiguration"]["destinations"] == [hosting.OTEL_DESTINATION], \
        "the relay's traces (intake to ticket call) are not routed to the collector"
    assert not otel.get("logsConfiguration")
    env = {e["name"]: e.get("value") for e in plan.one(CONTAINER_APP).inputs["template"]["containers"][0]["env"]}
    assert env["OTEL_METRIC_EXPORT_INTERVAL"] == "60000" and env["OTEL_SERVICE_NAME"] == hosting.OTEL_SERVICE_NAME


def test_without_open_telemetry_the_environment_has_no_agent() -> None:
    plan = run_stack("dev")
    assert not plan.one(ENVIRONMENT).inputs.get("openTelemetryConfiguration")
    env = {e["name"] for e in plan.one(CONTAINER_APP).inputs["template"]["containers"][0]["env"]}
    assert not {n for n in env if n.startswith("OTEL_")}, env


@pytest.mark.parametrize(
    ("monitoring_value", "key", "words"),
    [
        ({"emails": ["not-an-address"]}, "secure-export:monitoring.emails[0]", "e-mail address"),
        ({"emails": []}, "secure-export:monitoring.emails", "empty"),
        ({"emails": ["a@example.com", "A@example.com"]}, "secure-export:monitoring.emails", "twice"),
        ({"openTelemetry": {"endpoint": "https://x.example"}}, "secure-export:monitoring.emails", "required"),
        ({"emails": ["a@example.com"], "openTelemetry": {"endpoint": "http://x.example"}},
         "secure-export:monitoring.openTelemetry.endpoint", "https://"),
        ({"emails": ["a@example.com"], "openTelemetry": {"endpoint": "https://x.example", "exportIntervalSeconds": 1}},
         "secure-export:monitoring.openTelemetry.exportIntervalSeconds", "10 to 3600"),
        ({"emails": ["a@example.com"], "smokeReaderPrincipalId": "me"},
         "secure-export:monitoring.smokeReaderPrincipalId", "GUID"),
        ({"emails": ["a@example.com"], "shortName": "thirteen-char"}, "secure-export:monitoring.shortName", "12"),
        ({"emails": ["a@example.com"], "emial": "typo"}, "secure-export:monitoring.emial", "unknown key"),
    ],
)
def test_bad_monitoring_config_names_the_key(monitoring_value: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parsed("dev", monitoring=monitoring_value)
    assert caught.value.key == key, str(caught.value)
    assert words in str(caught.value), str(caught.value)


def test_component_refuses_inputs_that_would_watch_nothing() -> None:
    settings = MonitoringSettings(emails=())
    with pytest.raises(ValueError, match="emails is empty"):
        monitoring.SelfMonitoringArgs(settings=settings, resource_group_name="rg", tags={}, subscription_id="s",
                                      location="westeurope", action_group_name="ag", workspace_id="w",
                                      container_app_id="c", container_app_name="ca", min_replicas=1,
                                      key_vault_id="k", storage_account_id="st", state_table_id="t")


_local = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}", fullmatch=True)
_domain = st.from_regex(r"[a-z0-9-]{1,10}\.[a-z]{2,6}", fullmatch=True)
emails = st.lists(st.builds(lambda a, b: f"{a}@{b}", _local, _domain), min_size=1, max_size=5,
                  unique_by=str.lower)


@settings(max_examples=50, deadline=None)
@given(addresses=emails, refused=st.integers(1, 100000))
def test_any_distinct_addresses_and_threshold_are_taken_as_given(addresses: list[str], refused: int) -> None:
    cfg = parsed("dev", monitoring={"emails": addresses, "refusedTokensThreshold": refused})
    assert cfg.monitoring is not None
    assert cfg.monitoring.emails == tuple(addresses)
    assert cfg.monitoring.refused_tokens_threshold == refused
    assert cfg.monitoring.server_errors_threshold == 5 and cfg.monitoring.open_telemetry is None


@settings(max_examples=50, deadline=None)
@given(text=st.text(min_size=1, max_size=30).filter(lambda t: "@" not in t or " " in t or "." not in t))
def test_anything_that_is_not_an_address_is_refused_by_key(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parsed("dev", monitoring={"emails": [text]})
    assert caught.value.key == "secure-export:monitoring.emails[0]"
