"""Self-monitoring: the relay watched by something that does not depend on it.

A fallback action group with e-mail receivers (never the relay's own Secure Webhook: a relay that is down
cannot report itself), metric alerts on the Container App, log search alerts on the relay's own log lines
in the Log Analytics workspace, and diagnostic settings that bring Key Vault's and Storage's logs there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import authorization, monitor

from infra.config.monitoring import MonitoringSettings

CONTAINER_APPS_NAMESPACE = "Microsoft.App/containerApps"
# Container Apps' platform metrics
# (learn.microsoft.com/azure/container-apps/metrics#available-metrics).
RESTARTS_METRIC = "RestartCount"
REPLICAS_METRIC = "Replicas"
REQUESTS_METRIC = "Requests"
STATUS_CATEGORY_DIMENSION = "statusCodeCategory"

# What the relay writes when it gives up on an event, refuses a token, or finds a target unusable at
# start-up (relay/delivery/worker.py, relay/intake/handler.py, the start-up target checks). `has` matches
# whole terms in the plain and the JSON log line alike.
DEAD_LETTER_LOG = "dead letter"
REFUSED_TOKEN_LOG = "refused token from"
TARGET_CHECK_LOG = "target check failed"

# Azure built-in role (learn.microsoft.com/azure/role-based-access-control/built-in-roles#storage-table-data-reader).
STORAGE_TABLE_DATA_READER = "76199698-9eea-4c19-bc75-cec21354c6b6"

# The storage services whose logs reach the workspace: diagnostic settings hang on each service, not on
# the account (learn.microsoft.com/azure/storage/queues/monitor-queue-storage#collection-and-routing).
STORAGE_SERVICES = ("blobServices", "queueServices", "tableServices")


@dataclass(frozen=True)
class SelfMonitoringArgs:
    settings: MonitoringSettings
    resource_group_name: pulumi.Input[str]
    tags: Mapping[str, str]
    subscription_id: str
    location: str  # the workspace's region: log search alerts are regional
    action_group_name: str
    workspace_id: pulumi.Input[str]
    container_app_id: pulumi.Input[str]
    container_app_name: str
    min_replicas: int
    key_vault_id: pulumi.Input[str]
    storage_account_id: pulumi.Input[str]
    state_table_id: pulumi.Input[str]

    def __post_init__(self) -> None:
        if not self.settings.emails:
            raise ValueError("SelfMonitoringArgs.settings.emails is empty: the fallback group would tell nobody")
        if self.min_replicas < 1:
            raise ValueError(f"SelfMonitoringArgs.min_replicas is {self.min_replicas}; the relay runs at least 1")
        if not self.container_app_name:
            raise ValueError("SelfMonitoringArgs.container_app_name is empty")


class SelfMonitoring(pulumi.ComponentResource):
    """Outputs: `action_group` (the fallback group), `rules` (rule name -> alert resource),
    `diagnostics` (resource label -> diagnostic setting), `smoke_reader` (a role assignment or None)."""

    def __init__(self, name: str, args: SelfMonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("secure-export:monitoring:SelfMonitoring", name, None, opts)
        self._name = name
        self._args = args
        self._child = pulumi.ResourceOptions(parent=self)
        settings = args.settings
        self.action_group = monitor.ActionGroup(
            f"{name}-action-group",
            action_group_name=args.action_group_name,
            group_short_name=settings.short_name,
            resource_group_name=args.resource_group_name,
            location="Global",
            enabled=True,
            email_receivers=[
                monitor.MicrosoftCommonEmailReceiverArgs(
                    name=f"email-{index}", email_address=address, use_common_alert_schema=True
                )
                for index, address in enumerate(settings.emails, start=1)
            ],
            tags=args.tags,
            opts=self._child,
        )
        self.rules: dict[str, pulumi.CustomResource] = {}
        self._metric_rules()
        self._log_rules()
        self.diagnostics: dict[str, monitor.DiagnosticSetting] = {}
        self._diagnostic_settings()
        self.smoke_reader = self._smoke_reader()
        self.register_outputs({"action_group_id": self.action_group.id})

    # -- metric alerts on the Container App ---------------------------------------------------------

    def _metric_rules(self) -> None:
        args = self._args
        self._metric(
            "relay-restarts",
            "The relay's containers restarted (crash loop, failed probes, out of memory)",
            severity=1,
            metric=RESTARTS_METRIC,
            aggregation="Total",
            operator="GreaterThan",
            threshold=0,
        )
        self._metric(
            "relay-replicas-below-minimum",
            f"Fewer ready relay replicas than minReplicas ({args.min_replicas}): alerts may be refused",
            severity=0,
            metric=REPLICAS_METRIC,
            aggregation="Maximum",
            operator="LessThan",
            threshold=args.min_replicas,
        )
        self._metric(
            "relay-server-errors",
            "The relay answered 5xx: Azure Monitor retries, then stops calling for 15 minutes",
            severity=1,
            metric=REQUESTS_METRIC,
            aggregation="Total",
            operator="GreaterThan",
            threshold=args.settings.server_errors_threshold,
            dimensions=[
                monitor.MetricDimensionArgs(name=STATUS_CATEGORY_DIMENSION, operator="Include", values=["5xx"])
            ],
        )

    def _metric(self, rule: str, description: str, *, severity: int, metric: str, aggregation: str,
                operator: str, threshold: float, dimensions: list[monitor.MetricDimensionArgs] | None = None) -> None:
        args = self._args
        self.rules[rule] = monitor.MetricAlert(
            f"{self._name}-{rule}",
            rule_name=f"{args.container_app_name}-{rule}",
            resource_group_name=args.resource_group_name,
            location="global",
            description=description,
            enabled=True,
            severity=severity,
            scopes=[args.container_app_id],
            window_size="PT5M",
            evaluation_frequency="PT1M",
            auto_mitigate=True,
            criteria=monitor.MetricAlertSingleResourceMultipleMetricCriteriaArgs(
                odata_type=monitor.Odatatype.MICROSOFT_AZURE_MONITOR_SINGLE_RESOURCE_MULTIPLE_METRIC_CRITERIA,
                all_of=[
                    monitor.MetricCriteriaArgs(
                        criterion_type="StaticThresholdCriterion",
                        name=rule,
                        metric_namespace=CONTAINER_APPS_NAMESPACE,
                        metric_name=metric,
                        operator=operator,
                        threshold=threshold,
                        time_aggregation=aggregation,
                        dimensions=dimensions,
                    )
                ],
            ),
            actions=[monitor.MetricAlertActionArgs(action_group_id=self.action_group.id)],
            tags=args.tags,
            opts=self._child,
        )

    # -- log search alerts on the relay's own log lines ---------------------------------------------

    def _log_rules(self) -> None:
        settings = self._args.settings
        self._log("relay-dead-letters", "The relay moved an alert to dead letters: it reached no ITSM tool",
                  severity=1, needle=DEAD_LETTER_LOG, threshold=0)
        self._log("relay-refused-tokens",
                  f"More than {settings.refused_tokens_threshold} refused tokens in 5 minutes: probing, or a broken"
                  " Entra set-up (audience, role assignment, signing keys)",
                  severity=2, needle=REFUSED_TOKEN_LOG, threshold=settings.refused_tokens_threshold)
        self._log("relay-target-checks", "A target failed its start-up check (credentials, URL, permissions)",
                  severity=1, needle=TARGET_CHECK_LOG, threshold=0)

    def _log(self, rule: str, description: str, *, severity: int, needle: str, threshold: int) -> None:
        args = self._args
        self.rules[rule] = monitor.ScheduledQueryRule(
            f"{self._name}-{rule}",
            rule_name=f"{args.container_app_name}-{rule}",
            display_name=f"{args.container_app_name}-{rule}",
            resource_group_name=args.resource_group_name,
            location=args.location,
            kind=monitor.Kind.LOG_ALERT,
            description=description,
            enabled=True,
            severity=severity,
            scopes=[args.workspace_id],
            window_size="PT5M",
            evaluation_frequency="PT5M",
            auto_mitigate=True,
            criteria=monitor.ScheduledQueryRuleCriteriaArgs(
                all_of=[
                    monitor.ConditionArgs(
                        query=log_query(args.container_app_name, needle),
                        time_aggregation="Count",
                        operator="GreaterThan",  # a plain string, as in infra/alerting.py
                        threshold=threshold,
                        failing_periods=monitor.ConditionFailingPeriodsArgs(
                            number_of_evaluation_periods=1, min_failing_periods_to_alert=1
                        ),
                    )
                ]
            ),
            actions=monitor.ActionsArgs(action_groups=[self.action_group.id]),
            tags=args.tags,
            opts=self._child,
        )

    # -- diagnostic settings ------------------------------------------------------------------------

    def _diagnostic_settings(self) -> None:
        args = self._args
        self.diagnostics["key-vault"] = self._diagnostic("key-vault", args.key_vault_id)
        for service in STORAGE_SERVICES:
            uri = pulumi.Output.concat(args.storage_account_id, f"/{service}/default")
            self.diagnostics[service] = self._diagnostic(service, uri)

    def _diagnostic(self, label: str, resource_uri: pulumi.Input[str]) -> monitor.DiagnosticSetting:
        return monitor.DiagnosticSetting(
            f"{self._name}-{label}-logs",
            name="to-log-analytics",
            resource_uri=resource_uri,
            workspace_id=self._args.workspace_id,
            log_analytics_destination_type="Dedicated",
            # Key Vault: AuditEvent (who read which secret); Storage: StorageRead/Write/Delete.
            logs=[monitor.DiagnosticsLogSettingsArgs(category_group="allLogs", enabled=True)],
            opts=self._child,
        )

    # -- the smoke test's read access ---------------------------------------------------------------

    def _smoke_reader(self) -> authorization.RoleAssignment | None:
        principal = self._args.settings.smoke_reader_principal_id
        if principal is None:
            return None
        return authorization.RoleAssignment(
            f"{self._name}-smoke-reader",
            principal_id=principal,
            role_definition_id=(
                f"/subscriptions/{self._args.subscription_id}/providers/Microsoft.Authorization/roleDefinitions/"
                f"{STORAGE_TABLE_DATA_READER}"
            ),
            scope=self._args.state_table_id,  # the relay's state table, nothing else of the account
            opts=self._child,
        )


def log_query(container_app_name: str, needle: str) -> str:
    """KQL over the relay's console lines in the resource-specific table the environment writes."""
    return (
        "ContainerAppConsoleLogs\n"
        f"| where ContainerAppName == '{container_app_name}'\n"
        f"| where Log has '{needle}'"
    )
