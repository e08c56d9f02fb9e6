"""The Secure Webhook action group and the alert rules wired to it, for every
example stack, from the mock run."""

from __future__ import annotations

from typing import Any

from infra import config
from infra.plan import Declared, Plan
from tests.infra.harness import stack_config, stack_value

ACTION_GROUP = "azure-native:monitor:ActionGroup"
METRIC_ALERT = "azure-native:monitor:MetricAlert"
LOG_ALERT = "azure-native:monitor:ScheduledQueryRule"
ACTIVITY_LOG_ALERT = "azure-native:monitor:ActivityLogAlert"
SINGLE = "Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria"
MULTIPLE = "Microsoft.Azure.Monitor.MultipleResourceMultipleMetricCriteria"


def parsed(stack: str) -> config.StackConfig:
    raw, secret_keys = stack_config(stack)
    return config.parse(raw, stack=stack, secret_keys=secret_keys)


def rules_of(stack: str, kind: type) -> list[Any]:
    return [rule for rule in parsed(stack).alerts if isinstance(rule, kind)]


def declared_rule(plan: Plan, type_: str, name: str) -> Declared:
    return plan.one(type_, f"alerting-rule-{name}")


def test_action_group_has_one_secure_webhook_receiver_calling_the_relay(stack_plan: Plan, stack: str) -> None:
    group = stack_plan.one(ACTION_GROUP, "alerting-action-group")
    entra = stack_value(stack, "entra")
    assert group.inputs["location"] == "Global" and group.inputs["enabled"] is True
    assert group.inputs["groupShortName"] == parsed(stack).action_group_short_name
    (receiver,) = group.inputs["webhookReceivers"]
    assert receiver["serviceUri"] == stack_plan.outputs["webhookUrl"]
    assert receiver["serviceUri"] == f"https://{stack_plan.outputs['relayFqdn']}/alerts", receiver["serviceUri"]
    assert receiver["useAadAuth"] is True, "a plain webhook would carry no Entra token"
    assert receiver["objectId"] == entra["objectId"], "the receiver must name the application, not its SP"
    assert receiver["identifierUri"] == entra.get("identifierUri", f"api://{entra['clientId']}")
    assert receiver["tenantId"] == parsed(stack).azure.tenant_id
    assert receiver["useCommonAlertSchema"] is True, "the relay parses only the common alert schema"
    for other in ("emailReceivers", "smsReceivers", "itsmReceivers", "azureFunctionReceivers", "logicAppReceivers"):
        assert not group.inputs.get(other), f"the action group also has {other}"


def test_every_configured_alert_becomes_one_rule_using_the_action_group(stack_plan: Plan, stack: str) -> None:
    group_id = stack_plan.one(ACTION_GROUP, "alerting-action-group").id
    expected_type = {
        config.MetricAlertRule: METRIC_ALERT,
        config.DynamicMetricAlertRule: METRIC_ALERT,
        config.LogSearchAlertRule: LOG_ALERT,
        config.AdministrativeAlertRule: ACTIVITY_LOG_ALERT,
        config.ServiceHealthAlertRule: ACTIVITY_LOG_ALERT,
        config.ResourceHealthAlertRule: ACTIVITY_LOG_ALERT,
    }
    alerts = parsed(stack).alerts
    declared = [r for r in stack_plan.resources if r.type in (METRIC_ALERT, LOG_ALERT, ACTIVITY_LOG_ALERT)
                and r.name.startswith("alerting-")]  # self-monitoring's rules: test_infra_monitoring.py
    assert len(declared) == len(alerts), f"{len(alerts)} alerts configured, {len(declared)} declared"
    for rule in alerts:
        resource = declared_rule(stack_plan, expected_type[type(rule)], rule.name)
        actions = resource.inputs["actions"]
        if resource.type == METRIC_ALERT:
            used = [action["actionGroupId"] for action in actions]
        elif resource.type == LOG_ALERT:
            used = actions["actionGroups"]
        else:
            used = [action["actionGroupId"] for action in actions["actionGroups"]]
        assert used == [group_id], f"alert {rule.name} notifies {used}, not the stack's action group"
        assert resource.inputs["enabled"] is rule.enabled
        assert list(resource.inputs["scopes"]) == list(rule.scopes)


def test_static_metric_alerts_carry_their_threshold_criterion(stack_plan: Plan, stack: str) -> None:
    rules = rules_of(stack, config.MetricAlertRule)
    assert rules, f"stacks/Pulumi.{stack}.yaml has no static metric alert"
    for rule in rules:
        inputs = declared_rule(stack_plan, METRIC_ALERT, rule.name).inputs
        assert inputs["location"] == "global" and inputs["autoMitigate"] is True
        assert inputs["severity"] == rule.severity
        assert (inputs["windowSize"], inputs["evaluationFrequency"]) == (rule.window_size, rule.evaluation_frequency)
        criteria = inputs["criteria"]
        assert criteria["odataType"] == (SINGLE if rule.target_resource_type is None else MULTIPLE)
        (criterion,) = criteria["allOf"]
        assert criterion["criterionType"] == "StaticThresholdCriterion"
        assert (criterion["metricNamespace"], criterion["metricName"]) == (rule.metric_namespace, rule.metric_name)
        assert (criterion["operator"], criterion["threshold"]) == (rule.operator, rule.threshold)
        assert criterion["timeAggregation"] == rule.aggregation
        if rule.target_resource_type is not None:
            assert inputs["targetResourceType"] == rule.target_resource_type
            assert inputs["targetResourceRegion"] == rule.target_resource_region


def test_examples_show_single_and_multi_resource_metric_alerts(plans: dict[str, Plan]) -> None:
    shapes = {
        resource.inputs["criteria"]["odataType"]
        for plan in plans.values()
        for resource in plan.of_type(METRIC_ALERT)
        if resource.inputs["criteria"]["allOf"][0]["criterionType"] == "StaticThresholdCriterion"
    }
    assert shapes == {SINGLE, MULTIPLE}, shapes


def test_dynamic_metric_alerts_use_learned_thresholds(stack_plan: Plan, stack: str) -> None:
    rules = rules_of(stack, config.DynamicMetricAlertRule)
    assert rules, f"stacks/Pulumi.{stack}.yaml has no dynamic metric alert"
    for rule in rules:
        inputs = declared_rule(stack_plan, METRIC_ALERT, rule.name).inputs
        assert inputs["autoMitigate"] is True and inputs["severity"] == rule.severity
        assert inputs["criteria"]["odataType"] == MULTIPLE, "dynamic thresholds exist only in the multi shape"
        (criterion,) = inputs["criteria"]["allOf"]
        assert criterion["criterionType"] == "DynamicThresholdCriterion"
        assert criterion["alertSensitivity"] == rule.sensitivity and criterion["operator"] == rule.operator
        assert criterion["failingPeriods"] == {
            "numberOfEvaluationPeriods": rule.evaluation_periods,
            "minFailingPeriodsToAlert": rule.min_failing_periods,
        }
        assert "threshold" not in criterion


def test_log_search_alerts_auto_mitigate_so_that_resolves_flow(stack_plan: Plan, stack: str) -> None:
    rules = rules_of(stack, config.LogSearchAlertRule)
    assert rules, f"stacks/Pulumi.{stack}.yaml has no log search alert"
    for rule in rules:
        inputs = declared_rule(stack_plan, LOG_ALERT, rule.name).inputs
        assert inputs["autoMitigate"] is True, "without auto-mitigation the incident would never resolve"
        assert inputs["kind"] == "LogAlert" and inputs["location"] == rule.location
        assert inputs["severity"] == rule.severity
        (condition,) = inputs["criteria"]["allOf"]
        assert condition["query"] == rule.query
        assert condition["operator"] == rule.operator and condition["operator"] in config.LOG_OPERATORS, (
            f"operator {condition['operator']!r}: monitor.ConditionOperator would send 'gt'"
        )
        assert condition["timeAggregation"] == rule.aggregation and condition["threshold"] == rule.threshold
        assert condition.get("metricMeasureColumn") == rule.metric_measure_column
        assert condition["failingPeriods"] == {
            "numberOfEvaluationPeriods": rule.evaluation_periods,
            "minFailingPeriodsToAlert": rule.min_failing_periods,
        }
        assert [d["name"] for d in condition.get("dimensions", [])] == [d.name for d in rule.dimensions]
        assert inputs.get("overrideQueryTimeRange") == rule.override_query_time_range


def test_heartbeat_example_looks_back_further_than_its_window(plans: dict[str, Plan]) -> None:
    # With the default range (windowSize x evaluationPeriods = 15 minutes) a VM down for longer than
    # that has no Heartbeat rows in the window: the rule evaluates healthy, auto-mitigation sends
    # Resolved, and the relay closes the incident while the VM is still down.
    inputs = declared_rule(plans["dev"], LOG_ALERT, "vm-heartbeat-missing").inputs
    assert inputs["windowSize"] == "PT15M"
    assert inputs.get("overrideQueryTimeRange") == "P2D", "the heartbeat rule resolves while the VM is still down"


def conditions(resource: Declared) -> list[dict[str, Any]]:
    return resource.inputs["condition"]["allOf"]


def test_administrative_alerts_match_their_operation(stack_plan: Plan, stack: str) -> None:
    rules = rules_of(stack, config.AdministrativeAlertRule)
    assert rules, f"stacks/Pulumi.{stack}.yaml has no administrative alert"
    for rule in rules:
        resource = declared_rule(stack_plan, ACTIVITY_LOG_ALERT, rule.name)
        assert resource.inputs["location"] == "Global"
        found = conditions(resource)
        assert {"field": "category", "equals": "Administrative"} in found
        assert {"field": "operationName", "equals": rule.operation_name} in found
        assert ({"field": "status", "equals": rule.status} in found) is (rule.status is not None)


def test_service_health_alerts_watch_the_subscription(stack_plan: Plan, stack: str) -> None:
    subscription = parsed(stack).azure.subscription_id
    rules = rules_of(stack, config.ServiceHealthAlertRule)
    assert rules, f"stacks/Pulumi.{stack}.yaml has no service health alert"
    for rule in rules:
        resource = declared_rule(stack_plan, ACTIVITY_LOG_ALERT, rule.name)
        assert resource.inputs["scopes"] == [f"/subscriptions/{subscription}"]
        found = conditions(resource)
        assert found[0] == {"field": "category", "equals": "ServiceHealth"}
        incident_types = [
            leaf["equals"] for c in found for leaf in c.get("anyOf", []) if leaf["field"] == "properties.incidentType"
        ]
        assert incident_types == list(rule.incident_types)


def test_resource_health_alerts_fire_on_the_configured_health_states(stack_plan: Plan, stack: str) -> None:
    rules = rules_of(stack, config.ResourceHealthAlertRule)
    assert rules, f"stacks/Pulumi.{stack}.yaml has no resource health alert"
    for rule in rules:
        found = conditions(declared_rule(stack_plan, ACTIVITY_LOG_ALERT, rule.name))
        assert found[0] == {"field": "category", "equals": "ResourceHealth"}
        statuses = [
            leaf["equals"]
            for c in found
            for leaf in c.get("anyOf", [])
            if leaf["field"] == "properties.currentHealthStatus"
        ]
        assert statuses == list(rule.health_statuses)


def test_severity_names_map_to_azures_numbers() -> None:
    assert [config.SEVERITIES.index(name) for name in ("Sev0", "Sev2", "Sev4")] == [0, 2, 4]
    rule = parsed("dev").alerts[0]
    assert isinstance(rule, config.MetricAlertRule) and rule.severity == 2  # "Sev2" in stacks/Pulumi.dev.yaml
