"""The plan-time ceiling for bench/infra.py: a bare Pulumi program, no config model and no components,
declaring one resource group, one action group and `bench:rules` metric alerts on it.

Each alert has the inputs infra/alerting.py declares for the dev stack's `vm-cpu-high` rule (static
threshold, one resource); bench/infra.py checks that the two programs declare the same inputs, so the
ratio compares the same resources. Run under infra.plan's mocks, as `make plan` runs infra/__main__.py.
"""

import pulumi
from pulumi_azure_native import monitor, resources

count = pulumi.Config("bench").require_int("rules")
tags = {"workload": "secure-export", "environment": "dev", "managed-by": "pulumi"}

group = resources.ResourceGroup("resource-group", resource_group_name="rg-secexp-dev", location="westeurope", tags=tags)
action_group = monitor.ActionGroup(
    "alerting-action-group",  # the name infra/alerting.py gives it, so the alerts' inputs match
    action_group_name="ag-secexp-dev-secure-webhook",
    group_short_name="SecExp-dev",
    resource_group_name=group.name,
    location="Global",
    enabled=True,
    webhook_receivers=[
        monitor.WebhookReceiverArgs(
            name="secure-export-relay",
            service_uri="https://relay.example/alerts",
            use_aad_auth=True,
            object_id="00000000-0000-0000-0000-000000000001",
            identifier_uri="api://00000000-0000-0000-0000-000000000002",
            tenant_id="00000000-0000-0000-0000-000000000000",
            use_common_alert_schema=True,
        )
    ],
    tags=tags,
)
for i in range(count):
    name = f"vm-cpu-high-{i:04d}"
    monitor.MetricAlert(
        f"bare-rule-{name}",
        rule_name=name,
        resource_group_name=group.name,
        location="global",
        description="CPU above 90 % for 15 minutes",
        enabled=True,
        severity=2,
        scopes=[
            "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-app-dev/providers/"
            "Microsoft.Compute/virtualMachines/vm-app-dev-01"
        ],
        window_size="PT15M",
        evaluation_frequency="PT5M",
        auto_mitigate=True,
        criteria=monitor.MetricAlertSingleResourceMultipleMetricCriteriaArgs(
            odata_type=monitor.Odatatype.MICROSOFT_AZURE_MONITOR_SINGLE_RESOURCE_MULTIPLE_METRIC_CRITERIA,
            all_of=[
                monitor.MetricCriteriaArgs(
                    criterion_type="StaticThresholdCriterion",
                    name=name,
                    metric_namespace="Microsoft.Compute/virtualMachines",
                    metric_name="Percentage CPU",
                    operator="GreaterThan",
                    threshold=90,
                    time_aggregation="Average",
                )
            ],
        ),
        actions=[monitor.MetricAlertActionArgs(action_group_id=action_group.id)],
        tags=tags,
    )
