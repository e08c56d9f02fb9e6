"""Alerting: the action group whose Secure Webhook calls the relay, and the alert rules wired to it.

A Secure Webhook is an ordinary webhook receiver with Entra fields
(https://learn.microsoft.com/azure/azure-monitor/alerts/action-groups#secure-webhook):
`use_aad_auth`, the application's object id, its identifier URI and the tenant, with the common
alert schema on. Azure checks that the caller owns that application when the action group is saved;
the bootstrap stack (infra/bootstrap) creates it, with the main stack's deploy identity among its owners.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import monitor

from infra.config import (
    AdministrativeAlertRule,
    AlertRule,
    Dimension,
    DynamicMetricAlertRule,
    LogSearchAlertRule,
    MetricAlertRule,
    ResourceHealthAlertRule,
    ServiceHealthAlertRule,
)

RECEIVER_NAME = "secure-export-relay"
SINGLE_RESOURCE = monitor.Odatatype.MICROSOFT_AZURE_MONITOR_SINGLE_RESOURCE_MULTIPLE_METRIC_CRITERIA
MULTIPLE_RESOURCES = monitor.Odatatype.MICROSOFT_AZURE_MONITOR_MULTIPLE_RESOURCE_MULTIPLE_METRIC_CRITERIA


@dataclass(frozen=True)
class AlertingArgs:
    resource_group_name: pulumi.Input[str]
    tags: Mapping[str, str]
    action_group_name: str
    short_name: str  # at most 12 characters, shown in SMS and e-mail
    webhook_url: pulumi.Input[str]
    tenant_id: str
    application_object_id: pulumi.Input[str]  # the application's object id, not its service principal's
    identifier_uri: pulumi.Input[str]
    rules: Sequence[AlertRule]
    # Resources that must exist before the action group is saved (none when the Entra application
    # comes from the bootstrap stack, which ran before).
    entra_dependencies: Sequence[pulumi.Resource] = ()


class Alerting(pulumi.ComponentResource):
    """Outputs: `action_group` and `rules` (alert rule name -> resource)."""

    def __init__(self, name: str, args: AlertingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("secure-export:monitoring:Alerting", name, None, opts)
        self._name = name
        self._args = args
        self._child = pulumi.ResourceOptions(parent=self)
        self.action_group = monitor.ActionGroup(
            f"{name}-action-group",
            action_group_name=args.action_group_name,
            group_short_name=args.short_name,
            resource_group_name=args.resource_group_name,
            location="Global",
            enabled=True,
            webhook_receivers=[
                monitor.WebhookReceiverArgs(
                    name=RECEIVER_NAME,
                    service_uri=args.webhook_url,
                    use_aad_auth=True,
                    object_id=args.application_object_id,
                    identifier_uri=args.identifier_uri,
                    tenant_id=args.tenant_id,
                    use_common_alert_schema=True,
                )
            ],
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.entra_dependencies)),
        )
        builders = {
            MetricAlertRule: self._metric_alert,
            DynamicMetricAlertRule: self._dynamic_metric_alert,
            LogSearchAlertRule: self._log_search_alert,
            AdministrativeAlertRule: self._activity_log_alert,
            ServiceHealthAlertRule: self._activity_log_alert,
            ResourceHealthAlertRule: self._activity_log_alert,
        }
        self.rules: dict[str, pulumi.CustomResource] = {rule.name: builders[type(rule)](rule) for rule in args.rules}
        self.register_outputs({"action_group_id": self.action_group.id})

    def _metric_criteria(
        self, rule: MetricAlertRule
    ) -> (
        monitor.MetricAlertSingleResourceMultipleMetricCriteriaArgs
        | monitor.MetricAlertMultipleResourceMultipleMetricCriteriaArgs
    ):
        criterion = monitor.MetricCriteriaArgs(
            criterion_type="StaticThresholdCriterion",
            name=rule.name,
            metric_namespace=rule.metric_namespace,
            metric_name=rule.metric_name,
            operator=rule.operator,
            threshold=rule.threshold,
            time_aggregation=rule.aggregation,
            dimensions=_metric_dimensions(rule.dimensions),
        )
        if rule.target_resource_type is None:
            return monitor.MetricAlertSingleResourceMultipleMetricCriteriaArgs(
                odata_type=SINGLE_RESOURCE, all_of=[criterion]
            )
        return monitor.MetricAlertMultipleResourceMultipleMetricCriteriaArgs(
            odata_type=MULTIPLE_RESOURCES, all_of=[criterion]
        )

    def _metric_alert(self, rule: MetricAlertRule) -> monitor.MetricAlert:
        return self._metric_alert_resource(rule, self._metric_criteria(rule))

    def _dynamic_metric_alert(self, rule: DynamicMetricAlertRule) -> monitor.MetricAlert:
        # Dynamic thresholds exist only in the multiple-resource criteria shape, even for one resource.
        criteria = monitor.MetricAlertMultipleResourceMultipleMetricCriteriaArgs(
            odata_type=MULTIPLE_RESOURCES,
            all_of=[
                monitor.DynamicMetricCriteriaArgs(
                    criterion_type="DynamicThresholdCriterion",
                    name=rule.name,
                    metric_namespace=rule.metric_namespace,
                    metric_name=rule.metric_name,
                    operator=rule.operator,
                    alert_sensitivity=rule.sensitivity,
                    time_aggregation=rule.aggregation,
                    failing_periods=monitor.DynamicThresholdFailingPeriodsArgs(
                        number_of_evaluation_periods=rule.evaluation_periods,
                        min_failing_periods_to_alert=rule.min_failing_periods,
                    ),
                    dimensions=_metric_dimensions(rule.dimensions),
                )
            ],
        )
        return self._metric_alert_resource(rule, criteria)

    def _metric_alert_resource(
        self,
        rule: MetricAlertRule | DynamicMetricAlertRule,
        criteria: pulumi.Input[object],
    ) -> monitor.MetricAlert:
        args = self._args
        return monitor.MetricAlert(
            f"{self._name}-rule-{rule.name}",
            rule_name=rule.name,
            resource_group_name=args.resource_group_name,
            location="global",
            description=rule.description,
            enabled=rule.enabled,
            severity=rule.severity,
            scopes=list(rule.scopes),
            window_size=rule.window_size,
            evaluation_frequency=rule.evaluation_frequency,
            auto_mitigate=True,  # resolved notifications reach the relay, which resolves the incident
            target_resource_type=rule.target_resource_type,
            target_resource_region=rule.target_resource_region,
            criteria=criteria,
            actions=[monitor.MetricAlertActionArgs(action_group_id=self.action_group.id)],
            tags=args.tags,
            opts=self._child,
        )

    def _log_search_alert(self, rule: LogSearchAlertRule) -> monitor.ScheduledQueryRule:
        args = self._args
        return monitor.ScheduledQueryRule(
            f"{self._name}-rule-{rule.name}",
            rule_name=rule.name,
            display_name=rule.name,
            resource_group_name=args.resource_group_name,
            location=rule.location,
            kind=monitor.Kind.LOG_ALERT,
            description=rule.description,
            enabled=rule.enabled,
            severity=rule.severity,
            scopes=list(rule.scopes),
            window_size=rule.window_size,
            evaluation_frequency=rule.evaluation_frequency,
            override_query_time_range=rule.override_query_time_range,
            # Without auto-mitigation a log alert never resolves, so its incident would stay open.
            auto_mitigate=True,
            criteria=monitor.ScheduledQueryRuleCriteriaArgs(
                all_of=[
                    monitor.ConditionArgs(
                        query=rule.query,
                        time_aggregation=rule.aggregation,
                        metric_measure_column=rule.metric_measure_column,
                        # A plain string: the SDK types this as monitor.ConditionOperator, whose values are
                        # filter operators ("gt", "eq"), not the "GreaterThan" a log search condition takes.
                        operator=rule.operator,
                        threshold=rule.threshold,
                        dimensions=[
                            monitor.DimensionArgs(name=d.name, operator=d.operator, values=list(d.values))
                            for d in rule.dimensions
                        ]
                        or None,
                        failing_periods=monitor.ConditionFailingPeriodsArgs(
                            number_of_evaluation_periods=rule.evaluation_periods,
                            min_failing_periods_to_alert=rule.min_failing_periods,
                        ),
                    )
                ]
            ),
            actions=monitor.ActionsArgs(action_groups=[self.action_group.id]),
            tags=args.tags,
            opts=self._child,
        )

    def _activity_log_alert(
        self, rule: AdministrativeAlertRule | ServiceHealthAlertRule | ResourceHealthAlertRule
    ) -> monitor.ActivityLogAlert:
        args = self._args
        return monitor.ActivityLogAlert(
            f"{self._name}-rule-{rule.name}",
            activity_log_alert_name=rule.name,
            resource_group_name=args.resource_group_name,
            location="Global",
            description=rule.description,
            enabled=rule.enabled,
            scopes=list(rule.scopes),
            condition=monitor.AlertRuleAllOfConditionArgs(all_of=activity_log_conditions(rule)),
            # monitor.ActionGroupArgs is the activity-log action reference, not the resource's args.
            actions=monitor.ActionListArgs(
                action_groups=[monitor.ActionGroupArgs(action_group_id=self.action_group.id)]
            ),
            tags=args.tags,
            opts=self._child,
        )


def _metric_dimensions(dimensions: Sequence[Dimension]) -> list[monitor.MetricDimensionArgs] | None:
    return [
        monitor.MetricDimensionArgs(name=d.name, operator=d.operator, values=list(d.values)) for d in dimensions
    ] or None


def _equals(field: str, value: str) -> monitor.AlertRuleAnyOfOrLeafConditionArgs:
    return monitor.AlertRuleAnyOfOrLeafConditionArgs(field=field, equals=value)


def _any_of(field: str, values: Sequence[str]) -> list[monitor.AlertRuleAnyOfOrLeafConditionArgs]:
    if not values:
        return []
    return [
        monitor.AlertRuleAnyOfOrLeafConditionArgs(
            any_of=[monitor.AlertRuleLeafConditionArgs(field=field, equals=value) for value in values]
        )
    ]


def _contains_any(field: str, values: Sequence[str]) -> list[monitor.AlertRuleAnyOfOrLeafConditionArgs]:
    return [monitor.AlertRuleAnyOfOrLeafConditionArgs(field=field, contains_any=list(values))] if values else []


def activity_log_conditions(
    rule: AdministrativeAlertRule | ServiceHealthAlertRule | ResourceHealthAlertRule,
) -> list[monitor.AlertRuleAnyOfOrLeafConditionArgs]:
    """The all-of condition list of an activity log alert, by category."""
    if isinstance(rule, AdministrativeAlertRule):
        conditions = [_equals("category", "Administrative"), _equals("operationName", rule.operation_name)]
        if rule.status:
            conditions.append(_equals("status", rule.status))
        return conditions
    if isinstance(rule, ServiceHealthAlertRule):
        return [
            _equals("category", "ServiceHealth"),
            *_any_of("properties.incidentType", rule.incident_types),
            *_contains_any("properties.impactedServices[*].ImpactedRegions[*].RegionName", rule.regions),
            *_contains_any("properties.impactedServices[*].ServiceName", rule.services),
        ]
    return [
        _equals("category", "ResourceHealth"),
        *_any_of("properties.currentHealthStatus", rule.health_statuses),
        *_any_of("resourceType", rule.resource_types),
    ]
